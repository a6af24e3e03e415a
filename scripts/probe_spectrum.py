#!/usr/bin/env python
"""Where in frequency an ℓ2 attacker and natural distortions put their energy, and how much a fixed low-pass keeps.

    python scripts/probe_spectrum.py --out docs/probe_spectrum                      # lipsim-default, 100 triplets
    python scripts/probe_spectrum.py --metrics lipsim-default,runs/M/model.safetensors --out OUT

Why: a 1-Lipschitz network is certified against every direction alike, but an attack only needs the
directions the network keeps. If those are high spatial frequencies while the distortions people judge
live lower, a fixed binomial blur on the input (``LipSimConfig.input_blur``: nonnegative, sums to 1, so
1-Lipschitz and free of parameters) damps the attack more than the distortions. This measures that on the
held-out judged triplets (labels: the consensus of human-calibrated metrics, not people):

* natural: the differences ref − x0 and ref − x1 (identical pairs skipped);
* attack: APGD-CE ℓ2 on the reference at ``--eps`` against the metric's 2AFC decision with the judges'
  label, run to the end on every triplet (``early_stop=False``), so each δ is the attacker's best
  direction at the full budget, whether or not it flips the decision.

For each it reports the median share of energy (summed over colour channels) in four bands of the
Chebyshev frequency max(|f_y|, |f_x|) in cycles per pixel, and the median share of the ℓ2 norm a 3×3 and a
5×5 binomial blur keep. Writes ``OUT/probe.md`` (table and command) and ``OUT/probe.png`` (the bands).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 (after the offline switches)

#: (low, high) edges of the bands, cycles per pixel (0.5 is the Nyquist frequency)
BANDS = ((0.0, 1 / 16), (1 / 16, 1 / 8), (1 / 8, 1 / 4), (1 / 4, 0.51))
BAND_NAMES = ("0-1/16", "1/16-1/8", "1/8-1/4", "1/4-1/2")


def band_shares(d: torch.Tensor) -> torch.Tensor:
    """(N, 4) share of each image's energy ||d||² in each band of :data:`BANDS` (Parseval: the shares sum to 1)."""
    if d.dim() != 4 or d.shape[-1] != d.shape[-2]:
        raise ValueError(f"band_shares expects square N×C×H×W differences, got {tuple(d.shape)}")
    power = torch.fft.fft2(d.double()).abs().pow(2).sum(1)
    f = torch.fft.fftfreq(d.shape[-1], dtype=torch.float64).abs()
    cheb = torch.maximum(f[:, None], f[None, :])
    total = power.sum((1, 2)).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.stack([power[:, (cheb >= lo) & (cheb < hi)].sum(1) / total for lo, hi in BANDS], 1)


def blur_kept(d: torch.Tensor, size: int) -> torch.Tensor:
    """Per image, ||B d|| / ||d|| for the binomial blur B of side ``size`` (zero padded, as the network uses it)."""
    from robustsim.lipschitz.layers import BinomialBlur2d

    with torch.no_grad():
        return BinomialBlur2d(size)(d.double()).flatten(1).norm(dim=1) / d.double().flatten(1).norm(dim=1)


def summarise(d: torch.Tensor) -> Dict[str, object]:
    d = d[d.flatten(1).norm(dim=1) > 0]
    return {"n": int(d.shape[0]), "bands": band_shares(d).median(0).values.tolist(),
            "blur3": float(blur_kept(d, 3).median()), "blur5": float(blur_kept(d, 5).median())}


def probe(metric_name: str, n: int, eps: float, steps: int, seed: int, size: int, progress: bool) -> Dict[str, dict]:
    """Natural and attack summaries (:func:`summarise`) for one metric on the first ``n`` held-out triplets."""
    from robustsim import load
    from robustsim.attacks.twoafc import run_2afc
    from robustsim.data.judged import JudgedPool
    from robustsim.evaluate.judged import judged_tensors, native_size

    metric = load(metric_name).eval()
    if native_size(metric, size) != size:
        raise SystemExit(f"probe_spectrum: {metric_name} takes {native_size(metric, size)} px, not --size {size}")
    pool = JudgedPool(size=64, split="heldout", seed=seed, per_window=2, progress=progress)
    t = judged_tensors(pool, metric_name, n, size)
    ref, x0, x1 = t["ref"], t["x0"], t["x1"]
    res = run_2afc(metric, ref, x0, x1, t["label"], eps=eps, steps=steps, target="ref", early_stop=False,
                   seed=seed, progress=progress)
    return {"natural": summarise(torch.cat([ref - x0, ref - x1])), "attack": summarise(res.ref - ref)}


def write(results: Dict[str, Dict[str, dict]], out: Path, command: str, eps: float, steps: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Spectrum of natural distortions and of APGD-CE ℓ2 perturbations (ε = {eps:g}, {steps} iterations)", "",
             "Median share of each image's energy by Chebyshev frequency band (cycles per pixel; 1/2 = Nyquist), "
             "and the median share of the ℓ2 norm that a binomial blur keeps. Held-out judged triplets; labels: "
             "consensus of human-calibrated metrics, not people.", "",
             "| metric | differences | n | " + " | ".join(BAND_NAMES) + " | blur 3×3 keeps | blur 5×5 keeps |",
             "|---|---|---:|" + "---:|" * (len(BANDS) + 2)]
    for name, res in results.items():
        for kind, s in res.items():
            bands = " | ".join(f"{100 * b:.1f}%" for b in s["bands"])
            lines.append(f"| {name} | {kind} | {s['n']} | {bands} | {s['blur3']:.3f} | {s['blur5']:.3f} |")
    lines += ["", "Reproduce:", "", "```bash", command, "```", ""]
    (out / "probe.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / (2 * len(results))
    for i, (name, res) in enumerate(results.items()):
        for j, kind in enumerate(("natural", "attack")):
            k = 2 * i + j
            xs = [b + (k - len(results) + 0.5) * width for b in range(len(BANDS))]
            ax.bar(xs, [100 * v for v in res[kind]["bands"]], width,
                   label=f"{Path(name).parent.name or name}: {kind}", hatch="//" if kind == "attack" else None)
    ax.set_xticks(range(len(BANDS)), BAND_NAMES)
    ax.set_xlabel("frequency band (cycles per pixel)")
    ax.set_ylabel("median share of energy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "probe.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default="lipsim-default", help="comma-separated hub names or .safetensors files")
    p.add_argument("--n", type=int, default=100, help="held-out triplets")
    p.add_argument("--eps", type=float, default=1.0, help="ℓ2 budget of the attack on the reference")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("docs/probe_spectrum"))
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.n < 1 or a.steps < 1 or a.eps <= 0:
        raise SystemExit("probe_spectrum: --n and --steps must be >= 1 and --eps > 0")
    names: List[str] = [m for m in a.metrics.split(",") if m]
    results = {m: probe(m, a.n, a.eps, a.steps, a.seed, a.size, not a.quiet) for m in names}
    command = "python scripts/probe_spectrum.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write(results, a.out, command, a.eps, a.steps)
    print((a.out / "probe.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
