"""Metric implementations; all follow :class:`robustsim.metrics.base.Metric`."""
from .base import Metric
from .embedding import EmbeddingMetric

__all__ = ["Metric", "EmbeddingMetric"]
