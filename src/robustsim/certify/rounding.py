r"""Floating-point bounds for certificates: a proven error bound for LipSim networks, a float64
fallback for other certified metrics, and the precision guard.

The argument (LipSim networks, ``bounded_features``)
----------------------------------------------------
Write the metric as g = φ_L ∘ … ∘ φ_1 ∘ R (R the resize, φ_l the layers: stem, SLL convolutions,
binomial blurs, sum pools, flatten, SLL dense layers, truncation). The reference is the *exact* network g*
whose SLL layers use a rescaling t* <= t computed in float64 with a proven margin (``sll.exact_parts``); the
SLL condition only gets easier when t shrinks, so every φ_l of g* is 1-Lipschitz in exact arithmetic.
Let ã_l be the computed activations and e_l = ||ã_l - φ_l(ã_{l-1})|| the local rounding error of
layer l at its computed input. Because each exact suffix φ_L ∘ … ∘ φ_{l+1} is 1-Lipschitz,

    ||ã_L - g*(x)|| <= Σ_l e_l          (later exact layers never amplify an earlier error).

Each e_l is bounded a priori by ``a_l·||ã_{l-1}|| + b_l`` (``float_error_terms`` of each layer): a sum
of n products computed in any order with unit roundoff u has error <= γ_n·Σ|terms| (γ_n = nu/(1-nu),
FMA or not), ||(|W| * |x|)|| <= N(|W|)·||x|| with N(|W|) a proven bound on the operator norm of the
convolution/matrix with entries |W| (Collatz–Wielandt on the offset-summed |W|), plus the deviation
ρ of the rounded scaled adjoint weight from -2 t* W, the bias (||b||·sqrt(positions)), relu (1-Lipschitz
elementwise), the residual addition and underflow. At run time only the norms ||ã_{l-1}|| are needed
(one reduction per layer), so the bound costs little more than the forward pass itself. The input
is resized in float64 and rounded once (error <= u·||ã_0||), so our E(x) = e_0 + Σ (a_l ||ã_{l-1}|| + b_l).

A certificate is about what *any* evaluator computes in this precision (an attacker's float32 forward
pass, the natural evaluation), not only about g*. The same per-layer bounds hold for every such
evaluation (any summation order); at a point y with ||y - x|| <= ε its activations are within
P·ε + E(x) + E'(y) of ours (P = ||R||: every prefix of g* is 1-Lipschitz after R), so with
S = Σ_l a_l < 1/2 and α_0 the evaluator's float32 resize factor,

    E'(y) <= (α_0·||x|| + Σ_l (a_l ||ã_{l-1}|| + b_l) + S·E(x) + (α_0 + S·P)·ε) / (1 - S).

Hence every evaluated g(y) lies within ``Kf·ε + err`` of our g̃(x), with
``err = E(x) + E'(x)|_{ε=0}`` and ``Kf = K + (α_0 + S·P)/(1 - S)``: exactly the
:class:`~robustsim.certify.geometry.BoundedFeatures` the geometry consumes. No calibration enters.

Which precision (``float_error``)
---------------------------------
The bound is worst-case: γ_n·||abs(W)||·||x|| for a length-3073 float32 dot product is ~1e-2 of ||x||
where the actual error is ~1e-7. On the shipped model the float32 bound is ≈ 5% of ||g|| for our own
pass and ≈ 10% once every float32 evaluation is covered (measured relative error 2.2e-7), which
leaves no certified triplet. So the **default** ("float64", :func:`_proven64`) recomputes the
features in float64 -- every layer with the float64 rescaling (relative error ρ_t from the exact t,
proven, part of the bound) -- and applies the same sum at u = 2^-53: ≈ 2.5e-8 of ||g|| on the shipped
model. That certifies the *exact* network (the function the weights define); a float32 evaluation
differs from it by its own rounding, which only the float32 mode ("float32", :func:`_proven32`:
the model's own pass, ``err`` and ``Kf`` as above, spot-checked) bounds, pessimistically.
The float64 pass costs several natural float32 passes on CPU (torch's float64 convolutions have no
oneDNN kernel); docs/BENCHMARKS.md has the numbers.

Assumptions, each enforced or checked: (1) IEEE round-to-nearest in the model's dtype (float32 or
float64) with ordinary dot-product kernels -- TF32, bf16/fp16 and autocast are switched off by
:func:`precision_guard`, cuDNN (which may pick Winograd/FFT algorithms) is disabled and NNPACK too,
half-precision models are refused; (2) torch's interpolation computes each coefficient with absolute
error <= 32u (a few operations on numbers <= 2), which only enters α_0 (the evaluator's resize);
(3) every layer is one whose rounding is stated (``float_error_terms``). A cheap a-posteriori spot
check recomputes one embedding with the exact network in float64 and refuses (:class:`PrecisionError`)
when our result is further from it than the proven bound -- how a reduced-precision kernel that
slipped past the flags (e.g. a patched convolution) is caught.

Other certified metrics (``float64`` fallback): features are recomputed with a float64 copy of the
metric; its own error is taken as REL_FACTOR·eps64 relative (an assumption, about 6e-14), and the
allowance for a float32 evaluator is 8× the measured float32/float64 gap (at least REL_FACTOR·eps32):
sound for the exact function up to that assumption, calibrated for the float32 evaluator.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Tuple, Union

import torch

from ..errors import InputError
from ..images import check_images
from ..lipschitz.linalg import spectral_norm
from ..lipschitz.sll import gamma
from .geometry import EPS64, F64, REL_FACTOR, BoundedFeatures

__all__ = ["PrecisionError", "precision_guard", "bounded_features", "supports_proof", "FloatError"]

FloatError = Union[None, float, str]


class PrecisionError(InputError):
    """The arithmetic cannot back a certificate: half precision, or an error beyond the proven bound."""


# ----------------------------------------------------------------------------------------------
# precision guard
_NEW_API = (("cuda", "matmul"), ("cudnn", "conv"), ("mkldnn", "conv"), ("mkldnn", "matmul"))


def _backend(path: Tuple[str, ...]):
    o: Any = torch.backends
    for p in path:
        o = getattr(o, p, None)
        if o is None:
            return None
    return o


def model_dtype(metric: Any) -> torch.dtype:
    dt = getattr(metric, "compute_dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    for t in metric.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@contextlib.contextmanager
def precision_guard(metric: Any) -> Iterator[torch.dtype]:
    """Run certificate arithmetic in plain IEEE float32/float64; restore every setting afterwards.

    Refuses half-precision models (float16/bfloat16: PrecisionError). Inside: TF32 off for matmul and
    convolutions (``fp32_precision = "ieee"`` where torch has that API, else ``allow_tf32 = False`` and
    matmul precision "highest"), oneDNN kept in IEEE float32, cuDNN and NNPACK disabled (their Winograd /
    FFT algorithms break the γ_n bounds), autocast disabled on every device, SLL layers in eval mode
    (their cached rescaling is what the bound measures). Yields the model's dtype.
    """
    dt = model_dtype(metric)
    if dt in (torch.float16, torch.bfloat16) or not dt.is_floating_point:
        raise PrecisionError(
            f"certificates need a float32 or float64 model, this one computes in {dt}; convert it with "
            "metric.float() (half precision has no useful proven rounding bound)"
        )
    if dt not in (torch.float32, torch.float64):
        raise PrecisionError(f"certificates need a float32 or float64 model, got {dt}")
    saved = []
    stack = contextlib.ExitStack()
    try:
        new_api = all(hasattr(_backend(p) or object(), "fp32_precision") for p in _NEW_API)
        if new_api:
            for p in _NEW_API:
                b = _backend(p)
                saved.append((b, "fp32_precision", b.fp32_precision))
                b.fp32_precision = "ieee"
        else:  # older torch
            saved.append((torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32))
            saved.append((torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32))
            prec = torch.get_float32_matmul_precision()
            stack.callback(torch.set_float32_matmul_precision, prec)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        saved.append((torch.backends.cudnn, "enabled", torch.backends.cudnn.enabled))
        torch.backends.cudnn.enabled = False
        stack.enter_context(torch.backends.nnpack.flags(enabled=False))
        for dev in ("cpu", "cuda"):
            if dev == "cpu" or torch.cuda.is_available():
                stack.enter_context(torch.autocast(dev, enabled=False))
        modes = [(m, m.training) for m in metric.modules() if hasattr(m, "exact_parts")]
        for m, _ in modes:
            m.train(False)
        stack.callback(lambda: [m.train(t) for m, t in modes])
        yield dt
    finally:
        stack.close()
        for obj, attr, val in reversed(saved):
            setattr(obj, attr, val)


# ----------------------------------------------------------------------------------------------
def supports_proof(metric: Any) -> bool:
    """True when the proven bound applies: an EmbeddingMetric whose encoder is a traced, fully stated
    Lipschitz network (LipSim), no normalisation or centring, features not overridden."""
    from ..metrics.embedding import EmbeddingMetric

    net = getattr(metric, "encoder", None)
    if not isinstance(metric, EmbeddingMetric) or net is None:
        return False
    if not (hasattr(net, "traced_forward") and hasattr(net, "exact_forward64") and hasattr(net, "layers")):
        return False
    if getattr(metric, "mean", None) is not None or getattr(metric, "center", False):
        return False
    if type(metric).features is not EmbeddingMetric.features or \
            type(metric).raw_features_checked is not EmbeddingMetric.raw_features_checked:
        return False
    return all(hasattr(m, "float_error_terms") for _, m in net.layers())


def _parse(float_error: FloatError) -> Tuple[str, float]:
    if float_error is None or float_error in ("float64", "proven", "measure"):
        return "float64", 0.0
    if isinstance(float_error, str):
        if float_error == "float32":
            return "float32", 0.0
        raise InputError(f"float_error must be None/'float64', 'float32' or a number, got {float_error!r}")
    try:
        r = float(float_error)
    except (TypeError, ValueError):
        raise InputError(f"float_error must be None/'float64', 'float32' or a number, got {float_error!r}") from None
    if not (r >= 0 and math.isfinite(r)):
        raise InputError(f"float_error must be a finite number >= 0, got {r}")
    return "declared", r


def _resize_terms(resize: Any, in_size: Tuple[int, int]) -> Tuple[float, float, int]:
    """(||abs(R)||, ||pattern(R)||, taps per output) of a separable resize, from its 1-D float64 matrices."""
    from ..preprocess import resize_matrix

    out = []
    for n_in, n_out in zip(in_size, resize.size):
        a = resize_matrix(int(n_in), int(n_out), resize.mode, resize.antialias)
        pat = (a != 0).to(F64)
        out.append((spectral_norm(a.abs()), spectral_norm(pat),
                    int(pat.sum(1).max().item())))
    (ah, ph, th), (aw, pw, tw) = out
    return ah * aw * (1 + 1e-9), ph * pw * (1 + 1e-9), th * tw


def _lipschitz(metric: Any, in_size) -> Tuple[float, float]:
    P = float(metric.resize.norm(tuple(in_size)))
    return float(metric.lipschitz) * P, P


def _sum_terms(trace, dtype: torch.dtype, weights: str):
    """(Σ_l a_l ||ã_{l-1}|| + b_l per sample, Σ_l a_l) over a traced forward pass."""
    e = None
    S = 0.0
    for m, norm, shape in trace:
        a, b = (m.float_error_terms(shape, dtype, weights) if weights == "exact64" and hasattr(m, "exact_parts")
                else m.float_error_terms(shape, dtype))
        term = a * norm.to(F64).cpu() + b
        e = term if e is None else e + term
        S += a
    return e, S


def _proven64(metric: Any, x: torch.Tensor) -> BoundedFeatures:
    """Float64 recomputation with a proven bound (u = 2^-53): certificates for the exact network."""
    net = metric.encoder
    in_size = tuple(x.shape[-2:])
    K, _ = _lipschitz(metric, in_size)
    x64 = x.detach().to(F64)
    xnorm = torch.linalg.vector_norm(x64, dim=(1, 2, 3)).cpu()
    resize = metric.resize
    if resize.size is None or in_size == resize.size:
        a0, e0 = x64, torch.zeros_like(xnorm)
    else:
        a0 = resize(x64)
        absR, _, taps = _resize_terms(resize, in_size)
        e0 = gamma(taps + 8, EPS64 / 2) * absR * xnorm
    with torch.no_grad():
        out, trace = net.traced_forward(a0, exact64=True)
    e_layers, S = _sum_terms(trace, F64, "exact64")
    g64 = out.flatten(1).detach().to(F64).cpu()
    err = e0 + e_layers + 16.0 * g64.shape[1] * EPS64 * g64.norm(dim=1)  # + our own float64 geometry
    return BoundedFeatures(g64, err, K, K, model_dtype(metric), "float64")


def _proven32(metric: Any, x: torch.Tensor, dt: torch.dtype, spot_check: bool) -> BoundedFeatures:
    """The model's own forward pass with a proven bound covering every evaluation in its dtype."""
    net = metric.encoder
    u = torch.finfo(dt).eps / 2
    in_size = tuple(x.shape[-2:])
    K, P = _lipschitz(metric, in_size)
    x64 = x.detach().to(F64)
    xnorm = torch.linalg.vector_norm(x64, dim=(1, 2, 3)).cpu()
    resize = metric.resize
    if resize.size is None or in_size == resize.size:
        a0_64 = x64
        a0 = x.detach().to(dt)
        alpha0 = u  # an evaluator may round a float64 input once
        exact_cast = x.dtype == dt or (x.dtype in (torch.float16, torch.bfloat16) and dt == torch.float32)
        e0 = torch.zeros_like(xnorm) if exact_cast else u * xnorm
    else:
        a0_64 = resize(x64)
        a0 = a0_64.to(dt)
        absR, absP, taps = _resize_terms(resize, in_size)
        alpha0 = gamma(taps + 2, u) * absR + 64 * u * absP + u * absR
        e0 = u * torch.linalg.vector_norm(a0_64, dim=(1, 2, 3)).cpu() + gamma(taps + 8, EPS64 / 2) * absR * xnorm
    for m in net.modules():  # refresh stale state (e.g. a `.data` edit) before the pass that the bound measures
        if hasattr(m, "exact_parts"):
            m.exact_parts()
    with torch.no_grad():
        out, trace = net.traced_forward(a0)
    e_layers, S = _sum_terms(trace, dt, "forward")
    if not S < 0.5:
        raise PrecisionError(f"the proven rounding bound of this network is too weak to certify in {dt} "
                             f"(sum of per-layer factors {S:.3g} >= 0.5); use float_error='float64'")
    e_ours = e0 + e_layers
    e_eval = alpha0 * xnorm + e_layers + S * e_ours
    err = e_ours + e_eval / (1 - S)
    Kf = K + (alpha0 + S * P) / (1 - S)
    g64 = out.flatten(1).detach().to(F64).cpu()
    err = err + 16.0 * g64.shape[1] * EPS64 * g64.norm(dim=1)
    if spot_check and dt == torch.float32:
        with torch.no_grad():
            ref = net.traced_forward(a0_64[:1], exact64=True)[0].flatten(1).cpu()
        # the float64 recomputation is itself within ~2^-29 of this bound's float32 counterpart
        dev = float((g64[0] - ref[0]).norm())
        if not dev <= float(e_ours[0]) * (1 + 1e-6) + 1e-30:
            raise PrecisionError(
                f"floating-point error {dev:.3g} exceeds the proven bound {float(e_ours[0]):.3g}: reduced-precision "
                "arithmetic is active (TF32 / fp16 / bf16 or a Winograd/FFT convolution); no certificate issued"
            )
    return BoundedFeatures(g64, err, K, Kf, dt, "float32")


def _float64(metric: Any, x: torch.Tensor, dt: torch.dtype) -> BoundedFeatures:
    K, _ = _lipschitz(metric, tuple(x.shape[-2:]))
    with torch.no_grad():
        g = metric.raw_features_checked(x.to(dt)).flatten(1)
        if dt == F64:
            g64, gap = g, torch.zeros(g.shape[0], dtype=F64)
        else:
            m64 = copy.deepcopy(metric).to(F64)
            g64 = m64.raw_features_checked(x.to(F64)).flatten(1)
            gap = (g.to(F64) - g64).norm(dim=1).cpu()
    g64 = g64.detach().to(F64).cpu()
    G = g64.norm(dim=1).clamp_min(1e-300)
    r = float(torch.clamp(8 * gap / G, min=REL_FACTOR * float(torch.finfo(dt).eps)).max())
    bf = BoundedFeatures.declared(g64, K, r)
    bf.err = bf.err + REL_FACTOR * EPS64 * G  # the float64 network's own error (assumed)
    bf.dtype, bf.method = dt, "float64"
    return bf


def bounded_features(metric: Any, x: torch.Tensor, name: str = "x", float_error: FloatError = None,
                     spot_check: bool = True) -> BoundedFeatures:
    """Raw features of an image batch with a float allowance, under :func:`precision_guard`.

    float_error: None / "float64" (default): LipSim networks are recomputed in float64 with the proven
    bound (u = 2^-53), other certified metrics with a float64 copy (documented allowance); "float32":
    the model's own forward pass with the proven bound that covers every float evaluation in its dtype
    (cheap, pessimistic), LipSim networks only; a number r: a relative feature error the caller
    vouches for, added to the default features' allowance (r = 0: the default, i.e. exact arithmetic
    up to the proven float64 error).
    """
    check_metric(metric)
    x = check_images(x, name, min_size=getattr(metric, "min_size", 1))
    mode, r = _parse(float_error)
    with precision_guard(metric) as dt:
        if mode == "declared":  # the caller's allowance on top of the default features (and their proven error)
            if supports_proof(metric):
                bf = _proven64(metric, x)
                if r > 0:  # (the float64 geometry floor is already in the proven allowance)
                    bf.err, bf.eval_lipschitz = bf.err + 3 * r * bf.G, bf.lipschitz * (1 + r)
            else:
                with torch.no_grad():
                    g = metric.raw_features_checked(x.to(dt)).flatten(1)
                K, _ = _lipschitz(metric, tuple(x.shape[-2:]))
                bf = BoundedFeatures.declared(g, K, r)
            bf.dtype, bf.method = dt, "declared"
            return bf
        if supports_proof(metric):
            return _proven64(metric, x) if mode == "float64" else _proven32(metric, x, dt, spot_check)
        if mode == "float32":
            raise InputError(f"{type(metric).__name__} is not built from layers with stated rounding; "
                             "float_error='float32' needs a LipSim network (use the default float64 mode)")
        return _float64(metric, x, dt)


def check_metric(metric: Any) -> None:
    """InputError unless ``metric`` is certified and offers what certificates use."""
    if not getattr(metric, "certified", False):
        name = getattr(metric, "name", "") or type(metric).__name__
        raise InputError(f"{name} is not a certified (Lipschitz) metric; certificates need e.g. a LipSim model")
    for attr in ("raw_features_checked", "resize", "lipschitz"):
        if not hasattr(metric, attr):
            raise InputError(f"certified metric {type(metric).__name__} lacks `{attr}` (needs an EmbeddingMetric)")
    lip = float(metric.lipschitz)
    if not (lip > 0 and math.isfinite(lip)):
        raise InputError(f"metric.lipschitz must be a positive finite number, got {lip}")
