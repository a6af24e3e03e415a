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
``param.data`` bypass the version counter (a PyTorch rule); call :func:`clear_caches` after those.
When gradients to the parameters are wanted in eval mode, the cached value is wrapped so that the
backward pass still differentiates t correctly.

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

__all__ = [
    "SLLConv2d",
    "SLLLinear",
    "safe_inv",
    "conv_t",
    "linear_t",
    "adjoint_conv2d",
    "clear_caches",
]


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


def clear_caches(module: nn.Module) -> None:
    """Drop every cached SLL rescaling inside ``module`` (after edits through ``param.data``)."""
    for m in module.modules():
        if isinstance(m, _SLLBase):
            m.clear_cache()
