"""Certification cost per 2AFC triplet: Lipschitz certificate vs a randomized-smoothing certificate.

Our certificate (robustsim.certify.two_afc) costs one forward pass of the three images plus O(D)
arithmetic. A smoothing certificate of the same decision (center smoothing, Kumar & Goldstein 2021)
needs n Monte-Carlo forward passes of the noisy reference, with n = 10^4 - 10^6 in practice. We
time ours directly, time a real smoothing pass of n_run noisy samples (batched, the fastest way to
run it), and extrapolate linearly (the cost is n forward passes) to 10^4 and 10^5 samples.

    python benchmarks/bench_certify.py                     # CPU default LipSim config (128×128)
    python benchmarks/bench_certify.py --config tiny --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from timing import best_of  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(config: str):
    from robustsim.metrics.lipsim import CPU_DEFAULT, OFFICIAL, LipSim, LipSimConfig

    torch.manual_seed(0)
    if config == "cpu-default":
        cfg = CPU_DEFAULT
    elif config == "tiny":
        cfg = LipSimConfig(input_size=32, stem="unshuffle4", channels=48, conv_depth=3, conv_inner=16, pool=(2,),
                           linear_depth=2, linear_inner=64, embed_dim=128)
    else:
        cfg = OFFICIAL[config]
    return LipSim(config=cfg).eval(), cfg


def cpu_best_of(fn, repeats: int) -> float:
    """Smallest CPU time (this process) of `repeats` calls after a warm-up.

    CPU time, not wall time: on a shared, oversubscribed machine wall time measures the other
    tenants; with one thread the process CPU time is the load-independent cost.
    """
    return best_of(fn, repeats, clock=time.process_time, warmup=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cpu-default", help="cpu-default | tiny | small | medium | ...")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64, help="smoothing batch size")
    ap.add_argument("--n-run", type=int, default=1024, help="smoothing samples actually run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from conftest import real_photo
    from robustsim import certify

    m, cfg = build(args.config)
    s = cfg.input_size
    ref, x0 = real_photo("astronaut", s), real_photo("chelsea", s)
    x1 = torch.nn.functional.avg_pool2d(ref, 3, 1, 1, count_include_pad=False)

    t_cert = cpu_best_of(lambda: certify.two_afc(m, ref, x0, x1), args.repeats)
    cert = certify.two_afc(m, ref, x0, x1)

    sigma = 0.25
    gen = torch.Generator().manual_seed(0)

    def smoothing(n: int):
        with torch.no_grad():
            e0, e1 = m.embed(x0), m.embed(x1)
            votes = 0
            for i in range(0, n, args.batch):
                b = min(args.batch, n - i)
                noisy = ref + sigma * torch.randn((b, *ref.shape[1:]), generator=gen)
                e = m.embed_checked(noisy)  # Gaussian noise leaves [0, 1]: smoothing evaluates it anyway
                votes += int(((e - e1).pow(2).sum(1) < (e - e0).pow(2).sum(1)).sum())
        return votes

    t_run = cpu_best_of(lambda: smoothing(args.n_run), max(1, args.repeats // 2))
    per_sample = t_run / args.n_run
    print(f"config {args.config}: {cfg.num_parameters() / 1e6:.2f} M parameters, {s}x{s}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"decision closer={int(cert.closer)}  radius={float(cert.radius):.4g}  paper={float(cert.paper_radius):.4g}"
          f"  ||g||={float(cert.gnorm):.3g}")
    print(f"Lipschitz certificate: {t_cert * 1e3:.2f} CPU-ms per triplet (one forward of the 3 images + arithmetic)")
    print(f"smoothing: {per_sample * 1e3:.3f} CPU-ms per noisy sample (batch {args.batch}, measured on {args.n_run})")
    print("| samples n | smoothing CPU time (s) | ratio smoothing / ours |")
    print("|---:|---:|---:|")
    for n in (10**4, 10**5, 10**6):
        t = per_sample * n
        print(f"| 10^{len(str(n)) - 1} | {t:.1f} | {t / t_cert:,.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
