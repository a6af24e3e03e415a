"""SLL layers and the parameter-free 1-Lipschitz pieces: formulas, caching, gradients, Lipschitz property."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustsim.lipschitz import (
    BinomialBlur2d, InvertibleDownsample, PadChannels, SLLConv2d, SLLLinear, SumPool2d, Truncate, adjoint_conv2d,
    clear_caches,
)
from robustsim.lipschitz import sll as sll_mod

# ---------------------------------------------------------------- independent references (written from the paper)


def ref_conv_t(K: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """t_i = 1 / sum_j |exp(-q_i) (K K^T)_ij exp(q_j)|, (K K^T)_ij = sum over offsets of |corr(K_i, K_j)|, loops."""
    inner, cin, k, _ = K.shape
    s = torch.zeros(inner, dtype=K.dtype)
    for i in range(inner):
        for j in range(inner):
            acc = 0.0
            for dy in range(-(k - 1), k):
                for dx in range(-(k - 1), k):
                    v = 0.0
                    for a in range(k):
                        for b in range(k):
                            a2, b2 = a + dy, b + dx
                            if 0 <= a2 < k and 0 <= b2 < k:
                                v += float((K[i, :, a2, b2] * K[j, :, a, b]).sum())
                    acc += abs(v)
            s[i] += torch.exp(-q[i]) * acc * torch.exp(q[j])
    return torch.where(s == 0, torch.zeros_like(s), 1 / s)


def ref_conv_forward(layer: SLLConv2d, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """out = x - 2 K^T (t ⊙ relu(K x + b)) with conv_transpose2d as the adjoint (the reference code's way)."""
    p = layer.padding
    r = torch.relu(F.conv2d(x, layer.kernel, padding=p) + layer.bias)
    return x - 2 * F.conv_transpose2d(t.view(1, -1, 1, 1) * r, layer.kernel, padding=p)


def ref_linear_t(W: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    ww = W @ W.T
    s = torch.stack([sum(abs(torch.exp(-q[i]) * ww[i, j] * torch.exp(q[j])) for j in range(W.shape[0])) for i in range(W.shape[0])])
    return torch.where(s == 0, torch.zeros_like(s), 1 / s)


def ref_linear_forward(layer: SLLLinear, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r = torch.relu(x @ layer.weight.T + layer.bias)
    return x - 2 * (t * r) @ layer.weight


def _randomise(layer: torch.nn.Module, scale: float = 1.0) -> torch.nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return layer


# ---------------------------------------------------------------- formulas


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv_t_matches_paper_formula(k):
    layer = _randomise(SLLConv2d(4, 3, k).double())
    assert torch.allclose(layer.compute_t(), ref_conv_t(layer.kernel.detach(), layer.q.detach()), rtol=1e-12, atol=0)


def test_conv_t_uses_q_unlike_official_code():
    """The official conv t broadcasts exp(-q) and exp(q) on the same axis (they cancel); ours must not."""
    layer = _randomise(SLLConv2d(4, 3)).double()
    kk = F.conv2d(layer.kernel, layer.kernel, padding=2).abs()
    official = 1 / (torch.exp(-layer.q).view(-1, 1, 1, 1) * kk * torch.exp(layer.q).view(-1, 1, 1, 1)).sum((1, 2, 3))
    assert not torch.allclose(layer.compute_t(), official, rtol=1e-3)
    with torch.no_grad():
        layer.q.zero_()
    assert torch.allclose(layer.compute_t(), official, rtol=1e-12)


def test_linear_t_matches_paper_formula():
    layer = _randomise(SLLLinear(7, 5).double())
    assert torch.allclose(layer.compute_t(), ref_linear_t(layer.weight.detach(), layer.q.detach()), rtol=1e-12)


def test_safe_inv_dead_unit_gives_zero_and_finite_gradient():
    layer = SLLLinear(6, 4)
    with torch.no_grad():
        layer.weight[2].zero_()
    t = layer.compute_t()
    assert t[2] == 0 and torch.all(t[[0, 1, 3]] > 0)
    t.sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.q.grad).all()


@pytest.mark.parametrize("k,cin,cout", [(3, 5, 7), (5, 4, 3), (1, 6, 2)])
def test_adjoint_conv_equals_conv_transpose(k, cin, cout):
    K = torch.randn(cout, cin, k, k, dtype=torch.float64)
    y = torch.randn(2, cout, 9, 11, dtype=torch.float64)
    p = k // 2
    assert torch.allclose(adjoint_conv2d(y, K, p), F.conv_transpose2d(y, K, padding=p), rtol=0, atol=1e-12)
    a = adjoint_conv2d(y.float(), K.float(), p)
    b = F.conv_transpose2d(y.float(), K.float(), padding=p)
    assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    # and it is the adjoint: <K x, y> = <x, K^T y>
    x = torch.randn(2, cin, 9, 11, dtype=torch.float64)
    assert torch.allclose((F.conv2d(x, K, padding=p) * y).sum(), (x * adjoint_conv2d(y, K, p)).sum(), rtol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval", "eval-no-grad"])
def test_forward_matches_reference(mode):
    conv = SLLConv2d(6, 4)
    lin = SLLLinear(10, 7)
    x = torch.randn(3, 6, 8, 8)
    z = torch.randn(3, 10)
    t_c, t_l = ref_conv_t(conv.kernel.detach(), conv.q.detach()), ref_linear_t(lin.weight.detach(), lin.q.detach())
    want_c, want_l = ref_conv_forward(conv, x, t_c).detach(), ref_linear_forward(lin, z, t_l).detach()
    conv.train(mode == "train")
    lin.train(mode == "train")
    with torch.set_grad_enabled(mode != "eval-no-grad"):
        for _ in range(2):  # second call served from the cache in eval
            assert torch.allclose(conv(x), want_c, atol=2e-6)
            assert torch.allclose(lin(z), want_l, atol=2e-6)


# ---------------------------------------------------------------- caching


class _Counting:
    def __init__(self, monkeypatch):
        self.n = 0
        for name in ("conv_t", "linear_t"):
            orig = getattr(sll_mod, name)

            def wrapped(*a, _orig=orig):
                self.n += 1
                return _orig(*a)

            monkeypatch.setattr(sll_mod, name, wrapped)


def test_eval_caches_t_and_training_recomputes(monkeypatch):
    c = _Counting(monkeypatch)
    layer = SLLLinear(8, 4).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        for _ in range(5):
            layer(x)
    assert c.n == 1
    layer.train()
    for _ in range(3):
        layer(x)
    assert c.n == 4


@pytest.mark.parametrize("change", ["load_state_dict", "optimizer", "inplace", "to_double", "data_then_clear"])
def test_cache_never_stale(change):
    torch.manual_seed(1)
    for layer, x in [(SLLConv2d(4, 3), torch.randn(2, 4, 6, 6)), (SLLLinear(9, 5), torch.randn(2, 9))]:
        layer.eval()
        with torch.no_grad():
            before = layer(x)
        other = _randomise(copy.deepcopy(layer), 0.5)
        if change == "load_state_dict":
            layer.load_state_dict(other.state_dict())
        elif change == "optimizer":
            opt = torch.optim.SGD(layer.parameters(), lr=0.5)
            layer.train()
            layer(x).pow(2).sum().backward()
            layer.eval()
            opt.step()
        elif change == "inplace":
            with torch.no_grad():
                for n in layer._t_params:
                    getattr(layer, n).mul_(1.7).add_(0.3)
        elif change == "to_double":
            layer.double()
            x = x.double()
        elif change == "data_then_clear":  # .data bypasses the version counter: clear_caches is the documented fix
            for n in layer._t_params:
                getattr(layer, n).data.mul_(1.7)
            clear_caches(layer)
        with torch.no_grad():
            after = layer(x)
            fresh = copy.deepcopy(layer).train()(x)  # training mode never uses the cache
        if change == "to_double":  # same values, but the cached t must have followed the dtype
            assert layer._cache[0].dtype == torch.float64 and after.dtype == torch.float64
        else:
            assert not torch.allclose(before, after, atol=1e-4)
        assert torch.allclose(after, fresh, atol=1e-6)


def test_cache_filled_in_inference_mode_usable_with_autograd():
    layer = SLLConv2d(4, 3).eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode():
        want = layer(x)
    xr = x.clone().requires_grad_()
    out = layer(xr)  # an attack: gradient to the input, cache made under inference_mode
    (g,) = torch.autograd.grad(out.sum(), xr)
    assert torch.allclose(out.detach(), want) and torch.isfinite(g).all()


def test_eval_parameter_gradients_flow_through_cached_t():
    """Fine-tuning in eval mode must still differentiate t (the cached value is wrapped)."""
    for layer, x in [(SLLConv2d(5, 3), torch.randn(2, 5, 6, 6)), (SLLLinear(9, 4), torch.randn(3, 9))]:
        layer.train()
        layer(x).pow(2).sum().backward()
        want = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        layer.eval()
        with torch.no_grad():
            layer(x)  # fill the cache
        layer(x).pow(2).sum().backward()
        for p, g in zip(layer.parameters(), want):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


def test_training_gradient_matches_finite_differences():
    """Gradients through t (training mode) are right: gradcheck of the layers as functions of their parameters."""
    from torch.func import functional_call

    for layer, x in [(SLLConv2d(3, 2).double(), torch.randn(1, 3, 4, 4, dtype=torch.float64)),
                     (SLLLinear(5, 3).double(), torch.randn(4, 5, dtype=torch.float64))]:
        layer.train()
        names = [n for n, _ in layer.named_parameters()]
        args = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
        assert torch.autograd.gradcheck(lambda *ps: functional_call(layer, dict(zip(names, ps)), (x,)), args)


def test_input_gradient_same_in_train_and_eval():
    layer = SLLConv2d(4, 3)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    layer.train()
    (g1,) = torch.autograd.grad(layer(x).sum(), x)
    layer.eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    (g2,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_bad_construction():
    with pytest.raises(ValueError, match="odd"):
        SLLConv2d(4, 2, kernel_size=2)
    with pytest.raises(ValueError, match=">= 1"):
        SLLLinear(0, 3)


# ---------------------------------------------------------------- parameter-free layers


def _jacobian_norm(f, x):
    J = torch.autograd.functional.jacobian(f, x).reshape(f(x).numel(), x.numel())
    return float(torch.linalg.matrix_norm(J, ord=2))


def test_parameter_free_layers_have_norm_one():
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    pad, unsh = PadChannels(7), InvertibleDownsample(2)
    assert torch.allclose(pad(x).norm(), x.norm()) and pad(x).shape == (1, 7, 8, 8)
    assert torch.allclose(unsh(x).norm(), x.norm()) and unsh(x).shape == (1, 12, 4, 4)
    assert torch.equal(F.pixel_shuffle(unsh(x), 2), x)  # invertible
    pool = SumPool2d(4)
    assert torch.allclose(pool(x), F.avg_pool2d(x, 4) * 4)
    assert abs(_jacobian_norm(pool, x) - 1) < 1e-12
    assert abs(_jacobian_norm(Truncate(50), x.flatten(1)) - 1) < 1e-12
    with pytest.raises(ValueError, match="divisible"):
        unsh(torch.rand(1, 3, 5, 5))
    with pytest.raises(ValueError, match="channels"):
        pad(torch.rand(1, 4, 5, 5))


@pytest.mark.parametrize("size", [3, 5])
def test_binomial_blur_is_the_normalised_binomial_filter_and_a_contraction(size):
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    k = torch.outer(row, row) / row.sum() ** 2
    ref = F.conv2d(x, k.expand(3, 1, size, size), padding=size // 2, groups=3)
    blur = BinomialBlur2d(size)
    assert torch.allclose(blur(x), ref, atol=1e-15)
    norm = _jacobian_norm(lambda t: blur(t[None])[0], x[0])
    assert 0.9 < norm <= 1 + 1e-12  # <= ||k||_1 = 1 (Young); near 1 because smooth images pass
    assert torch.equal(BinomialBlur2d(1)(x), x)
    with pytest.raises(ValueError, match="odd"):
        BinomialBlur2d(2)


def test_blur_before_pool_makes_pooled_features_shift_tolerant():
    """Why the blur exists: a one-cell shift changes 2×2-pooled features less after blurring."""
    x = torch.randn(8, 4, 34, 34, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = x[..., 1:33, 1:33], x[..., 1:33, 2:34]  # the same map shifted by one cell

    def change(f):
        return float((f(a) - f(b))[..., 2:-2, 2:-2].norm() / f(a)[..., 2:-2, 2:-2].norm())

    pool, blurred = SumPool2d(2), (lambda t: SumPool2d(2)(BinomialBlur2d(3)(t)))
    assert change(pool) > 0.9 and change(blurred) < 0.8 * change(pool)  # on white noise


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.sampled_from([3, 5]), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_blur_float_error_terms_bound_the_float32_error(seed, size, scale):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, 5, 8, 8, generator=gen) * scale).float()
    blur = BinomialBlur2d(size)
    err = (blur(x).double() - blur(x.double())).flatten(1).norm(dim=1)
    a, b = blur.float_error_terms(tuple(x.shape[1:]), torch.float32)
    assert torch.all(err <= a * x.double().flatten(1).norm(dim=1) + b)
    assert 0 < a < 1e-5


# ---------------------------------------------------------------- Lipschitz property (hypothesis)


def _adversarial_pair(f, x, steps=15):
    """y near x maximising ||f(y) - f(x)|| / ||y - x||: gradient ascent on the ratio."""
    d = (torch.randn_like(x) * 1e-2).requires_grad_()
    opt = torch.optim.Adam([d], lr=2e-3)
    for _ in range(steps):
        ratio = (f(x + d) - f(x)).norm() / d.norm()
        opt.zero_grad()
        (-ratio).backward()
        opt.step()
    return x + d.detach()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["conv", "linear"]),
    cin=st.integers(1, 6),
    inner=st.integers(1, 6),
    k=st.sampled_from([1, 3, 5]),
    scale=st.floats(0.05, 5.0),
    qscale=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
    adversarial=st.booleans(),
)
def test_layers_are_1_lipschitz(kind, cin, inner, k, scale, qscale, seed, adversarial):
    torch.manual_seed(seed)
    layer = (SLLConv2d(cin, inner, k) if kind == "conv" else SLLLinear(cin * 4, inner)).double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn_like(p) * (qscale if name == "q" else scale))
    layer.eval()
    shape = (1, cin, 5, 5) if kind == "conv" else (1, cin * 4)
    x = torch.randn(shape, dtype=torch.float64) * scale
    y = _adversarial_pair(layer, x) if adversarial else x + torch.randn(shape, dtype=torch.float64) * scale
    with torch.no_grad():
        assert (layer(x) - layer(y)).norm() <= (x - y).norm() * (1 + 1e-5)


# ---------------------------------------------------------------- floating-point bounds (certify.rounding's pieces)


def _conv_operator_norm(w: torch.Tensor, h: int, wd: int, iters: int = 200) -> float:
    """Power iteration on K^T K of the same-padded convolution (a lower estimate of the true norm)."""
    x = torch.randn(1, w.shape[1], h, wd, dtype=torch.float64)
    p = w.shape[-1] // 2
    for _ in range(iters):
        y = F.conv_transpose2d(F.conv2d(x, w, padding=p), w, padding=p)
        x = y / y.norm()
    return float(F.conv2d(x, w, padding=p).norm())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 3, 5]), size=st.integers(3, 9))
def test_operator_norm_bounds_are_upper_bounds_and_tight(seed, k, size):
    torch.manual_seed(seed)
    w = torch.randn(4, 3, k, k, dtype=torch.float64)
    est = _conv_operator_norm(w, size, size)
    bound = sll_mod._op_norm(w, (size, size))
    assert est <= bound * (1 + 1e-9)
    # tight up to the image boundary: the torus is k - 1 larger, so the gap shrinks as the image grows
    # (seen: 1.85× for a 5×5 kernel on a 3×3 image); compare where the boundary is a small part
    if size >= 2 * k:
        assert bound <= 1.6 * est + 1e-9
    m = torch.randn(7, 5, dtype=torch.float64)
    ab = sll_mod.abs_spectral_bound(m)
    true_abs = float(torch.linalg.matrix_norm(m.abs(), ord=2))
    assert true_abs <= ab <= true_abs * (1 + 1e-6)
    assert float(torch.linalg.matrix_norm(m, ord=2)) <= ab
    # Σ_offsets |K| bounds the convolution with |K| on any image size
    assert _conv_operator_norm(w.abs(), size, size) <= sll_mod.abs_spectral_bound(sll_mod._offset_sum(w)) * (1 + 1e-9)


def test_gamma_is_highams_constant():
    assert sll_mod.gamma(10, 2.0 ** -24) == pytest.approx(10 * 2.0 ** -24 / (1 - 10 * 2.0 ** -24))
    assert sll_mod.gamma(2 ** 23, 2.0 ** -24) == float("inf")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["conv", "linear"]), bscale=st.sampled_from([0.0, 1.0, 30.0]))
def test_layer_float_error_terms_bound_the_float32_error(seed, kind, bscale):
    """float32 forward vs the float64 layer: within a·||x|| + b (including large, cancelling biases)."""
    torch.manual_seed(seed)
    layer = SLLConv2d(6, 4) if kind == "conv" else SLLLinear(20, 8)
    with torch.no_grad():
        layer.bias.mul_(bscale)
    layer.eval().requires_grad_(False)
    x = torch.randn(5, 6, 7, 7) if kind == "conv" else torch.randn(5, 20)
    with torch.no_grad():
        y32 = layer(x).double()
        y64 = layer.exact_forward64(x.double())
    a, b = layer.float_error_terms(tuple(x.shape[1:]), torch.float32)
    xn = x.double().flatten(1).norm(dim=1)
    err = (y32 - y64).flatten(1).norm(dim=1)
    assert torch.all(err <= a * xn + b)
    a64, _ = layer.float_error_terms(tuple(x.shape[1:]), torch.float64, "exact64")
    assert a64 < 1e-9 * (1 + a / 1e-3)


def test_exact_parts_follow_every_parameter_change_including_data():
    layer = SLLLinear(9, 5).eval()
    t0 = layer.exact_parts()["t"].clone()
    layer.weight.data.mul_(2.0)  # no version bump
    t1 = layer.exact_parts()["t"]
    assert torch.allclose(t1, t0 / 4, rtol=1e-12)
    assert layer._cache is None  # the forward cache (which predates the edit) was dropped too
    with torch.no_grad():
        y = layer(torch.randn(2, 9))
    assert torch.allclose(layer._cache[0].double(), t1, rtol=1e-5)
    assert y.shape == (2, 9)
