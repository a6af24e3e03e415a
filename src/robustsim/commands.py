"""Core sub-commands: ``models``, ``distance``, ``compare``.

``distance A B`` compares two image files, or two folders whose files are paired by name (stem):
the CSV (or JSON) goes to stdout or, written atomically, to ``--out``; names found in only one
folder are listed on stderr. ``compare REF X0 X1`` says which of X0, X1 is closer to REF and, for
certified metrics, how large an l2 perturbation of REF is provably needed to change that answer.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

MIN_FILE_SIZE = 2  # io.load_image refuses 1×1 images whatever the metric


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered metrics and whether their weights are present locally")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("distance", help="distance between two images, or between same-named files of two folders")
    p.add_argument("a", help="image file or folder")
    p.add_argument("b", help="image file or folder (same kind as A)")
    _metric_options(p)
    p.add_argument("--out", help="folder mode: write the CSV (or JSON) here, atomically, instead of stdout")
    p.set_defaults(func=cmd_distance)

    p = sub.add_parser("compare", help="which of X0, X1 is closer to REF (with a certificate for certified metrics)")
    p.add_argument("ref")
    p.add_argument("x0")
    p.add_argument("x1")
    _metric_options(p)
    p.set_defaults(func=cmd_compare)


def _metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", "-m", default=None, help="metric name from `robustsim models`, or a saved .safetensors file (default: the shipped default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from . import hub

    rows = []
    for name in hub.list_models():
        spec = hub.model_spec(name)
        rows.append({"name": name, "certified": spec.certified, "weights_present": hub.weights_present(name),
                     "default": name == hub.DEFAULT_MODEL, "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'name':<{width}}  certified  weights  description")
    for r in rows:
        mark = "*" if r["default"] else " "
        print(f"{r['name']:<{width}}{mark} {'yes' if r['certified'] else 'no':<9}  {'local' if r['weights_present'] else '-':<7}  {r['description']}")
    return 0


# --------------------------------------------------------------------------- helpers


def _device(name: str):
    import torch

    from .errors import InputError

    try:
        dev = torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"device {name!r} is not usable here ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return dev


def _load_metric(args: argparse.Namespace):
    from . import hub

    dev = _device(args.device)
    return hub.load(args.metric or hub.DEFAULT_MODEL, device=dev)


def _require_files(*paths: str) -> None:
    """Fail fast (before loading a model) on paths that are not files."""
    from .errors import InputError

    for p in paths:
        q = Path(p).expanduser()
        if not q.exists():
            raise InputError(f"{q}: no such file")
        if q.is_dir():
            raise InputError(f"{q}: is a directory, not an image file")


def _read(path: str, metric, device):
    from . import io

    return io.load_image(path, min_size=max(MIN_FILE_SIZE, int(getattr(metric, "min_size", 1)))).to(device)


def _distance(metric, x, y, names: Tuple[str, str]) -> float:
    import torch

    from .errors import InputError

    if metric.input_size is None and x.shape[-2:] != y.shape[-2:]:
        raise InputError(
            f"{names[0]} is {x.shape[-1]}×{x.shape[-2]} but {names[1]} is {y.shape[-1]}×{y.shape[-2]}; "
            f"{metric.name or type(metric).__name__} has no native size, so it needs images of equal size"
        )
    with torch.no_grad():
        return float(metric(x, y)[0])


def _write_atomic(path: str, text: str) -> None:
    """Write text to path via a temporary file in the same folder and a rename: never half-written."""
    from .errors import InputError

    out = Path(path).expanduser()
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such directory for --out")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pair_folders(a: Path, b: Path) -> Tuple[List[Tuple[str, Path, Path]], List[str], List[str]]:
    """(stem, file in A, file in B) for stems present in both; and the stems only in A, only in B."""
    from . import io
    from .errors import InputError

    def by_stem(folder: Path) -> Dict[str, Path]:
        out: Dict[str, Path] = {}
        for p in io.list_images(folder):
            if p.stem in out:
                raise InputError(f"{folder}: two images named {p.stem!r} ({out[p.stem].name}, {p.name}); pairing by name is ambiguous")
            out[p.stem] = p
        return out

    fa, fb = by_stem(a), by_stem(b)
    common = sorted(set(fa) & set(fb))
    return [(s, fa[s], fb[s]) for s in common], sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))


# --------------------------------------------------------------------------- distance


def cmd_distance(args: argparse.Namespace) -> int:
    import json

    from .errors import InputError

    a, b = Path(args.a).expanduser(), Path(args.b).expanduser()
    for p in (a, b):
        if not p.exists():
            raise InputError(f"{p}: no such file or directory")
    if a.is_dir() != b.is_dir():
        raise InputError(f"give two image files or two folders, not a {'folder' if a.is_dir() else 'file'} and a {'folder' if b.is_dir() else 'file'}")
    if a.is_dir():
        return _distance_folders(args, a, b)
    if args.out:
        raise InputError("--out applies to folder mode (distance DIR_A DIR_B)")
    metric = _load_metric(args)
    dev = _device(args.device)
    d = _distance(metric, _read(str(a), metric, dev), _read(str(b), metric, dev), (str(a), str(b)))
    if args.json:
        print(json.dumps({"metric": metric.name, "a": str(a), "b": str(b), "distance": d}))
    else:
        print(f"{d:.6g}")
    return 0


def _distance_folders(args: argparse.Namespace, a: Path, b: Path) -> int:
    import csv
    import io as stdio
    import json

    from tqdm.auto import tqdm

    from .errors import InputError

    if args.out and not Path(args.out).expanduser().parent.is_dir():
        raise InputError(f"{Path(args.out).expanduser().parent}: no such directory for --out")
    pairs, only_a, only_b = _pair_folders(a, b)
    if only_a:
        print(f"robustsim: {len(only_a)} image(s) only in {a}: {', '.join(only_a[:10])}{' ...' if len(only_a) > 10 else ''}", file=sys.stderr)
    if only_b:
        print(f"robustsim: {len(only_b)} image(s) only in {b}: {', '.join(only_b[:10])}{' ...' if len(only_b) > 10 else ''}", file=sys.stderr)
    if not pairs:
        raise InputError(f"no images with the same name in {a} and {b}")
    metric = _load_metric(args)
    dev = _device(args.device)
    rows: List[Dict[str, Any]] = []
    for stem, pa, pb in tqdm(pairs, desc="distance", unit="pair"):
        d = _distance(metric, _read(str(pa), metric, dev), _read(str(pb), metric, dev), (str(pa), str(pb)))
        rows.append({"name": stem, "a": str(pa), "b": str(pb), "distance": d})
    if args.json:
        text = json.dumps({"metric": metric.name, "pairs": rows, "only_in_a": only_a, "only_in_b": only_b}, indent=2) + "\n"
    else:
        buf = stdio.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", "a", "b", "distance"])
        for r in rows:
            w.writerow([r["name"], r["a"], r["b"], f"{r['distance']:.8g}"])
        text = buf.getvalue()
    if args.out:
        _write_atomic(args.out, text)
        print(f"robustsim: {len(rows)} pair(s) written to {args.out}"
              + (f"; {len(only_a) + len(only_b)} unmatched" if only_a or only_b else ""), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    _require_files(args.ref, args.x0, args.x1)
    metric = _load_metric(args)
    dev = _device(args.device)
    ref, x0, x1 = (_read(p, metric, dev) for p in (args.ref, args.x0, args.x1))
    d0 = _distance(metric, ref, x0, (args.ref, args.x0))
    d1 = _distance(metric, ref, x1, (args.ref, args.x1))
    closer = "tie" if d0 == d1 else ("x0" if d0 < d1 else "x1")
    result: Dict[str, Any] = {"metric": metric.name, "ref": args.ref, "x0": args.x0, "x1": args.x1,
                              "d0": d0, "d1": d1, "closer": closer, "certified": bool(metric.certified)}
    if metric.certified:
        import torch

        from . import certify

        with torch.no_grad():
            c = certify.two_afc(metric, ref, x0, x1)
        result["certificate"] = {
            "closer": "x1" if int(c.closer[0]) == 1 else "x0",
            "radius": float(c.radius[0]),
            "paper_radius": float(c.paper_radius[0]),
            "perturbed": "ref",
            "units": f"l2 norm in [0,1] pixel units of REF as given ({ref.shape[-1]}×{ref.shape[-2]})",
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"metric     {metric.name}")
    print(f"d(ref, x0) {d0:.6g}   {args.x0}")
    print(f"d(ref, x1) {d1:.6g}   {args.x1}")
    if closer == "tie":
        print("closer     tie (equal distances)")
    else:
        print(f"closer     {closer} ({args.x0 if closer == 'x0' else args.x1})")
    if metric.certified:
        c = result["certificate"]
        print(f"certified  no l2 perturbation of ref smaller than {c['radius']:.4g} can change this answer "
              f"({c['units']}); LipSim paper's radius: {c['paper_radius']:.4g}")
    else:
        print(f"certified  no: {metric.name} is not a Lipschitz metric; an adversary may flip this answer with a tiny perturbation")
    return 0
