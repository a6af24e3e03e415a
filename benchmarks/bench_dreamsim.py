"""CPU throughput of DreamSim (ensemble and single branches) against LipSim at 224×224.

Random weights (speed does not depend on their values): the DreamSim ensemble (3 × ViT-B/16),
single branches, and ``lipsim-default`` when it is registered and loadable, otherwise an official
LipSim-small architecture with random weights (said in the output). Prints pairs/s and ratios,
for distances (no_grad) and, with ``--grad``, distance + gradient w.r.t. both inputs (attack cost).

    python benchmarks/bench_dreamsim.py [--pairs 4] [--iters 3] [--threads 1] [--grad]
"""
from __future__ import annotations

import argparse
import time

import torch


def pairs_per_second(metric, n_pairs: int, iters: int, grad: bool, seed: int = 0):
    """(pairs per wall-clock second, pairs per CPU-second of this process), medians over iters.

    On a shared, oversubscribed machine the wall clock mostly measures the other processes;
    CPU time of this process (with --threads 1) is the load-independent cost.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_pairs, 3, 224, 224, generator=g)
    y = torch.rand(n_pairs, 3, 224, 224, generator=g)

    def step():
        if grad:
            xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            metric(xa, ya).sum().backward()
        else:
            with torch.no_grad():
                metric(x, y)

    step()  # warm-up
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return n_pairs / sorted(wall)[len(wall) // 2], n_pairs / sorted(cpu)[len(cpu) // 2]


def lipsim_model():
    import robustsim

    if "lipsim-default" in robustsim.list_models():
        try:
            return robustsim.load("lipsim-default"), "lipsim-default"
        except Exception as e:  # weights not present yet
            print(f"# lipsim-default not loadable ({e}); using a random LipSim-small")
    from robustsim.metrics.lipsim import OFFICIAL, LipSim

    return LipSim(config=OFFICIAL["small"]).eval(), "LipSim-small (random weights; lipsim-default not available)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4, help="pairs per batch")
    ap.add_argument("--iters", type=int, default=3, help="timed batches (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--grad", action="store_true", help="also time distance + input gradients")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from robustsim.metrics.dreamsim import DreamSim

    models = [
        ("dreamsim-ensemble (dino_vitb16+clip_vitb16+open_clip_vitb16)", DreamSim().eval()),
        ("single branch dino_vitb16", DreamSim(["dino_vitb16"]).eval()),
        ("single branch clip_vitb32", DreamSim(["clip_vitb32"]).eval()),
    ]
    lip, lip_name = lipsim_model()
    models.append((lip_name, lip))
    for _, m in models:
        m.requires_grad_(False)
    modes = [False, True] if args.grad else [False]
    print(f"# CPU ({__import__('platform').processor() or 'cpu'}), torch {torch.__version__}, {torch.get_num_threads()} threads, {args.pairs} pairs/batch, 224×224")
    results = {}
    for grad in modes:
        label = "distance+grad" if grad else "distance"
        for name, m in models:
            wall, cpu = pairs_per_second(m, args.pairs, args.iters, grad)
            results[(name, grad)] = cpu
            print(f"{label:14s} {name:62s} {wall:8.3f} pairs/s wall  {cpu:8.3f} pairs/CPU-s", flush=True)
        ens = results[(models[0][0], grad)]
        for name, _ in models[1:]:
            print(f"{label:14s} ratio (CPU time) ensemble / {name}: {ens / results[(name, grad)]:.3f}", flush=True)


if __name__ == "__main__":
    main()
