"""The torchmetrics adapter against torchmetrics' own LPIPS class, on the same weights.

torchmetrics' LearnedPerceptualImagePatchSimilarity downloads its ImageNet trunk from torchvision's
URLs; offline we build it with the trunk left random (``pnet_rand=True``: its lin heads still come
from the file torchmetrics ships) and load that exact state dict into robustsim's LPIPS. Any weights
do, as long as both sides hold the same ones.
"""
from __future__ import annotations

import functools

import pytest
import torch

import robustsim  # noqa: F401  (installs the torchvision import hook torchmetrics' LPIPS relies on here)
from robustsim.errors import InputError
from robustsim.metrics.lpips import load_into, from_reference_state

tm_lpip = pytest.importorskip("torchmetrics.image.lpip")
from robustsim.adapters.torchmetrics import LearnedPerceptualImagePatchSimilarity, PerceptualSimilarity  # noqa: E402

from conftest import real_photo  # noqa: E402


@pytest.fixture(scope="module")
def pair_of_metrics():
    """(torchmetrics' LPIPS-alex with a seeded random trunk, robustsim's LPIPS-alex with the same state)."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    patched = functools.partial(_NoTrainLpips, pnet_rand=True)
    original = tm_lpip._NoTrainLpips
    tm_lpip._NoTrainLpips = patched
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            theirs = tm_lpip.LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none")
    finally:
        tm_lpip._NoTrainLpips = original
    ours = robustsim.load("lpips-alex", pretrained_trunk=False)
    load_into(ours, from_reference_state(ours, theirs.net.state_dict(), "torchmetrics", need_trunk=True, need_lin=True))
    return theirs, ours


def _batches():
    """Three batches of real photos and blurred/noisy copies, in [-1, 1] (torchmetrics' default range)."""
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry"]
    x = torch.cat([real_photo(n, 48) for n in names])
    g = torch.Generator().manual_seed(3)
    y = (torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    x, y = x * 2 - 1, y * 2 - 1
    return [(x[:2], y[:2]), (x[2:5], y[2:5]), (x[5:], y[5:])]


def _run(metric, batches, normalize=False):
    metric.reset()
    for a, b in batches:
        metric.update((a + 1) / 2 if normalize else a, (b + 1) / 2 if normalize else b)
    return metric.compute()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize", [False, True])
def test_matches_torchmetrics_lpips_on_the_same_weights(pair_of_metrics, reduction, normalize):
    theirs_none, net = pair_of_metrics
    batches = _batches()
    expected_all = torch.cat([theirs_none.net(a, b).reshape(-1) for a, b in batches])
    theirs_none.reduction, theirs_none.normalize = reduction, normalize
    try:
        expected = _run(theirs_none, batches, normalize)
    finally:
        theirs_none.reduction, theirs_none.normalize = "none", False
    ours = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction=reduction, normalize=normalize, metric=net)
    got = _run(ours, batches, normalize)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
    assert float(expected_all.std()) > 1e-3  # the photos differ: a constant answer could not pass


def test_forward_returns_the_batch_value_and_gradients_flow(pair_of_metrics):
    _, net = pair_of_metrics
    ours = PerceptualSimilarity(net, reduction="mean")
    x = real_photo("astronaut", 32).requires_grad_(True)
    y = real_photo("chelsea", 32)
    batch_value = ours(x, y)  # torchmetrics' forward: this batch's value, also accumulated
    assert torch.allclose(batch_value, net(x, y).mean())
    batch_value.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert torch.allclose(ours.compute(), batch_value.detach())


def test_wrapped_network_stays_in_eval_mode(pair_of_metrics):
    _, net = pair_of_metrics
    ours = PerceptualSimilarity(net)
    ours.train()
    assert ours.training and not net.training  # LPIPS' dropout must never change a score
    assert not any(p.requires_grad for p in net.parameters())


def test_ddp_sync_reduces_states_across_processes():
    """Two ranks' states combine to the single-process answer (sum for mean/sum, concatenation for none)."""
    from robustsim.metrics.lipsim import LipSim

    torch.manual_seed(0)
    net = LipSim(input_size=16, stem="unshuffle2", channels=12, conv_depth=1, conv_inner=4, pool=(2,), linear_depth=1,
                 linear_inner=8, embed_dim=10).eval()
    xs, ys = torch.rand(5, 3, 16, 16), torch.rand(5, 3, 16, 16)
    for reduction in ("mean", "sum", "none"):
        rank1 = PerceptualSimilarity(net, reduction=reduction)
        rank1.update(xs[3:], ys[3:])
        remote = iter([getattr(rank1, name) for name in rank1._reductions])

        def gather(t, group=None, _remote=remote):  # what all_gather returns on rank 0: [rank 0's, rank 1's]
            other = next(_remote)
            return [t, torch.cat(other) if isinstance(other, list) else other]

        rank0 = PerceptualSimilarity(net, reduction=reduction, dist_sync_fn=gather, distributed_available_fn=lambda: True)
        rank0.update(xs[:2], ys[:2])
        rank0.update(xs[2:3], ys[2:3])
        single = PerceptualSimilarity(net, reduction=reduction)
        single.update(xs, ys)
        assert torch.allclose(rank0.compute(), single.compute(), atol=1e-6), reduction


def test_clear_errors():
    with pytest.raises(InputError, match="net_type"):
        LearnedPerceptualImagePatchSimilarity(net_type="resnet")
    with pytest.raises(InputError, match="reduction"):
        PerceptualSimilarity(torch.nn.Identity(), reduction="max")
    with pytest.raises(InputError, match="unknown metric 'lipsim-defualt'; did you mean lipsim-default"):
        PerceptualSimilarity("lipsim-defualt")
    m = PerceptualSimilarity("LipSim-Default", normalize=False)  # names match case-insensitively
    with pytest.raises(InputError, match=r"\[-1, 1\].*normalize=True"):
        m.update(torch.full((1, 3, 8, 8), 2.0), torch.zeros(1, 3, 8, 8))
    with pytest.raises(InputError, match="before any update"):
        m.compute()
