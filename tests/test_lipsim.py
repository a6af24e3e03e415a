"""The LipSim metric: configurations, the metric contract, save/load, hub entries, whole-network Lipschitz."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustsim
from robustsim.errors import InputError, WeightsError
from robustsim.metrics import lipsim as lipsim_mod
from robustsim.metrics.lipsim import CPU_DEFAULT, OFFICIAL, LipSim, LipSimConfig

TINY = dict(input_size=32, stem="unshuffle2", channels=16, conv_depth=2, conv_inner=6, pool=(2,), linear_depth=2,
            linear_inner=24, embed_dim=40)


def test_official_configs_match_the_paper():
    small = OFFICIAL["small"]
    assert (small.conv_depth, small.channels, small.linear_depth, small.linear_inner) == (20, 45, 7, 1024)
    assert small.features == 45 * 14 * 14 and small.grid == 14 and small.embed_dim == 1792
    assert 62e6 < small.num_parameters() < 64e6  # "about 63 M parameters"
    assert [(c.conv_depth, c.channels, c.linear_depth, c.linear_inner) for c in
            (OFFICIAL["medium"], OFFICIAL["large"], OFFICIAL["xlarge"])] == [(30, 60, 10, 2048), (50, 90, 10, 2048),
                                                                            (70, 120, 15, 2048)]
    assert all(c.input_size == 224 and c.stem == "pad" and c.pool == (4, 4) and c.conv_inner == 5 for c in OFFICIAL.values())


def test_cpu_default_is_small_and_fast_shaped():
    assert CPU_DEFAULT.input_size >= 128
    assert CPU_DEFAULT.num_parameters() * 4 <= 15e6
    m = LipSim(config=CPU_DEFAULT).eval()
    assert sum(p.numel() for p in m.parameters()) == CPU_DEFAULT.num_parameters()
    assert m.encoder.stem(torch.rand(1, 3, 128, 128)).shape == (1, 48, 32, 32)
    with torch.no_grad():
        assert m.embed(torch.rand(2, 3, 128, 128)).shape == (2, CPU_DEFAULT.embed_dim)


@pytest.mark.parametrize("bad,match", [
    (dict(stem="shuffle2"), "stem"),
    (dict(input_size=30), "divisible"),
    (dict(embed_dim=10_000), "exceeds"),
    (dict(channels=8), "channels"),
    (dict(kernel_size=4), "odd"),
    (dict(blur=2), "blur must be an odd"),
    (dict(blur=3, pool=()), "no pool"),
    (dict(input_blur=4), "input_blur must be an odd"),
    (dict(input_blur=0), "input_blur must be an odd"),
])
def test_bad_configs(bad, match):
    with pytest.raises(InputError, match=match):
        LipSim(**{**TINY, **bad})


def test_metric_contract(photo):
    m = LipSim(**TINY).eval()
    assert m.certified and m.lipschitz == 1.0 and m.input_size == (32, 32)
    x, y = photo("astronaut", 32), photo("coffee", 32)
    d = m(x, y)
    g = m.features(torch.cat([x, y]))
    cos = F.cosine_similarity(g[:1], g[1:])
    assert torch.allclose(d, 1 - cos, atol=1e-6)
    assert float(m(x, x).detach()) == 0.0
    assert torch.allclose(m.embed(x).norm(dim=1), torch.ones(1))
    xr = x.clone().requires_grad_()
    m(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    # another size is resized (bicubic) and the resize norm is exposed for certificates
    assert m(photo("astronaut", 48), photo("coffee", 48)).shape == (1,)
    assert m.resize.norm((48, 48)) > 0
    with pytest.raises(InputError):
        m(x * 2, y)


def test_hub_names_need_weights():
    names = robustsim.list_models()
    assert {"lipsim-small", "lipsim-medium", "lipsim-large", "lipsim-xlarge"} <= set(names)
    with pytest.raises(WeightsError, match="Google Drive"):
        robustsim.load("lipsim-small")


def test_hub_loads_official_checkpoint_and_checks_architecture(shared_dir, monkeypatch, tmp_path):
    ckpt = shared_dir / "fixtures/lipsim_official/lipsim_tiny_a.ckpt-1234.pth"
    io = torch.load(shared_dir / "fixtures/lipsim_official/lipsim_tiny_a.io.pt", weights_only=True)
    with pytest.raises(WeightsError, match="not a LipSim-small checkpoint"):
        robustsim.load("lipsim-small", weights=str(ckpt), embed_dim=32)
    # with "small" pointing at the tiny architecture, the same path loads the official file exactly
    monkeypatch.setitem(OFFICIAL, "small", LipSimConfig(channels=6, conv_depth=2, linear_depth=2, linear_inner=64, embed_dim=32))
    m = robustsim.load("lipsim-small", weights=str(ckpt), embed_dim=32)
    with torch.no_grad():
        assert (m.features(io["images_uint8"].float() / 255) - io["embedding"]).abs().max() <= 1e-5
    # and a converted file loads through the same name
    path = robustsim.save(m, tmp_path / "small.safetensors")
    m2 = robustsim.load("lipsim-small", weights=str(path))
    assert m2.cfg == m.cfg


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    stem=st.sampled_from(["pad", "unshuffle2", "unshuffle4"]),
    conv_depth=st.integers(0, 3),
    conv_inner=st.integers(1, 8),
    linear_depth=st.integers(0, 3),
    wscale=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
    adversarial=st.booleans(),
    blur=st.sampled_from([1, 3]),
    input_blur=st.sampled_from([1, 3, 5]),
)
def test_random_networks_are_1_lipschitz(stem, conv_depth, conv_inner, linear_depth, wscale, seed, adversarial, blur,
                                         input_blur):
    torch.manual_seed(seed)
    cfg = LipSimConfig(input_size=16, stem=stem, channels=48, conv_depth=conv_depth, conv_inner=conv_inner,
                       pool=(2,) if stem == "unshuffle4" else (2, 2), blur=blur, input_blur=input_blur,
                       linear_depth=linear_depth,
                       linear_inner=12, embed_dim=30)
    net = lipsim_mod.LipSimNetwork(cfg).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(wscale)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    if adversarial:  # ascend the ratio from a small random offset
        d = (torch.randn_like(x) * 0.01).requires_grad_()
        opt = torch.optim.Adam([d], lr=3e-3)
        for _ in range(15):
            r = (net(x + d) - net(x)).norm() / d.norm()
            opt.zero_grad()
            (-r).backward()
            opt.step()
        y = x + d.detach()
    else:
        y = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert (net(x) - net(y)).norm() <= (x - y).norm() * (1 + 1e-5)


def test_lipsim_effnet_is_the_previous_default_pinned_offline():
    """``lipsim-effnet`` keeps the effnet-distilled model (the default until v2, issue 17) loadable by name:
    its own packaged file, sha256-pinned, with the CPU architecture it was distilled in; the default is another
    network (other weights, and since v6 another pooling and dense part)."""
    import robustsim
    from robustsim import hub
    from robustsim.metrics import lipsim

    effnet, default = robustsim.load("lipsim-effnet"), robustsim.load("lipsim-default")
    assert effnet.certified and default.certified and effnet.cfg == lipsim.CPU_DEFAULT
    assert hub.model_spec("lipsim-effnet").weights["main"].sha256 == lipsim.EFFNET_SHA256
    assert lipsim.EFFNET_SHA256 != lipsim.DEFAULT_SHA256
    a, b = effnet.state_dict(), default.state_dict()
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    assert shared and not all(torch.equal(a[k], b[k]) for k in shared)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = (x + 0.05).clamp(0, 1)
    assert not torch.allclose(effnet(x, y), default(x, y))


def test_input_blur_filters_the_image_before_the_stem_and_removes_the_nyquist_pattern():
    """``input_blur`` puts the binomial low-pass first (before space-to-depth), so a ±δ checkerboard, the
    pattern at the Nyquist frequency, leaves the interior of the stem's output untouched (only the zero-padded
    border sees it), while a smooth change of the same norm passes almost whole."""
    cfg = dict(TINY, stem="unshuffle4", channels=48, pool=(2,), input_size=32)
    net = LipSim(**cfg, input_blur=3).encoder.eval()
    assert isinstance(net.stem[0], lipsim_mod.BinomialBlur2d) and net.stem[0].size == 3
    assert isinstance(net.stem[1], lipsim_mod.InvertibleDownsample)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64) * 0.5 + 0.25
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = (((i + j) % 2) * 2 - 1).to(torch.float64).expand(1, 3, 32, 32) * 0.01
    smooth = torch.ones_like(checker) * checker.norm() / torch.ones_like(checker).norm()
    with torch.no_grad():
        moved = (net.stem.double()(x + checker) - net.stem(x)).view(1, 3, 4, 4, 8, 8)
        kept_smooth = (net.stem(x + smooth) - net.stem(x)).norm() / smooth.norm()
    assert float(moved[..., 1:-1, 1:-1].abs().max()) < 1e-15  # the 6×6 inner cells (4×4-pixel blocks)
    assert float(moved.norm() / checker.norm()) < 0.3 and float(kept_smooth) > 0.85
    assert LipSimConfig(**cfg).input_blur == 1  # files without the field load with no input blur
