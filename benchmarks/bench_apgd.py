"""Time per triplet of APGD-CE (100 iterations) on LPIPS-AlexNet 2AFC decisions, ours vs pyautoattack.

pyautoattack attacks an equivalent 2-logit model, ref -> (-d(ref, x0), -d(ref, x1)) with x0/x1 fixed
for the batch (valid here because with labels = clean decisions its single run never slices the batch).
Ours runs twice: as shipped (flipped triplets leave the batch) and with early_stop=False (every triplet
for all iterations, the same work as the reference). Same process, same inputs, same budget.

    python benchmarks/bench_apgd.py [--n 8] [--size 64] [--eps 0.5] [--steps 100] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="triplets")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--eps", type=float, default=0.5, help="l2 budget on the reference")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import robustsim
    from robustsim import attacks
    from pyautoattack.autopgd_base import APGDAttack

    metric = robustsim.load("lpips-alex", pretrained_trunk=False)
    for p in metric.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(a.n, 3, a.size, a.size, generator=g)
    ref = torch.nn.functional.avg_pool2d(ref, 5, 1, 2, count_include_pad=False)  # smoother than noise
    x0 = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    x1 = (ref + 0.08 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        label = (metric(ref, x1) < metric(ref, x0)).long()

    class TwoLogit(torch.nn.Module):
        def forward(self, r):
            return torch.stack([-metric(r, x0), -metric(r, x1)], 1)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    t_ref, adv_ref = timed(lambda: APGDAttack(TwoLogit(), n_iter=a.steps, norm="L2", eps=a.eps, seed=0,
                                              device="cpu").perturb(ref, label))
    t_full, res_full = timed(lambda: attacks.run_2afc(metric, ref, x0, x1, label, eps=a.eps, steps=a.steps,
                                                      early_stop=False))
    t_ours, res = timed(lambda: attacks.run_2afc(metric, ref, x0, x1, label, eps=a.eps, steps=a.steps))
    with torch.no_grad():
        flip_ref = float((TwoLogit()(adv_ref).argmax(1) != label).float().mean())
    print(f"{a.n} triplets, {a.size}x{a.size}, l2 eps {a.eps}, APGD-CE {a.steps} it, {a.threads} thread(s)")
    print(f"{'':28s}{'s/triplet':>10s}{'flip rate':>11s}{'ratio':>8s}")
    print(f"{'pyautoattack (2-logit model)':28s}{t_ref / a.n:10.3f}{flip_ref:11.2f}{1.0:8.2f}")
    print(f"{'ours, early_stop=False':28s}{t_full / a.n:10.3f}{float(res_full.flipped.float().mean()):11.2f}"
          f"{t_full / t_ref:8.2f}")
    print(f"{'ours (default)':28s}{t_ours / a.n:10.3f}{float(res.flipped.float().mean()):11.2f}{t_ours / t_ref:8.2f}")


if __name__ == "__main__":
    main()
