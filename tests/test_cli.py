"""The robustsim command line: results equal the Python API; bad input -> exit 2 with one line, no traceback."""
from __future__ import annotations

import csv
import io as stdio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import real_photo

import robustsim
from robustsim import commands, hub
from robustsim import io as rio
from robustsim.cli import main
from robustsim.metrics.embedding import EmbeddingMetric

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def effnet():
    return robustsim.load("effnet-lite0-cosine")


@pytest.fixture
def images(tmp_path):
    """ref / mild blur / other photo as PNG files (sizes differ: effnet resizes each)."""
    ref = real_photo("chelsea", 48)
    mild = F.avg_pool2d(F.pad(ref, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    paths = {
        "ref": rio.save_image(ref, tmp_path / "ref.png"),
        "x0": rio.save_image(mild, tmp_path / "x0.png"),
        "x1": rio.save_image(real_photo("coffee", 40), tmp_path / "x1.png"),
    }
    return {k: str(v) for k, v in paths.items()}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(code, err, match):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustsim: error: ") and match in lines[0], err
    assert "Traceback" not in err


def api_distance(metric, a, b):
    with torch.no_grad():
        return float(metric(rio.load_image(a), rio.load_image(b)))



@pytest.fixture(autouse=True)
def _effnet_default(monkeypatch):
    """These tests check CLI mechanics against effnet-lite0-cosine (their expected numbers are computed with it)."""
    from robustsim import hub

    monkeypatch.setattr(hub, "DEFAULT_MODEL", "effnet-lite0-cosine")

# --------------------------------------------------------------------------- models


def test_models_lists_names_weights_and_default(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    from robustsim import hub

    line = next(ln for ln in out.splitlines() if ln.startswith(hub.DEFAULT_MODEL + " ") or ln.startswith(hub.DEFAULT_MODEL + "*"))
    assert "*" in line and "local" in line
    effnet = next(ln for ln in out.splitlines() if ln.startswith("effnet-lite0-cosine"))
    assert "local" in effnet
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(robustsim.list_models())
    assert rows[hub.DEFAULT_MODEL]["default"] and rows["effnet-lite2-cosine"]["weights_present"]
    assert sum(r["default"] for r in rows.values()) == 1


# --------------------------------------------------------------------------- distance


def test_distance_two_files(capsys, images, effnet):
    code, out, err = run(capsys, "distance", images["ref"], images["x1"])
    assert code == 0 and err == ""
    expected = api_distance(effnet, images["ref"], images["x1"])
    assert float(out) == pytest.approx(expected, rel=1e-5)
    code, out, _ = run(capsys, "distance", images["ref"], images["x0"], "--json", "--metric", "effnet-lite0-cosine", "--device", "cpu")
    rec = json.loads(out)
    assert rec["metric"] == "effnet-lite0-cosine" and rec["a"] == images["ref"]
    assert rec["distance"] == pytest.approx(api_distance(effnet, images["ref"], images["x0"]), rel=1e-5)


def _folders(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    for name, photo in [("cat", "chelsea"), ("cup", "coffee"), ("lonely", "rocket")]:
        rio.save_image(real_photo(photo, 32), a / f"{name}.png")
    rio.save_image(real_photo("chelsea", 40), b / "cat.jpg")  # paired by stem across formats and sizes
    rio.save_image(real_photo("astronaut", 32), b / "cup.png")
    rio.save_image(real_photo("camera", 32), b / "stray.bmp")
    (b / "notes.txt").write_text("not an image")
    return a, b


def test_distance_folders_csv_to_stdout(capsys, tmp_path, effnet):
    a, b = _folders(tmp_path)
    code, out, err = run(capsys, "distance", a, b)
    assert code == 0
    rows = list(csv.DictReader(stdio.StringIO(out)))
    assert [r["name"] for r in rows] == ["cat", "cup"]
    for r in rows:
        assert float(r["distance"]) == pytest.approx(api_distance(effnet, r["a"], r["b"]), rel=1e-5)
    assert Path(rows[0]["b"]).name == "cat.jpg"
    assert float(rows[0]["distance"]) < float(rows[1]["distance"])  # same cat vs cup/astronaut
    assert f"1 image(s) only in {a}: lonely" in err and f"1 image(s) only in {b}: stray" in err


def test_distance_folders_out_file_and_json(capsys, tmp_path):
    a, b = _folders(tmp_path)
    out_file = tmp_path / "d.csv"
    code, out, err = run(capsys, "distance", a, b, "--out", out_file)
    assert code == 0 and out == ""
    assert "2 pair(s) written" in err and "2 unmatched" in err
    assert out_file.read_text().splitlines()[0] == "name,a,b,distance"
    code, out, _ = run(capsys, "distance", a, b, "--json")
    rec = json.loads(out)
    assert [p["name"] for p in rec["pairs"]] == ["cat", "cup"] and rec["only_in_a"] == ["lonely"] and rec["only_in_b"] == ["stray"]


def test_distance_folders_failure_writes_nothing(capsys, tmp_path):
    a, b = _folders(tmp_path)
    out_file = tmp_path / "d.csv"
    out_file.write_text("previous results\n")
    (b / "cup.png").write_bytes((b / "cup.png").read_bytes()[:100])  # truncated, second pair
    code, out, err = run(capsys, "distance", a, b, "--out", out_file)
    assert code == 2 and "cup.png" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert out_file.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "d.csv"]
    code, _, err = run(capsys, "distance", a, b, "--out", tmp_path / "missing" / "d.csv")
    assert code == 2 and "no such directory" in err


def test_distance_folder_edge_cases(capsys, tmp_path, images):
    a, b = tmp_path / "E1", tmp_path / "E2"
    a.mkdir(), b.mkdir()
    rio.save_image(real_photo("chelsea", 20), a / "x.png")
    rio.save_image(real_photo("chelsea", 20), b / "y.png")
    code, _, err = run(capsys, "distance", a, b)
    assert code == 2 and "no images with the same name" in err
    rio.save_image(real_photo("chelsea", 20), a / "y.png")
    rio.save_image(real_photo("chelsea", 20), a / "y.jpg")
    code, _, err = run(capsys, "distance", a, b)
    assert_bad_input(code, err, "pairing by name is ambiguous")
    code, _, err = run(capsys, "distance", a, images["ref"])
    assert_bad_input(code, err, "not a folder and a file")
    code, _, err = run(capsys, "distance", images["ref"], images["x0"], "--out", tmp_path / "o.csv")
    assert_bad_input(code, err, "--out applies to folder mode")


# --------------------------------------------------------------------------- compare


def test_compare_text_and_json(capsys, images, effnet):
    code, out, _ = run(capsys, "compare", images["ref"], images["x0"], images["x1"])
    assert code == 0
    assert f"closer     x0 ({images['x0']})" in out and "certified  no" in out
    code, out, _ = run(capsys, "compare", images["ref"], images["x1"], images["x0"], "--json")
    rec = json.loads(out)
    assert rec["closer"] == "x1" and rec["certified"] is False and "certificate" not in rec
    assert rec["d0"] == pytest.approx(api_distance(effnet, images["ref"], images["x1"]), rel=1e-5)
    assert rec["d1"] == pytest.approx(api_distance(effnet, images["ref"], images["x0"]), rel=1e-5)


def test_compare_prints_the_certificate_of_a_certified_metric(capsys, tmp_path, images):
    from robustsim import certify
    from robustsim.metrics.lipsim import LipSim

    m = LipSim(input_size=32, channels=8, conv_depth=2, linear_depth=1, linear_inner=16, embed_dim=8).eval()
    m.name = "tiny-lipsim"
    path = hub.save(m, tmp_path / "tiny.safetensors")
    code, out, _ = run(capsys, "compare", images["ref"], images["x0"], images["x1"], "--metric", path, "--json")
    assert code == 0
    rec = json.loads(out)
    ref, x0, x1 = (rio.load_image(images[k]) for k in ("ref", "x0", "x1"))
    with torch.no_grad():
        c = certify.two_afc(m, ref, x0, x1)
    assert rec["certified"] is True
    assert rec["certificate"]["closer"] == ("x1" if int(c.closer[0]) else "x0")
    assert rec["certificate"]["radius"] == pytest.approx(float(c.radius[0]), rel=1e-5)
    assert rec["certificate"]["paper_radius"] == pytest.approx(float(c.paper_radius[0]), rel=1e-5, nan_ok=True)
    code, out, _ = run(capsys, "compare", images["ref"], images["x0"], images["x1"], "--metric", path)
    assert code == 0 and "certified  no l2 perturbation of ref smaller than" in out and "48×48" in out


# --------------------------------------------------------------------------- bad input and exit codes


def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, images):
    (tmp_path / "text.png").write_text("hello")
    rio.save_image(torch.rand(1, 3, 8, 8), tmp_path / "tiny.png")
    from PIL import Image

    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    cases = [
        (("distance", images["ref"], tmp_path / "absent.png"), "no such file"),
        (("compare", images["ref"], images["x0"], tmp_path / "absent.png"), "no such file"),
        (("compare", images["ref"], images["x0"], tmp_path), "is a directory"),
        (("distance", images["ref"], tmp_path / "text.png"), "not an image file"),
        (("distance", images["ref"], tmp_path / "tiny.png"), "smaller than the minimum size 16×16"),
        (("distance", images["ref"], tmp_path / "one.png"), "smaller than the minimum size"),
        (("distance", images["ref"], images["x0"], "--metric", "effnet-lite0-cosin"), "did you mean effnet-lite0-cosine"),
        (("distance", images["ref"], images["x0"], "--device", "nonsense"), "device 'nonsense' is not usable"),
        (("distance", images["ref"], images["x0"], "--metric", tmp_path / "text.png"), "safetensors"),
    ]
    for argv, match in cases:
        code, _, err = run(capsys, *argv)
        assert_bad_input(code, err, match)


def tiny_builder(spec, weights=None, trunk_weights=None, **kw):
    """A metric without a native size (any input size, but equal sizes)."""
    return EmbeddingMetric(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1)), input_size=None)


def test_metric_without_native_size_needs_equal_sizes(capsys, images):
    hub.register(hub.ModelSpec(name="test-anysize", builder="test_cli:tiny_builder", description="test"))
    try:
        code, _, err = run(capsys, "distance", images["ref"], images["x1"], "--metric", "test-anysize")
        assert_bad_input(code, err, "has no native size, so it needs images of equal size")
        code, out, _ = run(capsys, "distance", images["ref"], images["x0"], "--metric", "test-anysize")
        assert code == 0 and float(out) >= 0
    finally:
        hub._REGISTRY.pop("test-anysize", None)


def test_internal_errors_exit_1_and_usage_errors_exit_2(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(commands, "cmd_models", broken)
    code, _, err = run(capsys, "models")
    assert code == 1 and "internal error: RuntimeError: boom" in err
    with pytest.raises(SystemExit) as e:
        main(["distance", "only-one"])
    assert e.value.code == 2
    assert "robustsim: error:" in capsys.readouterr().err


def test_console_script_end_to_end(images):
    exe = Path(sys.executable).with_name("robustsim")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustsim.cli"]
    env = {**os.environ, "ROBUSTSIM_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(cmd + ["compare", images["ref"], images["x0"], images["x1"], "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["closer"] == "x0"


def test_shipped_examples_demo(capsys):
    """`make demo`: the default model, offline, says x0 (mild blur) is closer than x1 (JPEG + noise)."""
    ex = REPO / "examples"
    code, out, _ = run(capsys, "compare", ex / "ref.png", ex / "x0.png", ex / "x1.png", "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["metric"] == hub.DEFAULT_MODEL and rec["closer"] == "x0" and rec["d1"] > 2 * rec["d0"]
