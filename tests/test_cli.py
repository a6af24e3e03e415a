"""The robustsim command line: results equal the Python API; bad input -> exit 2 with one line, no traceback."""
from __future__ import annotations

import argparse
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
from robustsim import hub
from robustsim.cli import core as commands
from robustsim import images as rio
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
        main(["distance"])
    assert e.value.code == 2
    assert "robustsim: error:" in capsys.readouterr().err
    code, _, err = run(capsys, "distance", "only-one")  # B is optional for --all-pairs only
    assert_bad_input(code, err, "or one folder with --all-pairs")


def test_console_script_end_to_end(images):
    exe = Path(sys.executable).with_name("robustsim")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustsim.cli"]
    env = {**os.environ, "ROBUSTSIM_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    # the metric is named: the autouse effnet default does not reach a subprocess, and this test is about
    # the console script, not about the default model's certificate (test_shipped_examples_demo has that)
    ok = subprocess.run(cmd + ["compare", images["ref"], images["x0"], images["x1"], "--json", "--metric", "effnet-lite0-cosine"],
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


# --------------------------------------------------------------------------- issue 20: the first ten minutes


def _tiny_lipsim(tmp_path, input_size=32):
    from robustsim.metrics.lipsim import LipSim

    torch.manual_seed(0)
    m = LipSim(input_size=input_size, channels=8, conv_depth=2, linear_depth=1, linear_inner=16, embed_dim=8).eval()
    m.name = "tiny-lipsim"
    return m, str(hub.save(m, tmp_path / "tiny.safetensors"))


def test_compare_on_a_tie_says_what_a_zero_radius_means(capsys, tmp_path, images):
    _, path = _tiny_lipsim(tmp_path)
    twin = tmp_path / "twin.png"
    twin.write_bytes(Path(images["x0"]).read_bytes())
    code, out, _ = run(capsys, "compare", images["ref"], images["x0"], twin, "--metric", path)
    assert code == 0
    assert "smaller than 0" not in out
    line = next(ln for ln in out.splitlines() if ln.startswith("certified"))
    assert "equally close" in line and "not certified" in line and "radius 0" in line
    d0 = next(ln for ln in out.splitlines() if ln.startswith("d(ref, x0)")).split()[2]
    assert line.count(d0) == 2  # both distances are quoted
    code, out, _ = run(capsys, "compare", images["ref"], images["x0"], twin, "--metric", path, "--json")
    rec = json.loads(out)
    assert rec["closer"] == "tie" and rec["certificate"]["radius"] == 0 and rec["certificate"]["tie"] is True
    # a clear decision keeps the positive-radius sentence and is not called a tie
    code, out, _ = run(capsys, "compare", images["ref"], images["x0"], images["x1"], "--metric", path, "--json")
    assert json.loads(out)["certificate"]["tie"] is False


def test_search_on_a_near_tie_explains_the_zero_radius(capsys, tmp_path, images):
    pytest.importorskip("faiss")
    _, path = _tiny_lipsim(tmp_path)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("a.png", "b.png"):  # two stored copies of one image: the top-1 is a tie
        (gallery / name).write_bytes(Path(images["x0"]).read_bytes())
    (gallery / "c.png").write_bytes(Path(images["x1"]).read_bytes())
    idx = tmp_path / "g.idx"
    code, _, err = run(capsys, "index", gallery, "--out", idx, "--metric", path)
    assert code == 0, err
    code, out, _ = run(capsys, "search", idx, images["x0"], "-k", "3", "--metric", path)
    assert code == 0
    head = out.splitlines()[0]
    assert "top-1 not certified" in head and "equally close" in head and "radius 0" not in head
    tied = head.split("(d = ")[1].split(")")[0].split(" and ")  # the two tied distances, quoted
    assert len(tied) == 2 and float(tied[0]) == pytest.approx(float(tied[1]), abs=1e-6)
    assert [float(ln.split()[0]) for ln in out.splitlines()[1:3]] == pytest.approx([float(t) for t in tied], abs=1e-6)


def test_model_names_match_case_insensitively_with_did_you_mean(capsys, images, effnet):
    assert hub.model_spec("EffNet-Lite0-Cosine").name == "effnet-lite0-cosine"
    code, out, _ = run(capsys, "distance", images["ref"], images["x0"], "--metric", "EFFNET-LITE0-COSINE")
    assert code == 0 and float(out) == pytest.approx(api_distance(effnet, images["ref"], images["x0"]), rel=1e-5)
    code, _, err = run(capsys, "distance", images["ref"], images["x0"], "--metric", "EffNet-Lite0-Cosin")
    assert_bad_input(code, err, "did you mean effnet-lite0-cosine")


def test_api_and_cli_agree_on_the_minimum_size(capsys, tmp_path, images):
    from PIL import Image

    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    code, _, err = run(capsys, "distance", images["ref"], tmp_path / "one.png", "--metric", "effnet-lite0-cosine")
    assert_bad_input(code, err, "smaller than the minimum size")
    m = robustsim.load("lipsim-default")  # resizes to 128×128 inside, yet a 1×1 image is refused, not upsampled
    with pytest.raises(robustsim.InputError, match="1×1 is smaller than"):
        m(torch.rand(1, 3, 1, 1), torch.rand(1, 3, 1, 1))
    assert rio.MIN_IMAGE_SIDE == commands.MIN_FILE_SIZE == 2
    assert m(torch.rand(1, 3, 2, 2), torch.rand(1, 3, 2, 2)).shape == (1,)


def _all_parsers():
    from robustsim.cli import _subparsers, build_parser

    root = build_parser()
    return [root, *_subparsers(root)]


def test_every_help_shows_defaults():
    from robustsim.cli import _HelpFormatter

    checked = 0
    for p in _all_parsers():
        text = p.format_help()
        for a in p._actions:
            if _HelpFormatter.shows_default(a) and a.help is not argparse.SUPPRESS:
                checked += 1
                opt = a.option_strings[-1]
                body = text[text.index("options:"):]
                block = body[body.index(opt):]
                assert "default" in block[:400].lower(), f"{p.prog} {opt}: no default in --help"
        assert "--quiet" in text, p.prog
    assert checked > 50


def test_progress_bars_only_on_a_terminal_and_never_with_quiet(capsys, images):
    from tqdm.auto import tqdm

    from robustsim.cli import progress_bars, progress_wanted

    class Tty(stdio.StringIO):
        def isatty(self):
            return True

    assert progress_wanted(False, Tty()) and not progress_wanted(True, Tty())
    assert not progress_wanted(False, stdio.StringIO())  # piped / redirected
    err = Tty()
    with progress_bars(False):
        for _ in tqdm(range(3), file=err, disable=False):
            pass
    assert err.getvalue() == ""
    err = Tty()
    with progress_bars(True):
        for _ in tqdm(range(3), file=err, disable=False, mininterval=0):
            pass
    assert "3/3" in err.getvalue()
    for argv in (["--quiet", "distance", images["ref"], images["x0"]], ["distance", images["ref"], images["x0"], "--quiet"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and float(out) >= 0


def test_distance_all_pairs_over_one_folder(capsys, tmp_path, effnet):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        rio.save_image(real_photo(name, 40), folder / f"{name}.png")
    code, out, err = run(capsys, "distance", folder, "--all-pairs", "--metric", "effnet-lite0-cosine")
    assert code == 0, err
    rows = list(csv.DictReader(stdio.StringIO(out)))
    assert [(Path(r["a"]).stem, Path(r["b"]).stem) for r in rows] == [
        ("astronaut", "chelsea"), ("astronaut", "coffee"), ("chelsea", "coffee")]
    for r in rows:
        assert float(r["distance"]) == pytest.approx(api_distance(effnet, r["a"], r["b"]), rel=1e-4)
    mean = sum(float(r["distance"]) for r in rows) / 3
    assert "3 pair(s) of 3 images" in err and float(err.split("mean distance ")[1].split()[0].rstrip(";")) == pytest.approx(mean, rel=1e-5)
    code, _, err = run(capsys, "distance", folder, "--all-pairs", "--json", "--out", tmp_path / "all.json")
    rec = json.loads((tmp_path / "all.json").read_text())
    assert code == 0 and rec["images"] == 3 and len(rec["pairs"]) == 3
    (tmp_path / "one").mkdir()
    rio.save_image(real_photo("rocket", 40), tmp_path / "one" / "r.png")
    for argv, match in [((tmp_path / "one", "--all-pairs"), "at least 2 images"),
                        ((folder, folder, "--all-pairs"), "takes one folder"),
                        ((folder / "chelsea.png", "--all-pairs"), "not a folder")]:
        code, _, err = run(capsys, "distance", *argv)
        assert_bad_input(code, err, match)


def lpips_random_trunk(spec, weights=None, trunk_weights=None, **kw):
    """LPIPS-alex with the lpips package's real heads and a seeded random trunk (no download)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return robustsim.load("lpips-alex", pretrained_trunk=False)


def test_distance_map_writes_the_lpips_spatial_map(capsys, tmp_path, images):
    import numpy as np

    hub.register(hub.ModelSpec(name="test-lpips-map", builder="test_cli:lpips_random_trunk", description="test"))
    try:
        a, b = tmp_path / "a.png", tmp_path / "b.png"
        x = real_photo("astronaut", 48)
        y = x.clone()
        y[..., 30:, 30:] = 1 - y[..., 30:, 30:]  # one corner changed: the map must light up there only
        rio.save_image(x, a)
        rio.save_image(y, b)
        code, out, err = run(capsys, "distance", a, b, "--metric", "test-lpips-map", "--map", tmp_path / "m.npy")
        assert code == 0, err
        raw = np.load(tmp_path / "m.npy")
        m = lpips_random_trunk(None)
        with torch.no_grad():
            ref = m.spatial_map(rio.load_image(a), rio.load_image(b))[0, 0].numpy()
        assert raw.shape == (48, 48) and np.allclose(raw, ref, atol=1e-6)
        assert raw[36:, 36:].mean() > 3 * raw[:20, :20].mean()
        assert "spatial map written" in err
        code, _, err = run(capsys, "distance", a, b, "--metric", "test-lpips-map", "--map", tmp_path / "m.png")
        heat = rio.load_image(tmp_path / "m.png")
        assert code == 0 and heat.shape == (1, 3, 48, 48)
        assert heat[..., 36:, 36:].mean() > heat[..., :20, :20].mean()
        for argv, match in [(("--metric", "effnet-lite0-cosine", "--map", tmp_path / "e.png"), "needs a metric with a spatial"),
                            (("--metric", "test-lpips-map", "--map", tmp_path / "m.txt"), ".png (heat map) or .npy")]:
            code, _, err = run(capsys, "distance", a, b, *argv)
            assert_bad_input(code, err, match)
    finally:
        hub._REGISTRY.pop("test-lpips-map", None)


def test_attack_writes_into_a_new_folder_by_default(capsys, tmp_path, monkeypatch, images):
    _, path = _tiny_lipsim(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["attack", "embedding", images["x0"], "--metric", path, "--steps", "2", "--eps", "0.5", "--json"]
    for _ in range(2):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
    made = sorted(work.iterdir())
    assert len(made) == 2 and all(p.is_dir() and p.name.startswith("attack-embedding-") for p in made)  # nothing loose in cwd
    assert all((p / "x0_adv.png").is_file() for p in made)  # a second run never overwrites the first
    code, out, _ = run(capsys, *argv, "--out", "chosen")
    assert code == 0 and (work / "chosen" / "x0_adv.png").is_file()
