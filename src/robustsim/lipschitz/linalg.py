"""Small dense linear algebra for Lipschitz bounds, run on one thread.

The matrices here are small (a 384×384 Gram matrix, 1156 kernel symbols of 32×48, a 128×512 resize
matrix). torch's LAPACK calls on them take milliseconds on one thread but seconds with two threads on a
busy machine (measured here: eigvalsh of a 384×384 matrix 0.02 s on one thread, 4.8 s on two at load
10), because the worker threads spin-wait for cores that other processes hold.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["one_thread", "spectral_norm"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch calls on one intra-op thread; restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def spectral_norm(a: torch.Tensor) -> float:
    """Largest singular value of a matrix (or the largest over a batch of matrices), on one thread."""
    with one_thread():
        return float(torch.linalg.svdvals(a).max()) if a.numel() else 0.0
