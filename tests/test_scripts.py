"""The evaluation scripts behind docs/MODELS.md and docs/TRAINING.md: tables and plots from their JSON."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _shipped_run() -> dict:
    eps = [i * 0.1 for i in range(31)]
    cert = {"eps": eps, "curve": [max(0.0, 0.8 - e / 4) for e in eps], "paper_curve": [max(0.0, 0.8 - e) for e in eps],
            "at": {"36/255": {"overall": 0.75}, "72/255": {"overall": 0.7}, "108/255": {"overall": 0.625}}}
    row = lambda nat, att, c=None: {"natural": nat, "natural_on_attacked_subset": nat,  # noqa: E731
                                    "attacked": dict(zip(("0.5", "1", "2", "3"), att)), **({"certified": c} if c else {})}
    return {"student": "lipsim-default", "teacher": "effnet-lite0-cosine", "n": 400, "n_attack": 50, "steps": 50,
            "eps": [0.5, 1.0, 2.0, 3.0],
            "results": {"teacher-labelled/student": row(0.828, [0.68, 0.52, 0.36, 0.18], cert),
                        "teacher-labelled/teacher": row(1.0, [0.04, 0.02, 0.0, 0.0]),
                        "ordering/student": row(1.0, [0.78, 0.58, 0.36, 0.2], cert)}}


def test_eval_shipped_tables_and_replot(tmp_path, monkeypatch):
    mod = _script("eval_shipped")
    out = _shipped_run()
    md = mod.markdown(out)
    lines = [ln for ln in md.splitlines() if ln.startswith("| lipsim-default") or ln.startswith("| effnet")]
    assert lines[0] == ("| lipsim-default | 82.8% | 82.8% | 68.0% | 52.0% | 36.0% | 18.0% | 75.0% | 70.0% | 62.5% |")
    assert lines[1].startswith("| effnet-lite0-cosine | 100.0% |") and lines[1].endswith("| — | — | — |")
    assert len(lines) == 3  # the ordering suite has no teacher row here: it is left out, not invented
    src = tmp_path / "run.json"
    src.write_text(json.dumps(out))
    png, md_path = tmp_path / "fig" / "plot.png", tmp_path / "t.md"
    monkeypatch.setattr(sys, "argv", ["eval_shipped", "--replot", str(src), "--plot", str(png), "--md", str(md_path)])
    mod.main()
    assert md_path.read_text() == md
    with Image.open(png) as im:
        assert im.size[0] > 1.8 * im.size[1]  # one panel per suite, side by side
    monkeypatch.setattr(sys, "argv", ["eval_shipped", "--replot", str(src)])
    with pytest.raises(SystemExit, match="--plot and/or --md"):
        mod.main()


def test_compare_students_table():
    mod = _script("compare_students")
    rows = [{"student": "a.safetensors", "cosine_to_teacher": 0.4351, "median_norm": 9.83,
             "teacher-labelled": {"natural": 0.442, "attacked": 0.375,
                                  "certified": {"36/255": 0.412, "72/255": 0.372, "108/255": 0.342}},
             "ordering": {"natural": 0.998, "attacked": 0.825, "certified": None}}]
    args = type("A", (), {"eps": 1.0})()
    table = mod.markdown(rows, args).splitlines()
    assert table[0].startswith("| student | cos to teacher |") and "APGD ε=1" in table[0]
    assert table[2] == "| a.safetensors | 0.435 | 9.83 | 44.2% | 99.8% | 37.5% / 82.5% | 41.2% / 37.2% / 34.2% |"
