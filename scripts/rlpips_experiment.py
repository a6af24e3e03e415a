"""R-LPIPS on the real AlexNet (issue 18): train every variant, then the paper's Table 1 on held-out judged triplets.

    # everything (resumable: finished variants and finished evaluation batches are skipped)
    python scripts/rlpips_experiment.py run --out runs/rlpips_real --steps 2000 --batch 32 --attack-steps 3 \
        --n-train 4000 --eval-n 500 --eval-steps 50 --apgd-steps 100
    # ship the chosen heads as rlpips-alex-<variant> (prints the SHIPPED_RLPIPS entry for metrics/lpips.py)
    python scripts/rlpips_experiment.py ship runs/rlpips_real/train/linf-x0 --variant linf-x0

Training (``configs/rlpips_real.yaml``, one run directory per variant under OUT/train/): natural (no attack,
the baseline), l-inf 8/255 (paper units; 4/255 in our [0, 1] units) on x0, x1, x0 and x1, the reference, and
one l2 variant (x0, paper 3.0 = 1.5 here). Same data, steps, batch and seed for all, so every variant sees the
same batches in the same order. A variant whose OUT/train/<v>/done.json matches the current settings is
skipped; an interrupted one resumes from its checkpoint. Wall time per variant is summed over resumptions.

Table 1 (held-out judged suite, labels by the four judges other than LPIPS-alex for every row, so LPIPS-alex's
own vote never counts): 2AFC score natural and under PGD (random start, --eval-steps steps) l-inf
eps 1, 2, 4, 8 /255 and l2 0.5, 1, 2 (paper units, [-1, 1] images; halved for our [0, 1] units), and APGD-CE,
perturbing x0, x1 or the reference, for LPIPS-alex and every variant. Also the attacked *training* loss of
each variant (its own ranking BCE under PGD on x0 at the training budget, on a fixed training batch): what
adversarial training optimises.

Writes OUT/rlpips_table1.{md,json} and OUT/rlpips_training.png (loss and training 2AFC per step).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "rlpips_real.yaml"

#: paper budgets are in [-1, 1] units; ours in [0, 1]: every norm halves
PAPER_TO_OURS = 0.5
TRAIN_LINF_PAPER = 8 / 255
TRAIN_L2_PAPER = 3.0

#: variant -> config overrides (budgets in our units)
VARIANTS: Dict[str, Dict[str, Any]] = {
    "natural": {"attack.enabled": False},
    "linf-x0": {"attack.enabled": True, "attack.target": "x0", "attack.norm": "linf", "attack.eps": TRAIN_LINF_PAPER * PAPER_TO_OURS},
    "linf-x1": {"attack.enabled": True, "attack.target": "x1", "attack.norm": "linf", "attack.eps": TRAIN_LINF_PAPER * PAPER_TO_OURS},
    "linf-x0-x1": {"attack.enabled": True, "attack.target": "x0+x1", "attack.norm": "linf", "attack.eps": TRAIN_LINF_PAPER * PAPER_TO_OURS},
    "linf-ref": {"attack.enabled": True, "attack.target": "ref", "attack.norm": "linf", "attack.eps": TRAIN_LINF_PAPER * PAPER_TO_OURS},
    "l2-x0": {"attack.enabled": True, "attack.target": "x0", "attack.norm": "l2", "attack.eps": TRAIN_L2_PAPER * PAPER_TO_OURS},
    # the released latest_net_linf_x0_tune.pth: the AlexNet trunk trained too (not a heads-only variant)
    "linf-x0-tune": {"attack.enabled": True, "attack.target": "x0", "attack.norm": "linf",
                     "attack.eps": TRAIN_LINF_PAPER * PAPER_TO_OURS, "model.tune_trunk": True},
}
BASELINE = "lpips-alex"
LEAVE_OUT = "lpips-alex"


def _floats(s: str) -> List[float]:
    from robustsim.errors import InputError

    out = []
    for part in (p.strip() for p in str(s).split(",")):
        if not part:
            continue
        try:
            out.append(float(part.split("/")[0]) / float(part.split("/")[1]) if "/" in part else float(part))
        except (ValueError, ZeroDivisionError):
            raise InputError(f"not a number: {part!r}") from None
    for v in out:
        if not (v > 0 and math.isfinite(v)):
            raise InputError(f"attack bounds must be positive finite numbers, got {v:g}")
    return out


def _variant_list(s: str) -> List[str]:
    from robustsim.errors import InputError

    names = [v.strip() for v in s.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise InputError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    return names


# --------------------------------------------------------------------------- training


def training_order(variants: Sequence[str], sets: Sequence[str]) -> List[str]:
    """Natural first (added if missing) when adversarial variants start from its ranking head."""
    if any(v != "natural" for v in variants) and not any(k.startswith("model.head_weights=") for k in sets or []):
        return ["natural"] + [v for v in variants if v != "natural"]
    return list(variants)


def variant_config(args, variant: str, out_root: Path, check_paths: bool = True):
    """The RecipeConfig of one variant: the YAML, then --set, then the shared sizes, then the variant."""
    from robustsim.train.config import load_config

    ov: Dict[str, Any] = parse_overrides(args.set or [])
    shared = {"train.steps": args.steps, "train.batch_size": args.batch, "attack.steps": args.attack_steps,
              "data.options.n": args.n_train, "seed": args.seed}
    ov.update({k: v for k, v in shared.items() if v is not None})
    ov.update(VARIANTS[variant])
    if variant != "natural" and "model.head_weights" not in ov:
        # a random ranking head collapses to p = 0.5 under attack (docs/TRAINING.md, R-LPIPS experiment); every adversarial
        # variant starts from the natural run's head, the lin heads from the same released weights as natural
        ov["model.head_weights"] = str(out_root / "train" / "natural" / "rank_head.pth")
    ov["out_dir"] = str(out_root / "train" / variant)
    ov["train.tensorboard"] = False
    return load_config(args.config, ov, check_paths=check_paths)


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE is YAML) -> {dotted key: value}, as ``robustsim train --set``."""
    import yaml

    from robustsim.errors import InputError

    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cfg_key(cfg) -> str:
    d = cfg.to_dict()
    d.pop("out_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_variants(args, out_root: Path, variants: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Train (or skip, or resume) every variant; returns {variant: done-record}."""
    from robustsim.train import train

    records: Dict[str, Dict[str, Any]] = {}
    for v in variants:
        cfg = variant_config(args, v, out_root)
        run = Path(cfg.out_dir)
        done_file, timing_file = run / "done.json", run / "timing.json"
        key = _cfg_key(cfg)
        if done_file.is_file():
            rec = json.loads(done_file.read_text())
            if rec.get("config_key") == key and (run / "model.safetensors").is_file():
                print(f"[{v}] finished earlier ({rec['seconds']:.0f} s): skipped", flush=True)
                records[v] = rec
                continue
            raise SystemExit(f"error: {run} holds a finished run with other settings; use another --out")
        spent = json.loads(timing_file.read_text())["seconds"] if timing_file.is_file() else 0.0
        print(f"[{v}] training {cfg.train.steps} steps (attack: {cfg.attack.norm} {cfg.attack.target} eps={cfg.attack.eps:.4g} "
              f"x{cfg.attack.steps})" if cfg.attack.enabled else f"[{v}] training {cfg.train.steps} steps (natural)", flush=True)
        res = train(cfg, resume="auto")
        spent += res.seconds
        run.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps({"seconds": spent}))
        if res.status != "done":
            print(f"[{v}] interrupted at step {res.step}; run the same command again to resume", flush=True)
            raise SystemExit(130)
        rec = {"variant": v, "config_key": key, "seconds": round(spent, 1), "steps": res.total_steps,
               "batch_size": cfg.train.batch_size, "attack": cfg.to_dict()["attack"],
               "samples_per_second": round(res.samples_per_second, 2), "model": str(res.model_path)}
        done_file.write_text(json.dumps(rec, indent=2))
        records[v] = rec
        print(f"[{v}] done in {spent:.0f} s", flush=True)
    return records


def read_log(run: Path) -> Dict[str, List[float]]:
    import csv

    cols: Dict[str, List[float]] = {}
    p = run / "log.csv"
    if not p.is_file():
        return cols
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            for k, val in row.items():
                try:
                    cols.setdefault(k, []).append(float(val))
                except (TypeError, ValueError):
                    pass
    return cols


def load_ranked(run: Path):
    """(metric, Dist2Logit head) of a finished variant."""
    import robustsim
    from robustsim.hub import load_state_dict, strict_load
    from robustsim.metrics.lpips import Dist2Logit

    metric = robustsim.load(str(run / "model.safetensors"))
    head_state = load_state_dict(run / "rank_head.pth")
    head = Dist2Logit(chn_mid=int(head_state["model.0.weight"].shape[0]))
    strict_load(head, head_state, str(run / "rank_head.pth"))
    return metric, head.eval()


def attacked_train_loss(args, out_root: Path, variants: Sequence[str], n: int, steps: int) -> Dict[str, Dict[str, float]]:
    """Each variant's own ranking BCE on the first n training triplets, clean and under PGD on x0 (l-inf 4/255)."""
    from robustsim.attacks.pgd import pgd_maximize
    from robustsim.train.data import build_triplets
    from robustsim.train.rlpips import RankedLPIPS, RankingObjective, ranking_bce

    cfg = variant_config(args, variants[0], out_root)
    data = build_triplets(cfg.data, cfg.seed)
    k = min(n, len(data))
    items = [data[i] for i in range(k)]
    ref, x0, x1, judge = (torch.stack([it[j] for it in items]) for j in range(4))
    eps = TRAIN_LINF_PAPER * PAPER_TO_OURS
    out: Dict[str, Dict[str, float]] = {}
    for v in variants:
        metric, head = load_ranked(out_root / "train" / v)
        model = RankedLPIPS(metric, head, False).eval()
        with torch.no_grad():
            clean = float(ranking_bce(head(*model.distances(ref, x0, x1)), judge).mean())
        obj = RankingObjective(model, ref, x0, x1, judge, "x0")
        res = pgd_maximize(obj, obj.center(), eps, "linf", steps=steps, restarts=1, seed=cfg.seed, early_stop=False)
        out[v] = {"clean": clean, "attacked": float(res.loss.mean()), "n": k, "eps": eps, "steps": steps}
    return out


# --------------------------------------------------------------------------- Table 1


def eval_suite(n: int):
    """The held-out judged suite, LPIPS-alex's vote left out (the same labels for every row of Table 1)."""
    from robustsim.data.judged import judged_suite

    return judged_suite(n, size=64, split="heldout", leave_out=LEAVE_OUT)


class Materialized(torch.utils.data.Dataset):
    """A suite's items rendered once (every Table 1 cell reads the same few hundred triplets again)."""

    def __init__(self, suite):
        self.suite = suite
        self.items = [suite[i] for i in range(len(suite))]
        self.voters, self.leave_out = getattr(suite, "voters", []), getattr(suite, "leave_out", [])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    def group(self, i: int) -> str:
        return self.suite.group(i) if hasattr(self.suite, "group") else "all"


def threat_grid(args) -> List[Dict[str, Any]]:
    """[{method, norm, paper: [eps], ours: [eps], steps}] (budgets in paper units and in ours)."""
    s = PAPER_TO_OURS if args.units == "paper" else 1.0
    grid = []
    for method, norm, eps, steps in (("pgd", "linf", args.linf, args.eval_steps), ("pgd", "l2", args.l2, args.eval_steps),
                                     ("apgd-ce", "linf", args.apgd_linf, args.apgd_steps),
                                     ("apgd-ce", "l2", args.apgd_l2, args.apgd_steps)):
        if eps:
            grid.append({"method": method, "norm": norm, "paper": list(eps), "ours": [e * s for e in eps], "steps": steps})
    return grid


def evaluate_metric(metric, suite, grid, targets, args, run_dir: Optional[Path], progress: bool,
                    suite_id: str = "") -> Dict[str, Any]:
    from robustsim.evaluate.twoafc import AttackSpec, evaluate_2afc

    t0 = time.perf_counter()
    out: Dict[str, Any] = {"natural": None, "attacks": {}}
    if not grid:
        res = evaluate_2afc(metric, suite, args.eval_batch, progress=progress, config={"suite": suite_id},
                            run_dir=None if run_dir is None else run_dir / "natural")
        out["natural"] = res["natural"]["overall"]
    for target in targets:
        for g in grid:
            spec = AttackSpec(method=g["method"], norm=g["norm"], eps=g["ours"], target=target, steps=g["steps"],
                              restarts=1, seed=args.seed or 0)
            tag = f"{g['method']}_{g['norm']}_{target.replace('+', '_')}"
            res = evaluate_2afc(metric, suite, args.eval_batch, attack=spec, progress=progress, config={"suite": suite_id},
                                run_dir=None if run_dir is None else run_dir / tag)
            out["natural"] = res["natural"]["overall"]
            row = out["attacks"].setdefault(f"{g['method']}|{g['norm']}|{target}", {})
            for ep, eo in zip(g["paper"], g["ours"]):
                row[_eps_label(ep, g["norm"])] = res["attacked"]["eps"][f"{float(eo):g}"]["overall"]
    out["n"] = len(suite)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _eps_label(e: float, norm: str) -> str:
    if norm == "linf":
        k = e * 255
        return f"{k:.0f}/255" if abs(k - round(k)) < 1e-6 else f"{e:.4g}"
    return f"{e:g}"


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def robustness(row: Dict[str, Any]) -> float:
    """Mean attacked score over every threat model and budget of a Table 1 row."""
    vals = [s for att in row["attacks"].values() for s in att.values()]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def markdown(result: Dict[str, Any]) -> str:
    grid, targets, rows = result.get("grid", []), result.get("targets", []), result.get("table1", {})
    lines: List[str] = []
    if rows:
        lines += [f"Held-out judged suite: {result['suite']['n']} consensus triplets, 64 px, labels by "
             f"{', '.join(result['suite']['voters'])} (LPIPS-alex's vote left out for every row). 2AFC score in %; "
             f"budgets in the paper's [-1, 1] units ({'ours = half' if result['units'] == 'paper' else 'our [0, 1] units'}). "
             f"PGD: {result['eval_steps']} steps, random start; APGD-CE: {result['apgd_steps']} steps.", ""]
    for target in targets if rows else []:
        head = ["model", "natural"]
        for g in grid:
            m = "PGD" if g["method"] == "pgd" else "APGD-CE"
            head += [f"{m} {'ℓ∞' if g['norm'] == 'linf' else 'ℓ2'} {_eps_label(e, g['norm'])}" for e in g["paper"]]
        lines += [f"**Perturbing {target}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in rows.items():
            cells = [name, _pct(row["natural"])]
            for g in grid:
                att = row["attacks"].get(f"{g['method']}|{g['norm']}|{target}", {})
                cells += [_pct(att.get(_eps_label(e, g["norm"]))) for e in g["paper"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if rows:
        lines += ["**Summary** (mean attacked score over all threat models, targets and budgets; natural cost vs our "
              "natural training and vs the released LPIPS-alex heads)", "",
                  "| model | natural | mean attacked | Δ natural vs natural-trained | Δ natural vs LPIPS-alex |",
                  "|---|---|---|---|---|"]
    nat_ours = rows.get("natural", {}).get("natural")
    nat_base = rows.get(BASELINE, {}).get("natural")
    for name, row in rows.items():
        d1 = "-" if nat_ours is None else f"{100 * (row['natural'] - nat_ours):+.1f}"
        d2 = "-" if nat_base is None else f"{100 * (row['natural'] - nat_base):+.1f}"
        lines.append(f"| {name} | {_pct(row['natural'])} | {_pct(robustness(row))} | {d1} | {d2} |")
    s = result.get("summary") or {}
    if s:
        lines += ["", f"Most robust training target: **{s['most_robust']}** (mean attacked {_pct(s['most_robust_score'])} "
                      f"vs {_pct(s['natural_score'])} for natural training); natural agreement "
                      f"{_pct(s['most_robust_natural'])} vs {_pct(s['natural_natural'])} (natural training) and "
                      f"{_pct(s['lpips_natural'])} (LPIPS-alex)."]
    tr = result.get("training") or {}
    if tr:
        lines += ["", "**Training** (same data, steps, batch and seed for every variant)", "",
                  "| variant | attack | steps × batch | training loop | wall time (set-up incl.) | samples/s | final loss | "
                  "train 2AFC (last 10%) | own BCE clean | own BCE under PGD x0 ℓ∞ 8/255 |", "|---|---|---|---|---|---|---|---|---|---|"]
        atl = result.get("attacked_train_loss") or {}
        for v, rec in tr.items():
            a = rec["attack"]
            att = "none" if not a["enabled"] else f"{a['norm']} {a['target']} ε={a['eps'] * 255:.2f}/255 ×{a['steps']}" \
                if a["norm"] == "linf" else f"{a['norm']} {a['target']} ε={a['eps']:g} ×{a['steps']}"
            lo = atl.get(v, {})
            rate = rec.get("samples_per_second") or 0.0
            loop = f"{rec['steps'] * rec['batch_size'] / rate / 60:.1f} min" if rate > 0 else "-"
            lines.append(f"| {v} | {att} | {rec['steps']} × {rec['batch_size']} | {loop} | {rec['seconds'] / 60:.1f} min | "
                         f"{rate:.1f} | {rec.get('final_loss', float('nan')):.4f} | "
                         f"{_pct(rec.get('train_2afc_end'))} | "
                         f"{lo.get('clean', float('nan')):.4f} | {lo.get('attacked', float('nan')):.4f} |")
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def plot_curves(logs: Dict[str, Dict[str, List[float]]], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None

    def smooth(v: List[float], k: int) -> List[float]:
        out, acc = [], []
        for x in v:
            acc.append(x)
            if len(acc) > k:
                acc.pop(0)
            out.append(sum(acc) / len(acc))
        return out

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for v, cols in logs.items():
        if "step" not in cols:
            continue
        k = max(1, len(cols["step"]) // 15)
        axes[0].plot(cols["step"], smooth(cols.get("loss", []), k), label=v)
        if "2afc" in cols:
            axes[1].plot(cols["step"], smooth(cols["2afc"], k), label=v)
    axes[0].set(xlabel="step", ylabel="ranking BCE", title="training loss (on the batch trained on, perturbed if adversarial)")
    axes[1].set(xlabel="step", ylabel="2AFC score", title="2AFC on that batch (soft labels)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_run(args) -> int:
    import robustsim

    torch.set_num_threads(args.threads) if args.threads else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = training_order(_variant_list(args.variants), args.set)
    progress = not args.quiet
    records = train_variants(args, out, variants)
    logs = {v: read_log(out / "train" / v) for v in variants}
    for v, rec in records.items():
        cols = logs[v]
        if cols.get("loss"):
            rec["final_loss"] = sum(cols["loss"][-max(1, len(cols["loss"]) // 10):]) / max(1, len(cols["loss"][-max(1, len(cols["loss"]) // 10):]))
        if cols.get("2afc"):
            tail = cols["2afc"][-max(1, len(cols["2afc"]) // 10):]
            rec["train_2afc_end"] = sum(tail) / len(tail)
    curves = plot_curves(logs, out / "rlpips_training.png")
    result: Dict[str, Any] = {"command": args.argv or "python scripts/rlpips_experiment.py " + " ".join(sys.argv[1:]),
                              "training": records, "curves": str(curves) if curves else None,
                              "logs": {v: {k: c for k, c in cols.items() if k in ("step", "loss", "2afc")} for v, cols in logs.items()}}
    if args.train_loss_n > 0:
        result["attacked_train_loss"] = attacked_train_loss(args, out, variants, args.train_loss_n, args.train_loss_steps)
    if args.eval_n > 0:
        raw = eval_suite(args.eval_n)
        suite = Materialized(raw)
        grid = threat_grid(args)
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        result.update({"suite": {"n": len(suite), "voters": suite.voters, "leave_out": suite.leave_out,
                                 "key": getattr(getattr(raw, "pool", None), "cache_key", None)},
                       "grid": grid, "targets": targets, "units": args.units, "eval_steps": args.eval_steps,
                       "apgd_steps": args.apgd_steps, "table1": {}})
        models = ([BASELINE] if not args.no_baseline else []) + variants
        for name in models:
            metric = robustsim.load(BASELINE) if name == BASELINE else robustsim.load(str(out / "train" / name / "model.safetensors"))
            print(f"[table 1] {name}", flush=True)
            result["table1"][name] = evaluate_metric(metric, suite, grid, targets, args, out / "eval" / name, progress,
                                                     suite_id=json.dumps(result["suite"], sort_keys=True))
            _write(out, result)
        rows = result["table1"]
        adv = [v for v in variants if v != "natural" and v in rows]
        if adv:
            best = max(adv, key=lambda v: robustness(rows[v]))
            result["summary"] = {
                "most_robust": best, "most_robust_score": robustness(rows[best]),
                "most_robust_natural": rows[best]["natural"],
                "natural_score": robustness(rows["natural"]) if "natural" in rows else None,
                "natural_natural": rows.get("natural", {}).get("natural"),
                "lpips_natural": rows.get(BASELINE, {}).get("natural"),
                "by_target": {v: robustness(rows[v]) for v in adv},
            }
    _write(out, result)
    print(f"wrote {out / 'rlpips_table1.md'}, {out / 'rlpips_table1.json'}" + (f", {curves}" if curves else ""))
    return 0


def _write(out: Path, result: Dict[str, Any]) -> None:
    (out / "rlpips_table1.json").write_text(json.dumps(result, indent=1))
    (out / "rlpips_table1.md").write_text(markdown(result))


def cmd_ship(args) -> int:
    """Write RUN_DIR's heads as src/robustsim/assets/rlpips_alex_<variant>.safetensors; print the registry entry."""
    import robustsim
    from robustsim.errors import InputError
    from robustsim.metrics.lpips import save_rlpips_heads

    run = Path(args.run)
    model = run / "model.safetensors"
    if not model.is_file():
        raise InputError(f"{model} does not exist: train the variant first")
    metric = robustsim.load(str(model))
    name = args.variant.replace("+", "-")
    dest = Path(args.assets) / f"rlpips_alex_{name.replace('-', '_')}.safetensors"
    ref = robustsim.load("lpips-alex")
    trunk_same = all(torch.equal(a, b) for (k, a), (_, b) in zip(sorted(metric.net.state_dict().items()),
                                                                  sorted(ref.net.state_dict().items())))
    if not trunk_same:  # checked before writing: a refused model leaves no asset behind
        raise InputError(f"{model} has another trunk than lpips-alex's ImageNet AlexNet (tune_trunk?); "
                         f"rlpips-alex-* ships heads only")
    sha = save_rlpips_heads(metric, dest)
    print(f"wrote {dest} ({dest.stat().st_size} bytes)\nadd to SHIPPED_RLPIPS in src/robustsim/metrics/lpips.py:\n"
          f'    "{name}": ("{dest.name}", "{sha}", "{args.description or name}"),')
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train every variant (resumable) and write Table 1")
    r.add_argument("--out", required=True)
    r.add_argument("--config", default=str(DEFAULT_CONFIG))
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every variant")
    r.add_argument("--variants", default=",".join(VARIANTS))
    r.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    r.add_argument("--batch", type=int, default=None)
    r.add_argument("--attack-steps", type=int, default=None, help="PGD steps per training step")
    r.add_argument("--n-train", type=int, default=None, help="training triplets (default: the config's)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--eval-n", type=int, default=500, help="held-out judged triplets for Table 1 (0: skip)")
    r.add_argument("--eval-batch", type=int, default=50)
    r.add_argument("--eval-steps", type=int, default=50, help="PGD steps")
    r.add_argument("--apgd-steps", type=int, default=100)
    r.add_argument("--units", choices=("paper", "pixel"), default="paper",
                   help="budgets below in the paper's [-1, 1] units (halved here) or in our [0, 1] units")
    r.add_argument("--linf", default="1/255,2/255,4/255,8/255")
    r.add_argument("--l2", default="0.5,1,2")
    r.add_argument("--apgd-linf", default="8/255")
    r.add_argument("--apgd-l2", default="")
    r.add_argument("--targets", default="x0,x1,ref")
    r.add_argument("--no-baseline", action="store_true", help="leave the released LPIPS-alex row out")
    r.add_argument("--train-loss-n", type=int, default=64, help="training triplets for the attacked-training-loss check")
    r.add_argument("--train-loss-steps", type=int, default=10)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run, argv=None)
    s = sub.add_parser("ship", help="write a variant's heads into the package assets and print the registry entry")
    s.add_argument("run", help="the variant's run directory (holds model.safetensors)")
    s.add_argument("--variant", required=True, help="name: rlpips-alex-<variant>")
    s.add_argument("--assets", default=str(REPO / "src" / "robustsim" / "assets"))
    s.add_argument("--description", default="")
    s.set_defaults(func=cmd_ship)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    from robustsim.errors import InputError, WeightsError

    ap = build_parser()
    try:
        args = ap.parse_args(argv)
        if args.cmd == "run":
            for k in ("linf", "l2", "apgd_linf", "apgd_l2"):
                setattr(args, k, _floats(getattr(args, k)))
        if argv is not None:
            args.argv = "python scripts/rlpips_experiment.py " + " ".join(argv)
        return args.func(args)
    except (InputError, WeightsError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
