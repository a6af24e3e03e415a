"""SDP-based Lipschitz layers (SLL, Araujo et al., ICLR 2023): residual layers that are 1-Lipschitz in l2.

Both layers compute ``out = x - 2 W^T (t ⊙ relu(W x + b))`` where W is a dense matrix (``SLLLinear``)
or a same-padded convolution (``SLLConv2d``) and the rescaling

    t_i = 1 / sum_j |exp(-q_i) (W W^T)_ij exp(q_j)|        (1/0 := 0)

makes the layer 1-Lipschitz for any W, b, q (the SDP condition of the SLL paper, with a diagonal
rescaling exp(q)). For the convolution, (W W^T) is the correlation of the kernel with itself:
``conv2d(K, K, padding=k-1)``, summed in absolute value over the spatial offsets.

t depends only on the parameters. In training mode it is recomputed on every call (the gradient
flows through it). In eval mode it is cached together with the rescaled adjoint kernel, keyed on
the parameters' autograd version counters and storage pointers, so any ordinary change
(``load_state_dict``, optimizer steps, in-place edits, ``.to()``) invalidates it. Edits made through
``param.data`` bypass the version counter (a PyTorch rule: ``.data`` is a new tensor with its own
counter); an ordinary forward pass after such an edit needs :func:`clear_caches`. Certificates do not
rely on that: :meth:`_SLLBase.exact_parts` keeps a copy of the parameter *values* it was computed
from and rebuilds both caches whenever the current values differ (``torch.equal``), so a certificate
never uses a rescaling of other parameter values, however they were changed.
When gradients to the parameters are wanted in eval mode, the cached value is wrapped so that the
backward pass still differentiates t correctly.

Floating point (:meth:`_SLLBase.float_error_terms`, used by ``robustsim.certify.rounding``): the layer
evaluated in floating point with unit roundoff u differs from the *exact* layer (exact t, 1-Lipschitz)
by at most ``a·||x|| + b`` at the computed input x; t is recomputed in float64 with a proven relative
error ρ_t (:meth:`_SLLBase.exact_parts`) and that error is part of the bound.

Note on the official LipSim code: its convolution layer reshapes both exp(-q) and exp(q) along the
same axis, so they cancel and its t ignores q. We implement the formula of the paper (which is what
makes the layer provably 1-Lipschitz for every q); with q = 0 the two agree, which is how the
checkpoint converter keeps released models exact (see ``convert.py``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .linalg import one_thread, spectral_norm

__all__ = [
    "SLLConv2d",
    "SLLLinear",
    "safe_inv",
    "conv_t",
    "linear_t",
    "adjoint_conv2d",
    "clear_caches",
    "gamma",
    "abs_spectral_bound",
]


def gamma(n: int, u: float) -> float:
    """Higham's γ_n = n·u / (1 - n·u): a sum of n products computed in any order (FMA or not) with unit
    roundoff u has error <= γ_n · (sum of the products' absolute values). inf when n·u >= 1/2."""
    nu = float(n) * float(u)
    return math.inf if nu >= 0.5 else nu / (1.0 - nu)


def abs_spectral_bound(m: torch.Tensor, iters: int = 60) -> float:
    """A proven upper bound on the spectral norm of ``|m|`` (entrywise absolute value), hence on ||m||.

    Collatz–Wielandt: for a nonnegative B = |m|^T |m| and any positive v, λ_max(B) <= max_i (Bv)_i / v_i.
    v comes from power iteration (so the bound is nearly tight). Every operation adds nonnegative
    numbers, so float64 rounding makes each (Bv)_i at most (1 + γ) too small; that factor is added.
    """
    a = m.detach().to(torch.float64).abs().reshape(m.shape[0], -1)
    if a.numel() == 0 or float(a.max()) == 0.0:
        return 0.0
    v = torch.ones(a.shape[1], dtype=torch.float64)
    for _ in range(iters):
        w = a.T @ (a @ v)
        v = w / w.max()
    v = v + 1e-6  # strictly positive
    w = a.T @ (a @ v)
    lam = float((w / v).max())
    slack = 1 + 4 * gamma(sum(a.shape) + 4, 2.0 ** -53)
    return math.sqrt(lam * slack) * (1 + 1e-12)


def safe_inv(s: torch.Tensor) -> torch.Tensor:
    """1/s elementwise with 1/0 := 0 (a dead inner unit gets no weight), NaN-free gradients."""
    zero = s == 0
    return torch.where(zero, torch.zeros_like(s), 1.0 / torch.where(zero, torch.ones_like(s), s))


def conv_t(kernel: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """SLL rescaling of a convolution kernel (inner, cin, k, k) with log-weights q (inner,)."""
    k = kernel.shape[-1]
    kk = F.conv2d(kernel, kernel, padding=k - 1).abs().sum((2, 3))  # (inner, inner): sum over offsets
    s = (torch.exp(-q)[:, None] * kk * torch.exp(q)[None, :]).sum(1)
    return safe_inv(s)


class _Gram(torch.autograd.Function):
    """W W^T with a one-GEMM backward: d/dW <G, W W^T> = (G + G^T) W (autograd would use two GEMMs)."""

    @staticmethod
    def forward(ctx, w):  # type: ignore[override]
        ctx.save_for_backward(w)
        return w @ w.T

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return (g + g.T) @ w


def gram(w: torch.Tensor) -> torch.Tensor:
    """W W^T (inner × inner), differentiable with a cheaper backward."""
    return _Gram.apply(w) if torch.is_grad_enabled() and w.requires_grad else w @ w.T


def linear_t(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """SLL rescaling of a dense weight (inner, cin) with log-weights q (inner,)."""
    ww = gram(weight)
    s = (torch.exp(-q)[:, None] * ww * torch.exp(q)[None, :]).abs().sum(1)
    return safe_inv(s)


def adjoint_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Kernel of the adjoint convolution: channels swapped and spatially flipped."""
    return kernel.transpose(0, 1).flip(2, 3)


def adjoint_conv2d(y: torch.Tensor, kernel: torch.Tensor, padding: int) -> torch.Tensor:
    """K^T y for a stride-1 convolution with ``padding``: conv2d with the flipped, transposed kernel.

    Equal to ``conv_transpose2d(y, kernel, padding=padding)``; it uses the forward-convolution code
    path, which is faster on CPU (see benchmarks/bench_sll.py).
    """
    k = kernel.shape[-1]
    return F.conv2d(y, adjoint_kernel(kernel), padding=k - 1 - padding)


class _CachedT(torch.autograd.Function):
    """Returns a cached t in the forward pass; recomputes it with autograd in the backward pass."""

    @staticmethod
    def forward(ctx, fn, t_cached, *params):  # type: ignore[override]
        ctx.fn = fn
        ctx.save_for_backward(*params)
        return t_cached.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        params = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in params]
            t = ctx.fn(*leaves)
            wanted = [i for i, p in enumerate(leaves) if ctx.needs_input_grad[2 + i]]
            grads = torch.autograd.grad(t, [leaves[i] for i in wanted], grad, allow_unused=True)
        out = [None] * len(leaves)
        for i, g in zip(wanted, grads):
            out[i] = g
        return (None, None, *out)


class _SLLBase(nn.Module):
    """Shared t-caching logic of the SLL layers."""

    _t_params: Tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._exact: Optional[dict] = None  # float64 exact parts (exact_parts), with the values they came from
        self._exact_snapshot: Optional[list] = None
        self._exact_fwd: Optional[tuple] = None  # the forward cache that _exact["rho"] was measured on

    # subclasses: the rescaling from parameter tensors, and the scaled adjoint weight from (weight, t)
    def _t_fn(self, *params: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scaled_adjoint(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _key(self) -> tuple:
        return tuple(
            (p._version, p.data_ptr(), p.dtype, p.device, tuple(p.shape))
            for p in (getattr(self, n) for n in self._t_params)
        )

    def clear_cache(self) -> None:
        """Forget the cached rescaling (needed only after edits through ``param.data``)."""
        self._cache_key = None
        self._cache = None

    # -------------------------------------------------------------------------------- floating point
    def _snapshot_matches(self) -> bool:
        snap = self._exact_snapshot
        if snap is None:
            return False
        for n, s in zip(self._t_params, snap):
            p = getattr(self, n).detach()
            if p.dtype != s.dtype or p.shape != s.shape or p.device != s.device or not torch.equal(p, s):
                return False
        return True

    def _exact_t(self, w64: torch.Tensor, q64: torch.Tensor) -> Tuple[torch.Tensor, float]:  # pragma: no cover
        raise NotImplementedError

    def exact_parts(self) -> dict:
        """Float64 pieces of the layer for the *current* parameter values (certificates' reference).

        Keys: ``t`` (the rescaling computed in float64), ``rho_t`` (|t - t_exact| <= rho_t·t_exact, proven),
        ``adj`` (the float64 scaled adjoint weight -2 t W in the forward cache's layout), ``nk`` / ``na``
        (upper bounds on the operator norms of abs(W) and abs(-2 t_exact W)). Keyed on a copy of the
        parameter values (compared with ``torch.equal``), so ``.data`` edits, ``load_state_dict``,
        ``copy_`` and optimiser steps all rebuild it; a rebuild also drops the forward cache, which
        might predate a ``.data`` edit.
        """
        if self._exact is None or not self._snapshot_matches():
            with torch.no_grad():
                params = [getattr(self, n).detach() for n in self._t_params]
                w64, q64 = (p.to(torch.float64) for p in params)
                t64, rho_t = self._exact_t(w64, q64)
                scaled = w64 * (-2 * t64).view(-1, *([1] * (w64.dim() - 1)))
                self._exact = {
                    "t": t64,
                    "rho_t": rho_t,
                    "adj": self._layout_adjoint(scaled),
                    "nk": abs_spectral_bound(_offset_sum(w64)),
                    "na": abs_spectral_bound(_offset_sum(scaled)) * (1 + rho_t),
                }
                self._exact_snapshot = [p.clone() for p in params]
                self._exact_fwd = None
            self.clear_cache()
        return self._exact

    def _layout_adjoint(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled

    def _rho(self) -> float:
        """Largest relative deviation of the forward pass's scaled adjoint weight from the exact one."""
        exact = self.exact_parts()
        fwd = self._cached()
        if self._exact_fwd is not fwd:
            got = fwd[1].detach().to(torch.float64)
            want = exact["adj"]
            nz = want != 0
            if got.shape != want.shape or not torch.isfinite(got).all() or bool((got[~nz] != 0).any()):
                rho = math.inf
            else:
                rho = float(((got[nz] - want[nz]).abs() / want[nz].abs()).max()) if bool(nz.any()) else 0.0
                rho = rho * (1 + 1e-9) + 8 * 2.0 ** -53
                rho = (1 + rho) * (1 + exact["rho_t"]) - 1  # deviation from -2 t_exact W
            exact["rho"] = rho
            self._exact_fwd = fwd
        return float(exact["rho"])

    def float_error_terms(self, in_shape: Tuple[int, ...], dtype: torch.dtype,
                          weights: str = "forward") -> Tuple[float, float]:
        """(a, b): this layer evaluated in ``dtype`` at a computed input x (one sample of shape ``in_shape``)
        differs from the *exact* layer (exact rescaling t) by at most ``a·||x|| + b`` in l2.

        weights: "forward" -- the forward pass's own (cached, rounded) scaled adjoint weight Ã;
        "exact64" -- the float64 weight of :meth:`exact_forward64`. ρ is the proven relative deviation of
        that weight from A = -2 t W (measured against the float64 weight, plus that weight's ρ_t).

        With z = Kx + b, n1 = C·k² + 1 terms per output of K (bias included), n2 = I·k² + 1 per output of
        the adjoint (the residual x included), γ = :func:`gamma` at the unit roundoff u of ``dtype``,
        N_K >= ||abs(K)||, N_A >= ||abs(A)||, s_K >= ||K||, s_A >= ||A|| (operators on this input size;
        DFT symbol for convolutions) and P positions (the broadcast bias has norm ||b||·sqrt(P)):

        - ||fl(z) - z|| <= γ(n1)·(N_K ||x|| + ||b|| sqrt(P)) =: Δz (|fl(Σ) - Σ| <= γ_n Σ|terms|);
        - ||relu(fl(z))|| <= s_K ||x|| + ||b|| sqrt(P) + Δz;
        - fl(x + Ã^T r̃) - (x + A^T relu(z)) = [rounding of the sum: <= γ(n2)(||x|| + (1+ρ) N_A ||r̃||)]
          + [(Ã - A)^T r̃: <= ρ N_A ||r̃||] + [A^T (r̃ - relu(z)): <= s_A Δz, relu being 1-Lipschitz];
        - plus an absolute term for underflow (each operation may lose the smallest normal number).
        """
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"no rounding bound for {dtype}")
        fi = torch.finfo(dtype)
        u = fi.eps / 2
        exact = self.exact_parts()
        rho = self._rho() if weights == "forward" else exact["rho_t"]
        cin, inner, k2 = self._dims()
        positions = math.prod(in_shape[1:]) if len(in_shape) > 1 else 1
        g1 = gamma(cin * k2 + 1, u)
        g2 = gamma(inner * k2 + 1, u)
        nk, na = exact["nk"], exact["na"]
        sk, sa = self._op_norms(tuple(in_shape[1:]))
        bias = float(self.bias.detach().to(torch.float64).norm()) * (1 + 1e-12) * math.sqrt(positions)
        w = g2 * (1 + rho) + rho
        a = g2 + w * na * (sk + g1 * nk) + sa * g1 * nk
        b = w * na * bias * (1 + g1) + sa * g1 * bias
        tiny = fi.tiny * math.sqrt(positions) * (na * math.sqrt(inner) * (cin * k2 + 1) + math.sqrt(cin) * (inner * k2 + 2))
        return a * (1 + 1e-9), b * (1 + 1e-9) + tiny

    def _op_norms(self, spatial: Tuple[int, ...]) -> Tuple[float, float]:
        """Proven upper bounds on the operator norms of W and of A = -2 t_exact W (cached per input size)."""
        exact = self.exact_parts()
        key = ("op", spatial)
        if key not in exact:
            w64 = self._exact_snapshot[0].to(torch.float64)
            scaled = w64 * (-2 * exact["t"]).view(-1, *([1] * (w64.dim() - 1)))
            exact[key] = (_op_norm(w64, spatial), _op_norm(scaled, spatial) * (1 + exact["rho_t"]))
        return exact[key]

    def exact_forward64(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The layer evaluated in float64 with the float64 rescaling of :meth:`exact_parts` (certificates)."""
        raise NotImplementedError

    def _dims(self) -> Tuple[int, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_t(self) -> torch.Tensor:
        """The rescaling t from the current parameters, differentiable (no caching)."""
        return self._t_fn(*(getattr(self, n) for n in self._t_params))

    def _cached(self) -> Tuple[torch.Tensor, torch.Tensor]:
        key = self._key()
        stale = self._cache is None or self._cache_key != key
        # tensors made under inference_mode cannot enter autograd graphs later: rebuild them outside it
        if not stale and self._cache[0].is_inference() and not torch.is_inference_mode_enabled():
            stale = True
        if stale:
            with torch.no_grad():
                t = self.compute_t()
                self._cache = (t, self._scaled_adjoint(t))
            self._cache_key = key
        return self._cache

    def t(self) -> torch.Tensor:
        """The rescaling used by the next forward call (cached in eval mode)."""
        if self.training:
            return self.compute_t()
        params = [getattr(self, n) for n in self._t_params]
        t = self._cached()[0]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return _CachedT.apply(self._t_fn, t, *params)
        return t

    def _fast_path(self) -> bool:
        """Eval mode with no gradient wanted for the parameters: use the cached scaled adjoint."""
        if self.training:
            return False
        if torch.is_grad_enabled() and any(getattr(self, n).requires_grad for n in self._t_params):
            return False
        return True


class SLLConv2d(_SLLBase):
    """1-Lipschitz residual convolution ``x - 2 K^T (t ⊙ relu(K x + b))`` (stride 1, same padding).

    Args:
        channels: input = output channels C.
        inner: inner dimension (number of filters of K), e.g. 5 in the released LipSim models.
        kernel_size: odd kernel size k (K has shape inner×C×k×k).

    Parameters use the official LipSim names and shapes: ``kernel`` (inner, C, k, k), ``bias``
    (1, inner, 1, 1), ``q`` (inner,).
    """

    _t_params = ("kernel", "q")

    def __init__(self, channels: int, inner: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SLLConv2d needs an odd kernel size for same padding, got {kernel_size}")
        if channels < 1 or inner < 1:
            raise ValueError(f"channels and inner must be >= 1, got {channels}, {inner}")
        self.channels, self.inner, self.kernel_size = int(channels), int(inner), int(kernel_size)
        self.padding = kernel_size // 2
        self.kernel = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(1, inner, 1, 1))
        self.q = nn.Parameter(torch.empty(inner))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SLL initialisation: K xavier-normal, b uniform(±1/sqrt(fan_in)), q standard normal."""
        nn.init.xavier_normal_(self.kernel)
        fan_in = self.channels * self.kernel_size**2
        bound = 1 / math.sqrt(fan_in)
        with torch.no_grad():
            self.bias.uniform_(-bound, bound)
            self.q.normal_()

    def _t_fn(self, kernel: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return conv_t(kernel, q)

    def _scaled_adjoint(self, t: torch.Tensor) -> torch.Tensor:
        return adjoint_kernel(self.kernel * (-2 * t)[:, None, None, None]).contiguous()

    def _layout_adjoint(self, scaled: torch.Tensor) -> torch.Tensor:
        return adjoint_kernel(scaled).contiguous()

    def _dims(self) -> Tuple[int, int, int]:
        return self.channels, self.inner, self.kernel_size**2

    def _exact_t(self, w64: torch.Tensor, q64: torch.Tensor) -> torch.Tensor:
        """t in float64 and ρ_t: s = Σ_j e^{-q_i} |corr|_ij e^{q_j} computed in float64 has error <= γ(m)·ŝ (ŝ the same sum
        with |K|, no cancellation), m counting the products, offsets, inner sum and the exp calls."""
        k = self.kernel_size
        s = (torch.exp(-q64)[:, None] * F.conv2d(w64, w64, padding=k - 1).abs().sum((2, 3)) * torch.exp(q64)[None, :]).sum(1)
        aw = w64.abs()
        s_abs = (torch.exp(-q64)[:, None] * F.conv2d(aw, aw, padding=k - 1).sum((2, 3)) * torch.exp(q64)[None, :]).sum(1)
        m = self.channels * k * k + (2 * k - 1) ** 2 + self.inner + 32
        return _inverse_with_error(s, s_abs, m)

    def exact_forward64(self, x: torch.Tensor) -> torch.Tensor:
        e = self.exact_parts()
        p = self.padding
        w = self.kernel.detach().to(torch.float64)
        r = torch.relu(F.conv2d(x, w, self.bias.detach().to(torch.float64).view(-1), padding=p))
        return x + F.conv2d(r, e["adj"], padding=self.kernel_size - 1 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if self._fast_path():
            _, adj = self._cached()
            r = torch.relu_(F.conv2d(x, self.kernel, self.bias.view(-1), padding=p))
            return F.conv2d(r, adj, padding=self.kernel_size - 1 - p).add_(x)
        t = self.t()
        r = torch.relu(F.conv2d(x, self.kernel, self.bias.view(-1), padding=p))
        # Scale the (small) kernel rather than the activation, sign included:
        # -2 K^T (t ⊙ r) = (diag(-2t) K)^T r, so no full-size multiply or negation runs forward or backward.
        adj = adjoint_kernel(self.kernel * (-2 * t)[:, None, None, None])
        return x + F.conv2d(r, adj, padding=self.kernel_size - 1 - p)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner={self.inner}, kernel_size={self.kernel_size}"


class SLLLinear(_SLLBase):
    """1-Lipschitz residual dense layer ``x - 2 W^T (t ⊙ relu(W x + b))``.

    Args:
        features: input = output features.
        inner: inner dimension (rows of W).

    Parameters use the official LipSim names and shapes: ``weight`` (inner, features), ``bias``
    (1, inner), ``q`` (inner,).
    """

    _t_params = ("weight", "q")

    def __init__(self, features: int, inner: int):
        super().__init__()
        if features < 1 or inner < 1:
            raise ValueError(f"features and inner must be >= 1, got {features}, {inner}")
        self.features, self.inner = int(features), int(inner)
        self.weight = nn.Parameter(torch.empty(inner, features))
        self.bias = nn.Parameter(torch.empty(1, inner))
        self.q = nn.Parameter(torch.empty(inner))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SLL initialisation: W xavier-normal, b uniform(±1/sqrt(fan_in)), q standard normal."""
        nn.init.xavier_normal_(self.weight)
        bound = 1 / math.sqrt(self.features)
        with torch.no_grad():
            self.bias.uniform_(-bound, bound)
            self.q.normal_()

    def _t_fn(self, weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return linear_t(weight, q)

    def _scaled_adjoint(self, t: torch.Tensor) -> torch.Tensor:
        return (self.weight * (-2 * t)[:, None]).contiguous()

    def _dims(self) -> Tuple[int, int, int]:
        return self.features, self.inner, 1

    def _exact_t(self, w64: torch.Tensor, q64: torch.Tensor) -> torch.Tensor:
        """t in float64 and ρ_t as for the convolution; ŝ uses Cauchy-Schwarz (|W||W|^T)_ij <= ||W_i|| ||W_j||."""
        s = (torch.exp(-q64)[:, None] * (w64 @ w64.T) * torch.exp(q64)[None, :]).abs().sum(1)
        rn = w64.norm(dim=1)
        s_abs = torch.exp(-q64) * rn * (rn * torch.exp(q64)).sum()
        return _inverse_with_error(s, s_abs, self.features + self.inner + 32)

    def exact_forward64(self, x: torch.Tensor) -> torch.Tensor:
        e = self.exact_parts()
        r = torch.relu(F.linear(x, self.weight.detach().to(torch.float64), self.bias.detach().to(torch.float64).view(-1)))
        return x + r @ e["adj"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_path():
            _, w2t = self._cached()
            r = torch.relu_(F.linear(x, self.weight, self.bias.view(-1)))
            return torch.addmm(x, r, w2t) if x.dim() == 2 else x + r @ w2t
        t = self.t()
        r = torch.relu(F.linear(x, self.weight, self.bias.view(-1)))
        return torch.addmm(x, r, self.weight * (-2 * t)[:, None]) if x.dim() == 2 else x + r @ (self.weight * (-2 * t)[:, None])

    def extra_repr(self) -> str:
        return f"features={self.features}, inner={self.inner}"


def _offset_sum(w: torch.Tensor) -> torch.Tensor:
    """Σ over kernel offsets of |W| as an (out, in) matrix: its spectral norm bounds the operator norm of
    the convolution with |W| (and with W), whatever the padding and image size (DFT symbol argument)."""
    return w.abs().sum(tuple(range(2, w.dim()))) if w.dim() > 2 else w.abs()


def _dense_norm(w: torch.Tensor) -> float:
    """Proven upper bound on the spectral norm of a float64 matrix, from the Gram matrix of its short side.

    ||w||^2 = λ_max(G) with G = w w^T (or w^T w, whichever is smaller). The computed Ĝ differs from G by
    at most γ_n·|w||w|^T entrywise (n the long side), whose spectral norm is at most its Frobenius norm;
    the symmetric eigensolver is backward stable (|λ̂ - λ| <= c·m·eps64·||Ĝ||), covered by 1e-9·||Ĝ||_F.
    A full SVD of the 384×3072 dense layers costs seconds; this costs milliseconds.
    """
    a = w if w.shape[0] <= w.shape[1] else w.T
    gram = a @ a.T
    with one_thread():
        lam = float(torch.linalg.eigvalsh(gram).max())
    absa = a.abs()
    err = gamma(a.shape[1], 2.0 ** -53) * float(torch.linalg.vector_norm(absa @ absa.T))
    fro = float(torch.linalg.vector_norm(gram))
    return math.sqrt(max(lam, 0.0) + err + 1e-9 * fro) * (1 + 1e-12)


def _op_norm(w: torch.Tensor, spatial: Tuple[int, ...]) -> float:
    """Proven upper bound on the l2 operator norm of a dense matrix, or of a same-padded stride-1
    convolution with kernel w on H×W inputs.

    Dense: the largest singular value from LAPACK (backward stable: error <= p(n)·eps64·||w||, covered
    by the slack). Convolution: the zero-padded convolution is the restriction of the circular one on
    an (H+k-1)×(W+k-1) torus to the zero-extended input, so its norm is at most the largest singular
    value of the kernel's DFT symbol over that torus's frequencies (FFT error <= c·log(N)·eps64·Σ|w|,
    covered by an absolute slack of 1e-9·||abs(w)||).
    """
    w = w.detach().to(torch.float64).cpu()
    if w.dim() == 2:
        return _dense_norm(w)
    k1, k2 = w.shape[-2:]
    n1, n2 = spatial[0] + k1 - 1, spatial[1] + k2 - 1
    sym = torch.fft.fft2(w, s=(n1, n2))  # (out, in, n1, n2)
    s = spectral_norm(sym.permute(2, 3, 0, 1))
    return s * (1 + 1e-9) + 1e-9 * abs_spectral_bound(_offset_sum(w))


def _inverse_with_error(s: torch.Tensor, s_abs: torch.Tensor, m: int) -> Tuple[torch.Tensor, float]:
    """t64 = 1/s (1/0 := 0) from the float64 sum s, and ρ_t with |t64 - t_exact| <= ρ_t·t_exact.

    |s - s_exact| <= γ(m)·s_abs (s_abs the same sum with absolute values, m the number of roundings
    on any path); the division adds one rounding. A unit with s_abs = 0 is dead (t = 0 exactly).
    """
    g = gamma(m, 2.0 ** -53)
    dead = s_abs == 0
    rel = torch.where(dead, torch.zeros_like(s), g * s_abs / torch.where(dead, torch.ones_like(s), s))
    if bool((rel >= 0.5).any()):
        return torch.zeros_like(s), math.inf
    t = torch.where(dead, torch.zeros_like(s), 1.0 / torch.where(dead, torch.ones_like(s), s))
    rel_max = float(rel.max()) if rel.numel() else 0.0
    return t, (rel_max / (1 - rel_max)) * (1 + 1e-6) + 4 * 2.0 ** -53


def clear_caches(module: nn.Module) -> None:
    """Drop every cached SLL rescaling inside ``module`` (after edits through ``param.data``)."""
    for m in module.modules():
        if isinstance(m, _SLLBase):
            m.clear_cache()
