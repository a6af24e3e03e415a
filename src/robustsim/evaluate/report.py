"""Reports: results as JSON, Markdown tables shaped like the papers' tables, PNG plots (matplotlib Agg).

* Table 1 (LipSim Table 1/2 shape): metric × [natural | attack at each ε | certified at 36/72/108 /255].
* Table 2 (R-LPIPS / BAPPS shape): natural (and attacked) score per group (category / ImageNet split / kind).
* Table 3: embedding attack d(x, x+δ) (mean / median / p95 per ε), JND mAP, retrieval top-1.
Plots: certified accuracy vs ε (ours and the paper's radius), embedding-attack histograms.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _label(r: Dict[str, Any]) -> str:
    note = r.get("note")
    return f"{r['metric']} ({note})" if note else r["metric"]


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the header, the separator, then one line per row of formatted cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _having(results: Sequence[Dict[str, Any]], key: str) -> List[Dict[str, Any]]:
    """The results that carry a (non-empty) ``key`` section."""
    return [r for r in results if r.get(key)]


def table_main(results: Sequence[Dict[str, Any]]) -> str:
    """Natural | attacked per ε | certified per ε, one row per metric (2AFC score in %)."""
    att_eps: List[str] = []
    cert_eps: List[str] = []
    threat = ""
    for r in results:
        for e in (r.get("attacked") or {}).get("eps", {}):
            if e not in att_eps:
                att_eps.append(e)
        if r.get("attacked") and not threat:
            t = r["attacked"]["threat"]
            threat = f"{t['method'].upper()} {t['norm']} ({t['target']} perturbed, {t['steps']} steps)"
        for e in (r.get("certified") or {}).get("at", {}):
            if e not in cert_eps:
                cert_eps.append(e)
    head = ["Metric", "n", "Natural"] + [f"{threat.split(' (')[0]} ε={e}" for e in att_eps] + [f"Certified ε={e}" for e in cert_eps]
    rows = []
    for r in results:
        row = [_label(r), str(r["n"]), _pct(r["natural"]["overall"])]
        row += [_pct(((r.get("attacked") or {}).get("eps", {}).get(e) or {}).get("overall")) for e in att_eps]
        row += [_pct(((r.get("certified") or {}).get("at", {}).get(e) or {}).get("overall"))
                if r.get("certified") else "n/a (not certified)" for e in cert_eps]
        rows.append(row)
    table = _md_table(head, rows)
    if threat:
        table += f"\n\nAttack: {threat}. Certified: reference perturbed, sound radius of `robustsim.certify.two_afc`."
    return table


def table_groups(results: Sequence[Dict[str, Any]]) -> str:
    """Natural 2AFC score per group (and overall), one row per metric."""
    groups: List[str] = []
    for r in results:
        for g in r["natural"].get("groups", {}):
            if g not in groups:
                groups.append(g)
    if not groups:
        return ""
    return _md_table(["Metric"] + groups + ["overall"],
                     [[_label(r)] + [_pct(r["natural"]["groups"].get(g)) for g in groups] + [_pct(r["natural"]["overall"])]
                      for r in results])


def table_embedding(results: Sequence[Dict[str, Any]]) -> str:
    rows = _having(results, "embedding")
    if not rows:
        return ""
    return _md_table(["Metric", "ε", "mean d(x, x+δ)", "median", "p95", "max"],
                     [[_label(r), e] + [f"{s[k]:.4f}" for k in ("mean", "median", "p95", "max")]
                      for r in rows for e, s in r["embedding"]["eps"].items()])


def table_retrieval(results: Sequence[Dict[str, Any]]) -> str:
    rows = _having(results, "retrieval")
    if not rows:
        return ""
    cert = sorted({k for r in rows for k in (r["retrieval"].get("top1_certified") or {})}, key=lambda s: float(s.split("/")[0]))
    head = ["Metric", "queries", "gallery", "top-1 clean", "top-1 attacked (ε)"] + [f"certified top-1 ε={e}" for e in cert]
    table = []
    for r in rows:
        t = r["retrieval"]
        row = [_label(r), str(t["n_queries"]), str(t["n_gallery"]), _pct(t["top1_clean"]),
               f"{_pct(t['top1_attacked'])} (ε={t['eps']:g})"]
        row += [_pct((t.get("top1_certified") or {}).get(e)) if t.get("top1_certified") else "n/a" for e in cert]
        table.append(row)
    return _md_table(head, table)


def table_jnd(results: Sequence[Dict[str, Any]]) -> str:
    rows = _having(results, "jnd_map")
    if not rows:
        return ""
    groups = sorted({g for r in rows for g in r["jnd_map"].get("groups", {})})
    return _md_table(["Metric"] + groups + ["JND mAP"],
                     [[_label(r)] + [_pct(r["jnd_map"]["groups"].get(g)) for g in groups] + [_pct(r["jnd_map"]["overall"])]
                      for r in rows])


def markdown(results: Sequence[Dict[str, Any]], title: str = "Results", preamble: str = "") -> str:
    """All tables that apply to ``results`` as one Markdown document."""
    parts = [f"# {title}", preamble.strip()] if preamble else [f"# {title}"]
    twoafc = [r for r in results if r.get("natural")]
    if twoafc:
        parts += ["## 2AFC score (%): natural, attacked, certified", table_main(twoafc)]
        g = table_groups(twoafc)
        if g:
            parts += ["## Natural 2AFC score (%) per group", g]
    for title_, fn in (("## JND mAP (%)", table_jnd), ("## Embedding attack: d(x, x+δ)", table_embedding),
                       ("## Top-1 retrieval (%)", table_retrieval)):
        t = fn(results)
        if t:
            parts += [title_, t]
    skipped = [(r["metric"], r.get("skipped", 0)) for r in results if r.get("skipped")]
    if skipped:
        parts.append("Unreadable items skipped: " + ", ".join(f"{m}: {k}" for m, k in skipped))
    return "\n\n".join(p for p in parts if p) + "\n"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: PathLike) -> Path:
    """Write the figure (creating the folder) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_certified(results: Sequence[Dict[str, Any]], path: PathLike) -> Optional[Path]:
    """Certified 2AFC accuracy vs ε for every certified result (solid: ours, dashed: the paper's radius)."""
    rows = _having(results, "certified")
    if not rows:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for r in rows:
        c = r["certified"]
        eps255 = [e * 255 for e in c["eps"]]
        line, = ax.plot(eps255, [100 * v for v in c["curve"]], label=f"{_label(r)} (sound radius)")
        if c.get("paper_curve"):
            ax.plot(eps255, [100 * v for v in c["paper_curve"]], ls="--", color=line.get_color(), label=f"{r['metric']} (paper formula)")
    for e in (36, 72, 108):
        ax.axvline(e, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("l2 budget ε (×1/255)")
    ax.set_ylabel("certified 2AFC score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_embedding_hist(results: Sequence[Dict[str, Any]], path: PathLike) -> Optional[Path]:
    """Histograms of d(x, x+δ) after the embedding attack, one panel per metric, one colour per ε."""
    rows = _having(results, "embedding")
    if not rows:
        return None
    fig, axes = pyplot().subplots(1, len(rows), figsize=(4 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows):
        for e, s in r["embedding"]["eps"].items():
            ax.hist(s["distances"], bins=20, range=(0, max(1.0, s["max"])), alpha=0.5, label=f"ε={e}")
        ax.set_title(_label(r), fontsize=8)
        ax.set_xlabel("d(x, x+δ)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("images")
    return save_figure(fig, path)


def write_report(results: Sequence[Dict[str, Any]], out_dir: PathLike, title: str = "Results", preamble: str = "",
                 stem: str = "results") -> Dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and the plots that apply into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    paths["json"] = out / f"{stem}.json"
    paths["json"].write_text(json.dumps(list(results), indent=1))
    cert = plot_certified(results, out / f"{stem}_certified.png")
    hist = plot_embedding_hist(results, out / f"{stem}_embedding_hist.png")
    md = markdown(results, title, preamble)
    if cert:
        paths["certified_png"] = cert
        md += f"\n![certified 2AFC accuracy]({cert.name})\n"
    if hist:
        paths["embedding_png"] = hist
        md += f"\n![embedding attack histogram]({hist.name})\n"
    paths["md"] = out / f"{stem}.md"
    paths["md"].write_text(md)
    return paths
