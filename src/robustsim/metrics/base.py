"""The Metric protocol: every distance in robustsim is an nn.Module with the same contract.

``metric(x, y) -> (N,)`` on N×3×H×W float images in [0, 1] (1-vs-N broadcast allowed), gradients
flowing to both inputs. Subclasses implement :meth:`distance` (and :meth:`embed_checked` when they
have an embedding) on inputs that were already validated here, so every metric rejects bad input
the same way.

Input dtypes: any floating tensor is accepted (float16, bfloat16, float32, float64) and computed in
the *model's* dtype (the dtype of its floating parameters, float32 for parameter-free metrics): a
float64 image batch fed to a float32 model is rounded to float32 first (relative change <= 2^-24 per
pixel), a float16 batch is widened exactly. Integer tensors are refused (``robustsim.images.check_images``
names the dtype and says to divide uint8 by 255). The cast is differentiable, so attacks on float64
inputs still get gradients.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from ..errors import InputError
from ..images import check_images


def broadcast_pair(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Expand a batch of one against a batch of N; any other mismatch is an error."""
    nx, ny = x.shape[0], y.shape[0]
    if nx == ny:
        return x, y
    if nx == 1:
        return x.expand(ny, *x.shape[1:]), y
    if ny == 1:
        return x, y.expand(nx, *y.shape[1:])
    raise InputError(f"batch sizes differ: {nx} vs {ny} (only 1-vs-N broadcasting is allowed)")


class Metric(nn.Module):
    """Base class of all perceptual metrics.

    Attributes:
        certified: True only when the metric is built from 1-Lipschitz parts and supports certificates.
        input_size: native (H, W) resolution, or None when the metric accepts any size.
        min_size: smallest image side the metric accepts.
        name: the hub name it was loaded under (set by :func:`robustsim.load`).
    """

    certified: bool = False
    input_size: Optional[Tuple[int, int]] = None
    min_size: int = 1
    name: str = ""

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the metric computes in: that of its first floating parameter or buffer (float32 if none)."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        """Where the metric computes: the device of its first parameter or buffer (cpu if it has none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate an image batch (``check_images``) and cast it to :attr:`compute_dtype` (module docstring)."""
        x = check_images(x, name, min_size=self.min_size)
        dt = self.compute_dtype
        return x if x.dtype == dt else x.to(dt)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x, "x")
        y = self.check_input(y, "y")
        if x.shape[-2:] != y.shape[-2:] and self.input_size is None:
            raise InputError(
                f"image sizes differ: {tuple(x.shape[-2:])} vs {tuple(y.shape[-2:])}; "
                f"{type(self).__name__} compares images of the same size"
            )
        x, y = broadcast_pair(x, y)
        return self.distance(x, y)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Distances (N,) between validated, equally sized batches."""
        raise NotImplementedError

    @property
    def has_embedding(self) -> bool:
        return type(self).embed_checked is not Metric.embed_checked

    def preprocess(self, images: Any, size: Any = None, **kwargs: Any) -> torch.Tensor:
        """What users hold (paths, PIL images, numpy arrays, tensors, mixed sizes) -> this metric's N×3×H×W batch.

        See :func:`robustsim.images.preprocess_for`: the metric's minimum size, device and dtype; mixed sizes
        are resized to its native size (or ``size``).
        """
        from ..images import preprocess_for

        return preprocess_for(self, images, size=size, **kwargs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (N, D) of images in [0, 1]; only for metrics that have one."""
        if not self.has_embedding:
            raise InputError(f"{self.name or type(self).__name__} has no embedding (it is not a cosine/embedding metric)")
        return self.embed_checked(self.check_input(x, "x"))

    def embed_checked(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this metric (saved in safetensors metadata)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved by robustsim.save")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, certified={self.certified}, input_size={self.input_size}"
