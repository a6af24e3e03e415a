"""Adapters that let robustsim metrics plug into other libraries' ways of working.

* :mod:`robustsim.adapters.torchmetrics`: any robustsim metric as a ``torchmetrics.Metric``
  (``update`` / ``compute`` / ``reset``, synchronised across DDP processes), including a drop-in
  ``LearnedPerceptualImagePatchSimilarity`` with torchmetrics' own signature. Needs ``torchmetrics``.

Each adapter imports its library when it is imported itself, never at ``import robustsim``.
"""
