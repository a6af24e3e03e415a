"""``robustsim attack {2afc,pair,embedding}``: attack a metric on image files, save the adversarial PNGs.

The adversarial PNGs go to a new folder (``attack-KIND-<time>``) unless ``--out`` names one, so a run
never scatters files into the current folder or overwrites an earlier run's. A progress bar shows the
attack's iterations on a terminal (off with ``--quiet`` or when stderr is not a terminal).

Saving rounds to 8 bits, which changes the perturbation. When the clean image is itself 8-bit the
saved perturbation is rounded toward zero pixel by pixel, so the saved image never leaves the budget;
either way the sizes reported are those of the saved files, and the decision/distance is evaluated
again on the files as read back.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import torch

from ..attacks.engine import NORMS
from ..attacks.optimisers import list_optimisers
from ..attacks.twoafc import DIRECTIONS, PAIR_TARGETS, TARGETS
from .options import add_json_option, add_metric_options, emit, load_metric_arg, require_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="attack a metric on image files (2AFC decision, a distance, an embedding)")
    kinds = p.add_subparsers(dest="attack_kind", metavar="KIND")
    kinds.required = True

    def common(q: argparse.ArgumentParser, default_method: str, default_eps: float) -> None:
        add_metric_options(q, json_output=False)
        q.add_argument("--norm", default="l2", choices=NORMS)
        q.add_argument("--eps", type=float, default=default_eps, help="budget per perturbed image, [0, 1] pixel units")
        q.add_argument("--method", default=default_method, choices=list_optimisers(), help="attack optimiser")
        q.add_argument("--steps", type=int, default=100)
        q.add_argument("--restarts", type=int, default=1)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--out", "-o", default=None,
                       help="folder for the adversarial PNGs, created if missing (default: a new folder "
                            "attack-KIND-YYYYmmdd-HHMMSS here, never the current folder itself)")
        add_json_option(q)

    q = kinds.add_parser("2afc", help="flip which of X0, X1 the metric finds closer to REF")
    q.add_argument("ref")
    q.add_argument("x0")
    q.add_argument("x1")
    q.add_argument("--target", default="ref", choices=TARGETS)
    q.add_argument("--label", type=int, default=None, help="0 if X0 is the closer (default: the metric's clean decision)")
    q.add_argument("--loss", default="ce", choices=["ce", "margin"])
    common(q, "apgd-ce", 1.0)
    q.set_defaults(func=cmd_2afc)

    q = kinds.add_parser("pair", help="push d(A, B) up or down")
    q.add_argument("a")
    q.add_argument("b")
    q.add_argument("--direction", default="up", choices=DIRECTIONS)
    q.add_argument("--target", default="x", choices=PAIR_TARGETS, help="perturb A (x), B (y) or both")
    q.add_argument("--threshold", type=float, default=None, help="stop once d crosses this value")
    common(q, "apgd", 1.0)
    q.set_defaults(func=cmd_pair)

    q = kinds.add_parser("embedding", help="LipSim's embedding attack: move X's embedding away from its own")
    q.add_argument("x")
    common(q, "pgd", 1.0)
    q.set_defaults(func=cmd_embedding)


def _load(paths: List[str], dev):
    from ..images import load_image

    require_files(*paths)
    return [load_image(p).to(dev) for p in paths]


def _out_dir(args) -> Path:
    """--out as given, or a new folder ``attack-KIND-YYYYmmdd-HHMMSS`` (suffixed -2, -3, ... if taken).

    The folder is created only when the first image is saved, so a failed run leaves nothing behind.
    """
    if args.out:
        return Path(args.out).expanduser()
    import time

    base = Path(f"attack-{args.attack_kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _quantise(adv: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """8-bit values to save: the perturbation rounded toward zero when the clean image is 8-bit."""
    c255 = clean * 255
    if float((c255 - c255.round()).abs().max()) < 1e-3:
        d = torch.trunc((adv - clean) * 255 + torch.sign(adv - clean) * 1e-4)
        return ((c255.round() + d).clamp(0, 255)) / 255
    return (adv * 255).round().clamp(0, 255) / 255


def _save(adv: torch.Tensor, clean: torch.Tensor, src: str, out: Path) -> Dict:
    from ..images import load_image, save_image

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(src).stem}_adv.png"
    save_image(_quantise(adv, clean).cpu(), path)
    back = load_image(path).to(clean.device)
    delta = (back - clean).flatten()
    return {"file": str(path), "image": back, "l2": float(delta.norm()), "linf": float(delta.abs().max())}


def _size(adv, clean) -> Dict[str, float]:
    delta = (adv - clean).flatten()
    return {"l2": float(delta.norm()), "linf": float(delta.abs().max())}


def _budget_line(name, s, args):
    inside = (s["l2"] if args.norm == "l2" else s["linf"]) <= args.eps * (1 + 1e-6)
    return f"  {name}: saved {s['file']}  l2 {s['l2']:.4f}  linf {s['linf']:.4f} ({s['linf'] * 255:.1f}/255)" + (
        "" if inside else "  (outside the budget after rounding)")


def cmd_2afc(args: argparse.Namespace) -> int:
    from ..attacks import run_2afc

    metric = load_metric_arg(args)
    dev = metric.device
    ref, x0, x1 = _load([args.ref, args.x0, args.x1], dev)
    label = None if args.label is None else torch.tensor([args.label])
    res = run_2afc(metric, ref, x0, x1, label, norm=args.norm, eps=args.eps, method=args.method, target=args.target,
                   steps=args.steps, restarts=args.restarts, seed=args.seed, loss=args.loss, progress=True)
    clean = {"ref": ref, "x0": x0, "x1": x1}
    adv = {"ref": res.ref, "x0": res.x0, "x1": res.x1}
    src = {"ref": args.ref, "x0": args.x0, "x1": args.x1}
    perturbed = ["x0", "x1"] if args.target == "x0+x1" else [args.target]
    out = _out_dir(args)
    saved = {k: _save(adv[k], clean[k], src[k], out) for k in perturbed}
    final = {k: saved[k]["image"] if k in saved else clean[k] for k in clean}
    with torch.no_grad():
        s0 = float(metric(final["ref"], final["x0"]))
        s1 = float(metric(final["ref"], final["x1"]))
    label_v = int(res.label[0])
    saved_dec = int(s1 < s0)
    report = {
        "metric": getattr(metric, "name", "") or args.metric, "norm": args.norm, "eps": args.eps, "method": args.method,
        "target": args.target, "steps": args.steps, "label": label_v,
        "clean": {"d0": float(res.clean_d0), "d1": float(res.clean_d1), "decision": int(res.clean_d1 < res.clean_d0)},
        "adversarial": {"d0": float(res.adv_d0), "d1": float(res.adv_d1), "decision": int(res.adv_decision),
                        "flipped": bool(res.flipped), **{k: _size(adv[k], clean[k]) for k in perturbed}},
        "saved": {"d0": s0, "d1": s1, "decision": saved_dec, "flipped": saved_dec != label_v,
                  **{k: {kk: v for kk, v in saved[k].items() if kk != "image"} for k in perturbed}},
    }
    lines = [
        f"label {label_v} (x{label_v} closer); clean: d0 {report['clean']['d0']:.5f}  d1 {report['clean']['d1']:.5f}",
        f"attack ({args.method}, {args.norm} eps {args.eps:g} on {args.target}): d0 {float(res.adv_d0):.5f}  "
        f"d1 {float(res.adv_d1):.5f}  decision x{int(res.adv_decision)}  {'FLIPPED' if bool(res.flipped) else 'not flipped'}",
        f"saved files re-read: d0 {s0:.5f}  d1 {s1:.5f}  decision x{saved_dec}  "
        f"{'FLIPPED' if saved_dec != label_v else 'not flipped'}",
        *[_budget_line(k, saved[k], args) for k in perturbed],
    ]
    return emit(args, report, lines)


def cmd_pair(args: argparse.Namespace) -> int:
    from ..attacks import run_pair

    metric = load_metric_arg(args)
    dev = metric.device
    a, b = _load([args.a, args.b], dev)
    method = "apgd" if args.method == "apgd-ce" else args.method
    res = run_pair(metric, a, b, args.direction, args.target, args.norm, args.eps, method, args.steps, args.restarts,
                   args.seed, args.threshold, progress=True)
    perturbed = {"x": ["a"], "y": ["b"], "both": ["a", "b"]}[args.target]
    clean = {"a": a, "b": b}
    adv = {"a": res.x, "b": res.y}
    src = {"a": args.a, "b": args.b}
    out = _out_dir(args)
    saved = {k: _save(adv[k], clean[k], src[k], out) for k in perturbed}
    final = {k: saved[k]["image"] if k in saved else clean[k] for k in clean}
    with torch.no_grad():
        ds = float(metric(final["a"], final["b"]))
    report = {
        "metric": getattr(metric, "name", "") or args.metric, "norm": args.norm, "eps": args.eps, "direction": args.direction,
        "target": args.target, "threshold": args.threshold, "clean": {"d": float(res.clean_d)},
        "adversarial": {"d": float(res.adv_d), **{k: _size(adv[k], clean[k]) for k in perturbed}},
        "saved": {"d": ds, **{k: {kk: v for kk, v in saved[k].items() if kk != "image"} for k in perturbed}},
    }
    if args.threshold is not None:
        report["saved"]["crossed"] = ds > args.threshold if args.direction == "up" else ds < args.threshold
    lines = [f"d clean {float(res.clean_d):.5f} -> attacked {float(res.adv_d):.5f} -> saved files {ds:.5f}",
             *[_budget_line(k, saved[k], args) for k in perturbed]]
    return emit(args, report, lines)


def cmd_embedding(args: argparse.Namespace) -> int:
    from ..attacks import embedding_attack

    metric = load_metric_arg(args)
    dev = metric.device
    (x,) = _load([args.x], dev)
    method = "apgd" if args.method == "apgd-ce" else args.method
    x_adv, d = embedding_attack(metric, x, args.eps, args.norm, args.steps, args.restarts, args.seed, method,
                                progress=True)
    s = _save(x_adv, x, args.x, _out_dir(args))
    with torch.no_grad():
        ds = float(metric(x, s["image"]))
    report = {"metric": getattr(metric, "name", "") or args.metric, "norm": args.norm, "eps": args.eps,
              "adversarial": {"d": float(d), **_size(x_adv, x)},
              "saved": {"d": ds, **{k: v for k, v in s.items() if k != "image"}}}
    lines = [f"d(x, x_adv): attacked {float(d):.5f} -> saved file {ds:.5f}", _budget_line("x", s, args)]
    return emit(args, report, lines)
