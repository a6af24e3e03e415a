"""A fixed-size embedding whose squared distances approximate LPIPS: a distillation teacher.

LPIPS is not a cosine of one vector: it compares channel-normalised feature maps position by position,
d(x, y) = sum_k mean_hw sum_c w_kc (u_kc(x) - u_kc(y))^2. Written as one long vector
T(x) = concat_k( sqrt(w_k / (h_k w_k)) ⊙ u_k(x) ), that is exactly d(x, y) = ||T(x) - T(y)||^2, but T
has ~150 000 coordinates at 128×128 (AlexNet), far more than a LipSim student can output.

A *count sketch* S (every coordinate j of T goes to one of D buckets b(j) with a random sign s(j))
keeps squared distances on average: E||S v||^2 = ||v||^2, with relative spread about sqrt(2 / D) for a
spread-out difference v (3% at D = 2048). So ``features(x) = S T(x)`` is a D-dimensional embedding
with ||S T(x) - S T(y)||^2 ≈ LPIPS(x, y), and its cosine distance orders pairs the way LPIPS does
wherever ||T|| varies little (each position of u has unit norm, so ||T(x)||^2 moves only with how the
head weights meet the feature directions). This is the geometry a cosine student can imitate, which the
pooled global features of an ImageNet classifier are not.

The sketch is fixed by a seed and by the feature-map sizes (computed once per input size).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import hub
from ..errors import InputError
from .embedding import EmbeddingMetric


class LPIPSSketchEncoder(nn.Module):
    """Images in [0, 1] -> the D-dimensional count sketch of LPIPS's weighted unit feature maps."""

    def __init__(self, lpips_metric: nn.Module, dim: int = 2048, seed: int = 0):
        super().__init__()
        if dim < 1:
            raise InputError(f"sketch dimension must be >= 1, got {dim}")
        if not getattr(lpips_metric, "lpips", False):
            raise InputError("the sketch needs calibrated LPIPS heads (lpips=True)")
        self.lpips_metric = lpips_metric.eval().requires_grad_(False)
        self.dim = int(dim)
        self.seed = int(seed)
        self._plans: Dict[Tuple[int, ...], List[Tuple[torch.Tensor, torch.Tensor]]] = {}

    def _plan(self, shapes: List[Tuple[int, int, int]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per tap, the bucket index and the signed weight of every coordinate (drawn once per size)."""
        key = tuple(v for s in shapes for v in s)
        if key not in self._plans:
            g = torch.Generator().manual_seed(self.seed)
            plan = []
            for k, (c, h, w) in enumerate(shapes):
                n = c * h * w
                bucket = torch.randint(0, self.dim, (n,), generator=g)
                sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
                head = self.lpips_metric.lins[k].weight.detach().view(c, 1, 1).clamp_min(0).float()
                scale = (head / (h * w)).sqrt().expand(c, h, w).reshape(-1)
                plan.append((bucket, sign * scale))
            self._plans[key] = plan
        return self._plans[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.lpips_metric.unit_features(x)
        plan = self._plan([tuple(t.shape[1:]) for t in taps])
        out = x.new_zeros(x.shape[0], self.dim)
        for t, (bucket, weight) in zip(taps, plan):
            out.index_add_(1, bucket.to(x.device), t.flatten(1) * weight.to(x.device, t.dtype))
        return out


class LPIPSSketch(EmbeddingMetric):
    """Cosine distance of the LPIPS count sketch (a teacher for LipSim students; not robust)."""

    def __init__(self, lpips_metric: nn.Module, dim: int = 2048, seed: int = 0, input_size: Optional[int] = 128):
        size = None if input_size is None else (int(input_size), int(input_size))
        super().__init__(LPIPSSketchEncoder(lpips_metric, dim, seed), input_size=size,
                         min_size=getattr(lpips_metric, "min_size", 1))
        self.sketch_dim = int(dim)
        self.sketch_seed = int(seed)
        self.net_name = getattr(lpips_metric, "net_name", "alex")

    def lpips_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """||S T(x) - S T(y)||^2: the sketch's estimate of LPIPS(x, y) at the native size."""
        f = self.features(torch.cat([x, y]))
        n = x.shape[0]
        return (f[:n] - f[n:]).pow(2).sum(1)

    def config(self) -> Dict[str, Any]:
        return {"net": self.net_name, "dim": self.sketch_dim, "seed": self.sketch_seed,
                "input_size": None if self.input_size is None else self.input_size[0]}


def build(spec: hub.ModelSpec, weights: Optional[str] = None, trunk_weights: Optional[str] = None,
          net: str = "alex", dim: int = 2048, seed: int = 0, input_size: Optional[int] = 128,
          **kwargs: Any) -> LPIPSSketch:
    """Hub builder: the real LPIPS metric of ``net`` wrapped in its sketch."""
    opts = {k: v for k, v in (("weights", weights), ("trunk_weights", trunk_weights)) if v is not None}
    base = hub.load(f"lpips-{net}", **opts, **kwargs)
    return LPIPSSketch(base, dim=dim, seed=seed, input_size=input_size)


def _spec(net: str) -> hub.ModelSpec:
    from .lpips import lin_weight_file, trunk_weight_file

    return hub.ModelSpec(
        name=f"lpips-{net}-sketch",
        builder="robustsim.metrics.lpips_sketch:build",
        description=f"cosine of a 2048-d count sketch of LPIPS-{net} features (distillation teacher; not robust)",
        kwargs={"net": net},
        weights={"lin": lin_weight_file(net, "0.1"), "trunk": trunk_weight_file(net)},
    )


MODELS = [_spec("alex"), _spec("vgg")]
