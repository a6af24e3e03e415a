"""Why a float64 certificate cannot cost <= 1.5x a float32 evaluation on CPU (issue 19).

The proven certificate recomputes the embeddings in float64. Its cost floor is the speed of a float64
3x3 convolution relative to the float32 one torch uses for the natural evaluation (oneDNN, channels-last).
This times, on the shapes of a LipSim model's SLL convolutions (``--metric``, default the shipped
``lipsim-default``: each layer's convolution channels -> inner and its adjoint inner -> channels, at the size
the layer sees), batch 3 (one 2AFC triplet):

- torch float32 conv2d (channels-last: what the natural evaluation runs),
- torch float64 conv2d (no oneDNN kernel: im2col + dgemm),
- two hand-written float64 formulations that avoid its copies: one im2col GEMM over the channels-last
  tensor, and nine shifted GEMMs accumulated in place,
- the raw GEMM rate in float32 and float64 (the hardware ceiling: a float64 FMA does half the work).

    python benchmarks/bench_float64_conv.py            # prints ms and the ratio to float32 per shape
    python benchmarks/bench_float64_conv.py --metric lipsim-effnet
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from timing import median_of


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls after one warm-up."""
    return 1e3 * median_of(fn, repeats)


def conv_im2col_nhwc(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Same-padded 3x3 convolution of an NHWC tensor as one GEMM over a strided im2col view."""
    n, h, wd, c = x.shape
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    sn, sh, sw, sc = xp.stride()
    cols = xp.as_strided((n, h, wd, 3, 3, c), (sn, sh, sw, sh, sw, sc)).reshape(n * h * wd, 9 * c)
    return (cols @ w.permute(0, 2, 3, 1).reshape(w.shape[0], 9 * c).t()).view(n, h, wd, -1)


def conv_shifted_gemms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Same-padded 3x3 convolution of an NHWC tensor as nine shifted GEMMs accumulated in place."""
    n, h, wd, c = x.shape
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    out = None
    for i in range(3):
        for j in range(3):
            part = xp[:, i:i + h, j:j + wd, :].reshape(n * h * wd, c) @ w[:, :, i, j].t()
            out = part if out is None else out.add_(part)
    return out.view(n, h, wd, -1)


def gemm_gflops(dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(576, 576, dtype=dtype)
    b = torch.randn(576, 3072, dtype=dtype)
    return 2 * 576 * 576 * 3072 / timed(lambda: a @ b, repeats) / 1e6


def conv_shapes(metric_name: str) -> List[Tuple[int, int, int]]:
    """(in channels, out channels, side) of every distinct 3x3 SLL convolution (and its adjoint) of a LipSim
    model, in the order the network runs them, from one traced forward pass at its input size."""
    import robustsim
    from robustsim.lipschitz.sll import SLLConv2d

    net = robustsim.load(metric_name).encoder
    size = net.config.input_size
    with torch.no_grad():
        _, trace = net.traced_forward(torch.zeros(1, 3, size, size))
    shapes: List[Tuple[int, int, int]] = []
    for m, _, shape in trace:
        if isinstance(m, SLLConv2d):
            for s in ((m.channels, m.inner, shape[-1]), (m.inner, m.channels, shape[-1])):
                if s not in shapes:
                    shapes.append(s)
    if not shapes:
        raise SystemExit(f"{metric_name} has no SLL convolutions")
    return shapes


def run(shapes: Sequence[Tuple[int, int, int]], repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call, ratio to float32")
    print(f"GEMM 576x576x3072: float32 {gemm_gflops(torch.float32, repeats):.0f} GFLOP/s, "
          f"float64 {gemm_gflops(torch.float64, repeats):.0f} GFLOP/s")
    print("| channels in → out × size | float32 (oneDNN, NHWC) | float64 conv2d | float64 im2col GEMM | float64 9 shifted GEMMs |")
    print("|---|---:|---:|---:|---:|")
    total32 = total64 = 0.0
    for c, co, s in shapes:
        torch.manual_seed(0)
        x = torch.randn(3, c, s, s)
        w = torch.randn(co, c, 3, 3) * 0.05
        x64, w64 = x.double(), w.double()
        nhwc64 = x64.permute(0, 2, 3, 1).contiguous()
        want = F.conv2d(x64, w64, padding=1)
        for f in (conv_im2col_nhwc, conv_shifted_gemms):  # the formulations compute the same convolution
            torch.testing.assert_close(f(nhwc64, w64).permute(0, 3, 1, 2), want, rtol=1e-12, atol=1e-12)
        cl = x.contiguous(memory_format=torch.channels_last)
        t32 = timed(lambda: F.conv2d(cl, w, padding=1), repeats)
        cells = [timed(lambda: F.conv2d(x64, w64, padding=1), repeats),
                 timed(lambda: conv_im2col_nhwc(nhwc64, w64), repeats),
                 timed(lambda: conv_shifted_gemms(nhwc64, w64), repeats)]
        total32, total64 = total32 + t32, total64 + min(cells)
        print(f"| {c} → {co} × {s}² | {t32:.2f} | " + " | ".join(f"{t:.2f} ({t / t32:.1f}×)" for t in cells) + " |")
    print(f"fastest float64 formulation of each shape, all shapes together: {total64 / total32:.1f}× float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--metric", default="lipsim-default", help="LipSim model whose convolution shapes to time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(conv_shapes(args.metric), args.repeats)


if __name__ == "__main__":
    main()
