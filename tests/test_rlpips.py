"""R-LPIPS: released checkpoints are whole ``lpips.LPIPS`` (AlexNet) state dicts; load them strictly.

No released checkpoint is reachable offline, so the tests build files in the exact format: the
state dict of an lpips-package LPIPS module (``net.slice{s}.{i}.*``, ``lin{k}.model.1.weight`` and
its ``lins.{k}`` duplicate, ``scaling_layer.*``), saved with torch.save as the R-LPIPS trainer does,
and the R-LPIPS repository's variant (its ScalingLayer holds plain attributes: no ``scaling_layer`` keys).
"""
from __future__ import annotations

import copy
import socket
import warnings

import pytest
import torch

import robustsim
from robustsim import hub
from robustsim.errors import InputError, OfflineError, WeightsError
from robustsim.metrics.lpips import _RLPIPS_VARIANTS, LPIPS, rlpips_weight_file

from conftest import real_photo


def _lpips():
    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*")
    import lpips

    return lpips


_BUILT: dict = {}


def _trained_like(net: str = "alex", seed: int = 0):
    """An lpips.LPIPS with random trunk and random non-negative lin heads (as adversarial training leaves them).

    Cached and deep-copied: building one constructs a whole torchvision classifier (seconds).
    """
    if (net, seed) not in _BUILT:
        lpips = _lpips()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False).eval()
            for lin in m.lins:
                lin.model[1].weight.data = lin.model[1].weight.data.abs()
        _BUILT[(net, seed)] = m
    return copy.deepcopy(_BUILT[(net, seed)])


def _triplet():
    x = torch.cat([real_photo("astronaut", 64), real_photo("coffee", 64), real_photo("chelsea", 64)])
    g = torch.Generator().manual_seed(0)
    y = (x + 0.08 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


def test_checkpoint_in_the_released_format_loads_and_matches_the_reference(tmp_path):
    ref = _trained_like()
    path = tmp_path / "latest_net_linf_x0.pth"
    torch.save(ref.state_dict(), path)
    assert any(k.startswith("lins.") for k in ref.state_dict()) and "net.slice1.0.weight" in ref.state_dict()
    m = robustsim.load("rlpips-linf-x0", weights=path)
    assert isinstance(m, LPIPS) and m.name == "rlpips-linf-x0" and not m.certified
    x, y = _triplet()
    x.requires_grad_(True)
    d = m(x, y)
    r = ref(x, y, normalize=True).view(-1)
    assert r.min() > 1e-3
    assert (d - r).abs().max().item() <= 1e-6
    g, = torch.autograd.grad(d.sum(), x)
    rg, = torch.autograd.grad(r.sum(), x)
    assert (g - rg).abs().max().item() <= 1e-5
    # the trunk came from the file, not from torchvision weights (none exist offline)
    assert torch.equal(m.net.features[10].weight, getattr(ref.net.slice5, "10").weight)


def test_repository_variant_without_scaling_buffers_and_dataparallel_prefix(tmp_path):
    ref = _trained_like(seed=1)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith(("scaling_layer.", "lins."))}
    torch.save(state, tmp_path / "repo.pth")
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, tmp_path / "dp.pth")
    x, y = _triplet()
    want = ref(x, y, normalize=True).view(-1)
    for f in ("repo.pth", "dp.pth"):
        m = robustsim.load("rlpips-linf-x1", weights=tmp_path / f)
        assert (m(x, y) - want).abs().max().item() <= 1e-6


def test_every_variant_is_registered_with_its_github_url():
    names = robustsim.list_models()
    for variant, (fname, _) in _RLPIPS_VARIANTS.items():
        assert f"rlpips-{variant}" in names
        wf = rlpips_weight_file(variant)
        assert wf.sha256 is None  # unknown until a copy is verified: documented, verify-on-first-download
        assert wf.urls[0] == f"https://github.com/SaraGhazanfari/R-LPIPS/raw/main/checkpoints/{fname}"
    assert {"linf-x0", "linf-x1", "linf-ref", "linf-x0-x1", "linf-x0-tune", "ssa-x0"} == set(_RLPIPS_VARIANTS)


def test_offline_without_the_checkpoint_fails_clearly_and_opens_no_socket(monkeypatch):
    def no_socket(*a, **k):
        raise AssertionError("a socket was opened in offline mode")

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(OfflineError, match="latest_net_linf_x0.pth"):
        robustsim.load("rlpips-linf-x0")
    assert not hub.weights_present("rlpips-linf-x0")


def test_checkpoint_of_the_wrong_model_is_refused_naming_keys(tmp_path):
    # an LPIPS-VGG state dict: its slices hold other layer indices and shapes
    torch.save(_trained_like("vgg").state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(WeightsError) as e:
        robustsim.load("rlpips-linf-x0", weights=tmp_path / "vgg.pth")
    msg = str(e.value)
    assert "does not fit LPIPS-alex" in msg
    assert "unexpected keys: net.slice1.2.bias, net.slice1.2.weight" in msg  # named as in the file
    assert "missing keys: net.features.3.weight, net.features.3.bias" in msg
    assert "wrong shapes: net.slice1.0.weight (64, 3, 3, 3) != (64, 3, 11, 11)" in msg
    # lin heads only (the lpips package's file): the trunk is missing
    lin_only = hub.locate(hub.model_spec("lpips-alex").weights["lin"])
    with pytest.raises(WeightsError, match=r"missing keys: net\.features\.0\.weight, net\.features\.0\.bias"):
        robustsim.load("rlpips-linf-x0", weights=lin_only)
    # a torchvision classifier is not an R-LPIPS checkpoint either
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11), "classifier.1.weight": torch.zeros(2, 2)}, tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys: classifier\.1\.weight, features\.0\.weight"):
        robustsim.load("rlpips-linf-x0", weights=tmp_path / "tv.pth")


def test_inconsistent_duplicates_and_constants_are_refused(tmp_path):
    state = _trained_like().state_dict()
    bad = dict(state)
    bad["lins.2.model.1.weight"] = bad["lins.2.model.1.weight"] + 1
    torch.save(bad, tmp_path / "dup.pth")
    with pytest.raises(WeightsError, match="lin2.model.1.weight and lins.2.model.1.weight differ"):
        robustsim.load("rlpips-linf-x0", weights=tmp_path / "dup.pth")
    bad = dict(state)
    bad["scaling_layer.scale"] = torch.ones(1, 3, 1, 1)
    torch.save(bad, tmp_path / "scale.pth")
    with pytest.raises(WeightsError, match="scaling_layer.scale does not hold the standard LPIPS constants"):
        robustsim.load("rlpips-linf-x0", weights=tmp_path / "scale.pth")


def test_pickled_objects_are_refused_and_trunk_weights_do_not_apply(tmp_path):
    torch.save(_trained_like(), tmp_path / "module.pth")  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="weights_only"):
        robustsim.load("rlpips-linf-x0", weights=tmp_path / "module.pth")
    with pytest.raises(InputError, match="trunk_weights"):
        robustsim.load("rlpips-linf-x0", trunk_weights=tmp_path / "module.pth")


def test_tuned_trunk_variant_keeps_its_own_trunk(tmp_path):
    ref = _trained_like(seed=3)
    with torch.no_grad():
        ref.net.slice1[0].weight.mul_(1.5)  # "tune": trunk weights differ from any torchvision checkpoint
    torch.save(ref.state_dict(), tmp_path / "tune.pth")
    m = robustsim.load("rlpips-linf-x0-tune", weights=tmp_path / "tune.pth")
    assert torch.equal(m.net.features[0].weight, ref.net.slice1[0].weight)
    saved = robustsim.save(m, tmp_path / "tune.safetensors")
    x, y = _triplet()
    assert torch.equal(robustsim.load(saved)(x, y), m(x, y))
