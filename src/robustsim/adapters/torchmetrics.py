"""robustsim metrics as torchmetrics metrics: score generated images the torchmetrics way.

People who evaluate generators with torchmetrics accumulate a perceptual distance over batches with
``update(a, b)`` and read it with ``compute()``, across DDP processes. Two classes:

* :class:`PerceptualSimilarity` wraps *any* robustsim metric (a hub name, a saved ``.safetensors``
  file or a loaded :class:`robustsim.Metric`), inputs in [0, 1] by default;
* :class:`LearnedPerceptualImagePatchSimilarity` has exactly the signature of
  ``torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity`` (``net_type``, ``reduction``,
  ``normalize``, inputs in [-1, 1] unless ``normalize=True``), so switching is a one-line change of
  the import::

      # from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
      from robustsim.adapters.torchmetrics import LearnedPerceptualImagePatchSimilarity

  It computes the same LPIPS numbers on the same weights (robustsim's LPIPS matches the reference to
  1e-6) and works offline with robustsim's weight sources. Pass ``metric="lipsim-default"`` (or any
  robustsim name) to keep the torchmetrics interface but use a certified metric instead.

State and DDP: for ``reduction="mean"`` / ``"sum"`` the state is a float64 running sum and a count,
reduced with ``sum`` across processes (two numbers per process, whatever the dataset size); for
``"none"`` every distance is kept and concatenated across processes. As in torchmetrics, the value
of ``forward`` / ``update`` stays differentiable, so the metric can also serve as a loss.

The wrapped network is kept in eval mode even when a surrounding model calls ``.train()`` (LPIPS
heads have dropout, which must not change the scores), and its parameters are frozen.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import InputError

try:
    from torchmetrics import Metric as _TorchmetricsMetric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as e:  # pragma: no cover - exercised only without torchmetrics
    raise ImportError(
        "robustsim.adapters.torchmetrics needs torchmetrics: pip install torchmetrics "
        "(or pip install 'robustsim[torchmetrics]')"
    ) from e

__all__ = ["PerceptualSimilarity", "LearnedPerceptualImagePatchSimilarity"]

_REDUCTIONS = ("mean", "sum", "none", None)


def _resolve(metric: Union[str, "nn.Module"], **load_options: Any) -> nn.Module:
    """A hub name (any case), a saved file, or an already loaded metric -> a metric module."""
    if isinstance(metric, nn.Module):
        if load_options:
            raise InputError("load options apply to a metric name or file, not to an already loaded metric")
        return metric
    if not isinstance(metric, (str, bytes)) and not hasattr(metric, "__fspath__"):
        raise InputError(f"metric must be a robustsim name, a saved .safetensors path or a metric module, got {type(metric).__name__}")
    from .. import hub
    from ..hub import canonical_ref as metric_name

    return hub.load(metric_name(metric), **load_options)


class PerceptualSimilarity(_TorchmetricsMetric):
    """Mean (or sum, or every value) of a robustsim distance over all ``update(a, b)`` calls.

    Args:
        metric: a robustsim hub name (default ``"lipsim-default"``, the shipped certified metric), a
            ``.safetensors`` file saved by robustsim, or a loaded robustsim metric.
        reduction: ``"mean"`` (default), ``"sum"``, or ``"none"`` / None for the vector of all distances.
        normalize: True (default): inputs are images in [0, 1], robustsim's convention. False: inputs
            are in [-1, 1] (torchmetrics' LPIPS default) and are mapped to [0, 1] first.
        load_options: passed to :func:`robustsim.load` (e.g. ``weights=PATH``, ``device=...``).
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Inputs are N×3×H×W batches; anything outside the expected range, NaN, or of the wrong shape is
    a :class:`robustsim.InputError` (a ``ValueError``, as in torchmetrics) naming the problem.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, metric: Union[str, nn.Module] = "lipsim-default", reduction: Optional[str] = "mean",
                 normalize: bool = True, load_options: Optional[dict] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction not in _REDUCTIONS:
            raise InputError(f"reduction must be one of 'mean', 'sum', 'none', got {reduction!r}")
        if not isinstance(normalize, bool):
            raise InputError(f"normalize must be a bool, got {normalize!r}")
        self.net = _resolve(metric, **(load_options or {}))
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.reduction = reduction
        self.normalize = normalize
        if reduction in ("mean", "sum"):
            self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("scores", default=[], dist_reduce_fx="cat")

    def train(self, mode: bool = True) -> "PerceptualSimilarity":
        """Switch the wrapper's mode; the wrapped network always stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def _to_unit(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor N×3×H×W, got {type(x).__name__}")
        if self.normalize:
            return x
        if x.is_floating_point() and x.numel() and bool(torch.isfinite(x).all()):
            lo, hi = float(x.min()), float(x.max())
            if lo < -1 - 1e-6 or hi > 1 + 1e-6:
                raise InputError(f"{name}: with normalize=False images must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}] "
                                 "(images in [0, 1]: pass normalize=True)")
        return (x + 1) / 2

    def update(self, img1: torch.Tensor, img2: torch.Tensor) -> None:
        """Score a batch pair (1-vs-N broadcast allowed) and add the distances to the state."""
        d = self.net(self._to_unit(img1, "img1"), self._to_unit(img2, "img2")).reshape(-1)
        if self.reduction in ("mean", "sum"):
            self.score_sum = self.score_sum + d.to(torch.float64).sum()
            self.count = self.count + d.numel()
        else:
            self.scores.append(d)

    def compute(self) -> torch.Tensor:
        """The reduced distance over everything seen since the last ``reset`` (on every process, after sync)."""
        if self.reduction in ("mean", "sum"):
            if int(self.count) == 0:
                raise InputError("compute() before any update(): no images were scored")
            total = self.score_sum.to(torch.float32)
            return total / int(self.count) if self.reduction == "mean" else total
        if isinstance(self.scores, list) and not self.scores:  # after a DDP sync the state is one tensor
            raise InputError("compute() before any update(): no images were scored")
        return dim_zero_cat(self.scores)


class LearnedPerceptualImagePatchSimilarity(PerceptualSimilarity):
    """Drop-in for ``torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity``, backed by robustsim.

    Same arguments and behaviour: ``net_type`` in ``"alex" | "vgg" | "squeeze"`` selects
    ``lpips-<net_type>``, inputs are in [-1, 1] unless ``normalize=True``, ``reduction`` is
    ``"mean"`` (default), ``"sum"`` or ``"none"``. ``metric=`` replaces the LPIPS network by any robustsim
    metric (e.g. ``"rlpips-linf-x0"`` or ``"lipsim-default"``) with nothing else changed.
    """

    def __init__(self, net_type: str = "alex", reduction: Optional[str] = "mean", normalize: bool = False,
                 metric: Union[str, nn.Module, None] = None, load_options: Optional[dict] = None, **kwargs: Any) -> None:
        if net_type not in ("alex", "vgg", "squeeze"):
            raise InputError(f"net_type must be one of 'alex', 'vgg', 'squeeze', got {net_type!r}")
        super().__init__(metric=metric if metric is not None else f"lpips-{net_type}", reduction=reduction,
                         normalize=normalize, load_options=load_options, **kwargs)
        self.net_type = net_type
