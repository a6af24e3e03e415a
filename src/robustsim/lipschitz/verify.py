"""Empirical checks that a network is as Lipschitz as it claims.

Two probes, both *lower* bounds on the true constant (so any estimate above the claim is a real
violation, up to float error):

* per layer: the spectral norm of each layer's Jacobian at sampled points, by power iteration on
  J^T J (forward-mode jvp, reverse-mode vjp), with the layer inputs obtained by running real samples
  through the preceding layers;
* whole network: gradient ascent on ||g(x) - g(y)|| / ||x - y|| over pairs (x, y) from several random
  restarts and pair scales, plus power iteration on the whole network's Jacobian.

The computation runs in float64 on a copy of the model by default, so float32 rounding cannot fake a
violation; the tolerance is relative (1 + 1e-4 by default).

Two presets for ``robustsim verify``: :data:`QUICK` (the default: one sample, 10 power iterations per
layer and 5 for the whole network, in float32, no pair search -- about 6 s of CPU for lipsim-default
single-threaded) and :data:`THOROUGH` (``--thorough``: two samples, 30 iterations, float64, and the
gradient-ascent pair search, which alone costs minutes on such a machine). float32 is enough for the
quick check: its rounding (~1e-6 relative) stays far below the 1e-4 tolerance, and the estimates
remain lower bounds. Power iteration on these layers settles within a few iterations because their
top singular values sit at 1, so the quick check loses little detection power; the whole-network
estimate of a deep 1-Lipschitz stack sits well below 1 (0.95 for lipsim-default), so a violation
shows first in the per-layer rows, which is where the quick check spends its time; the pair search
rarely beats the whole-network power iteration (it probes finite, not infinitesimal, pairs).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["Estimate", "Report", "spectral_norm_power", "pair_search", "verify", "verify_module"]

DEFAULT_TOL = 1e-4

QUICK = {"n_samples": 1, "iters": 10, "network_iters": 5, "restarts": 0, "steps": 0, "dtype": torch.float32}
THOROUGH = {"n_samples": 2, "iters": 30, "network_iters": None, "restarts": 2, "steps": 30, "dtype": torch.float64}


@dataclass
class Estimate:
    """One measured constant: what was probed, how, the estimate and the bound it must respect."""

    name: str
    method: str
    value: float
    bound: float = 1.0

    def ok(self, tol: float = DEFAULT_TOL) -> bool:
        return self.value <= self.bound * (1 + tol)


@dataclass
class Report:
    """All estimates for one model; ``ok`` is False if any exceeds its bound by more than ``tol``."""

    estimates: List[Estimate] = field(default_factory=list)
    tol: float = DEFAULT_TOL

    @property
    def ok(self) -> bool:
        return all(e.ok(self.tol) for e in self.estimates)

    @property
    def worst(self) -> Estimate:
        return max(self.estimates, key=lambda e: e.value / e.bound)

    def table(self) -> str:
        w = max([len(e.name) for e in self.estimates] + [5])
        lines = [f"{'layer':<{w}}  {'method':<16}  {'estimate':>12}  {'bound':>8}  status"]
        for e in self.estimates:
            lines.append(f"{e.name:<{w}}  {e.method:<16}  {e.value:>12.8f}  {e.bound:>8.4f}  {'ok' if e.ok(self.tol) else 'FAIL'}")
        return "\n".join(lines)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters temporarily without requires_grad (only input derivatives are probed)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


def spectral_norm_power(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int = 50,
                        generator: Optional[torch.Generator] = None, tol: float = 1e-10) -> torch.Tensor:
    """Per-sample spectral norm of the Jacobian of ``fn`` at each row of ``x`` (power iteration on J^T J).

    ``fn`` must act on samples independently (its batch Jacobian is block diagonal). Returns (N,).
    """
    from torch.func import jvp, vjp

    x = x.detach()
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    v = v / _per_sample_norm(v).view(-1, *[1] * (x.dim() - 1))
    _, pullback = vjp(fn, x)
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        _, u = jvp(fn, (x,), (v,))
        new_sigma = _per_sample_norm(u)
        (w,) = pullback(u)
        wn = _per_sample_norm(w)
        v = w / wn.clamp_min(1e-300).view(-1, *[1] * (x.dim() - 1))
        done = bool(((new_sigma - sigma).abs() <= tol * new_sigma.clamp_min(1e-30)).all())
        sigma = new_sigma
        if done:
            break
    # sigma is ||J v|| for a unit v: a lower bound on ||J||, never an overestimate
    return sigma


def pair_search(fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int = 50, restarts: int = 3,
                scales: Sequence[float] = (1e-3, 1e-1, 1.0), lr: float = 0.05, seed: int = 0,
                progress: bool = False) -> float:
    """Largest ||fn(x) - fn(y)|| / ||x - y|| found by gradient ascent from pairs around the rows of ``x0``."""
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    shape = x0.shape
    runs = [(r, s) for r in range(restarts) for s in scales]
    for r, scale in tqdm(runs, desc="pair search", disable=not progress, leave=False):
        x = (x0 + 0.1 * r * torch.randn(shape, generator=gen, dtype=x0.dtype)).detach().requires_grad_(True)
        d = torch.randn(shape, generator=gen, dtype=x0.dtype)
        d = (d * (scale / _per_sample_norm(d).view(-1, *[1] * (d.dim() - 1)))).requires_grad_(True)
        opt = torch.optim.Adam([x, d], lr=lr * scale)
        for _ in range(steps):
            ratio = _per_sample_norm(fn(x + d) - fn(x)) / _per_sample_norm(d).clamp_min(1e-300)
            best = max(best, float(ratio.detach().max()))
            opt.zero_grad()
            (-ratio.sum()).backward()
            opt.step()
        with torch.no_grad():
            ratio = _per_sample_norm(fn(x + d) - fn(x)) / _per_sample_norm(d).clamp_min(1e-300)
            best = max(best, float(ratio.max()))
    return best


def _layers(net: nn.Module) -> List[Tuple[str, nn.Module]]:
    if hasattr(net, "layers"):
        return list(net.layers())
    if isinstance(net, nn.Sequential):
        return list(net.named_children())
    return [("network", net)]


def verify_module(net: nn.Module, x: torch.Tensor, bound: float = 1.0, iters: int = 50, restarts: int = 2,
                  steps: int = 30, seed: int = 0, dtype: Optional[torch.dtype] = torch.float64,
                  tol: float = DEFAULT_TOL, per_layer: bool = True, progress: bool = False,
                  network_iters: Optional[int] = None) -> Report:
    """Measure the Lipschitz constant of ``net`` (and of each layer, each claimed <= 1) around samples ``x``.

    ``net`` is evaluated in eval mode on a copy converted to ``dtype`` (None keeps the model's dtype).
    ``network_iters`` power iterations for the whole network (default: ``iters``, as for each layer).
    """
    if dtype is not None:
        net = copy.deepcopy(net).to(dtype)
        x = x.to(dtype)
    was_training = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    report = Report(tol=tol)
    try:
        with _frozen(net):
            layers = _layers(net) if per_layer else []
            if len(layers) > 1:
                h = x.detach()
                for name, layer in tqdm(layers, desc="layers", disable=not progress, leave=False):
                    s = spectral_norm_power(layer, h, iters=iters, generator=gen)
                    report.estimates.append(Estimate(name, "power iteration", float(s.max()), 1.0))
                    with torch.no_grad():
                        h = layer(h)
            s = spectral_norm_power(net, x, iters=iters if network_iters is None else network_iters, generator=gen)
            report.estimates.append(Estimate("network", "power iteration", float(s.max()), bound))
            if restarts > 0 and steps > 0:
                r = pair_search(net, x.detach(), steps=steps, restarts=restarts, seed=seed, progress=progress)
                report.estimates.append(Estimate("network", "pair search", r, bound))
    finally:
        net.train(was_training)
    return report


def verify(metric, n_samples: int = 2, size: Optional[int] = None, seed: int = 0, **kwargs) -> Report:
    """Verify a certified metric: its encoder must be ``metric.lipschitz``-Lipschitz at native resolution.

    Samples are uniform random images at the metric's input size (or ``size`` for size-free encoders).
    """
    from ..errors import InputError

    if not getattr(metric, "certified", False):
        raise InputError(f"{getattr(metric, 'name', '') or type(metric).__name__} is not a certified metric; nothing to verify")
    encoder = getattr(metric, "encoder", metric)
    hw = metric.input_size or (size, size)
    if hw[0] is None:
        raise InputError("this metric has no native size; pass size=")
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_samples, 3, int(hw[0]), int(hw[1]), generator=gen)
    return verify_module(encoder, x, bound=float(getattr(metric, "lipschitz", 1.0)), seed=seed, **kwargs)
