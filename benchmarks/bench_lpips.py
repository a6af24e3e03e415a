"""LPIPS-AlexNet throughput: robustsim vs the reference ``lpips`` package, same weights, same run.

Both models hold identical weights (the reference's real v0.1 lin heads and a seeded random trunk,
copied into ours; no ImageNet trunk is needed for timing). For each image size and mode the two are
timed alternately, ``--reps`` times, and the medians compared. Forward runs under ``torch.no_grad()``;
forward+backward takes the gradient of the summed distances w.r.t. both inputs.

    python benchmarks/bench_lpips.py [--batch 16] [--sizes 64 224] [--reps 7] [--threads N]
"""
from __future__ import annotations

import argparse
import warnings

import torch

from timing import interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    warnings.filterwarnings("ignore")
    import lpips

    import robustsim
    from robustsim.metrics.lpips import load_into, from_reference_state

    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    ours = robustsim.load("lpips-alex", pretrained_trunk=False)
    load_into(ours, from_reference_state(ours, ref.state_dict(), "reference", need_trunk=True, need_lin=True))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.reps}")
    print("| size | mode | robustsim pairs/s | lpips pairs/s | ratio |")
    print("|---|---|---|---|---|")
    for s in args.sizes:
        g = torch.Generator().manual_seed(s)
        x = torch.rand(args.batch, 3, s, s, generator=g)
        y = torch.rand(args.batch, 3, s, s, generator=g)
        with torch.no_grad():
            err = (ours(x, y) - ref(x, y, normalize=True).view(-1)).abs().max().item()
        assert err <= 1e-5, f"models disagree ({err})"

        def fwd_ours():
            with torch.no_grad():
                ours(x, y)

        def fwd_ref():
            with torch.no_grad():
                ref(x, y, normalize=True)

        def bwd_ours():
            a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            torch.autograd.grad(ours(a, b).sum(), (a, b))

        def bwd_ref():
            a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            torch.autograd.grad(ref(a, b, normalize=True).sum(), (a, b))

        for mode, fo, fr in (("forward", fwd_ours, fwd_ref), ("forward+backward", bwd_ours, bwd_ref)):
            mo, mr = interleaved(fo, fr, args.reps)
            print(f"| {s}×{s} | {mode} | {args.batch / mo:.1f} | {args.batch / mr:.1f} | {mr / mo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
