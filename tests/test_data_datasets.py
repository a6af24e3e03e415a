"""BAPPS / NIGHTS readers, layout validation and the download+extract helper, on generated datasets
in the exact official layouts (real photo crops as images)."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from _fake_datasets import make_bapps_2afc, make_bapps_jnd, make_nights
from robustsim.data.bapps import BAPPS2AFC, BAPPSJND
from robustsim.errors import CorruptImageError
from robustsim.images import read_image
from robustsim.data.night import Nights
from robustsim.errors import InputError


@pytest.fixture(scope="module")
def bapps_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bapps")
    judges = make_bapps_2afc(root, "val", ("traditional", "cnn"), n=3)
    sames = make_bapps_jnd(root, n=4)
    return root, judges, sames


def test_bapps_2afc_reads_images_and_judges(bapps_root):
    root, judges, _ = bapps_root
    ds = BAPPS2AFC(root, "val", categories=["traditional", "cnn"], load_size=None)
    assert len(ds) == 6 and [ds.group(i) for i in range(6)] == ["traditional"] * 3 + ["cnn"] * 3
    ref, p0, p1, lab, j = ds[4]
    assert ref.shape == (3, 32, 32) and j == pytest.approx(judges[4], abs=1e-6)
    assert lab == int(judges[4] > 0.5)
    assert torch.equal(ref, read_image(ds.items[4][1]))
    # root may also be the 2afc folder itself; load_size resizes
    ds64 = BAPPS2AFC(root / "2afc", "val", categories="cnn", load_size=64)
    assert len(ds64) == 3 and ds64[0][0].shape == (3, 64, 64)
    # a judged-by-pixels sanity check: the generated p0/p1 ordering agrees with the judges
    r, a, b, lab, j = BAPPS2AFC(root, "val", categories=["cnn"], load_size=None).tensors()
    d0, d1 = (r - a).flatten(1).norm(dim=1), (r - b).flatten(1).norm(dim=1)
    assert torch.equal((d1 < d0).long(), lab)


def test_bapps_layout_errors_say_what_is_missing(tmp_path, bapps_root):
    root, _, _ = bapps_root
    with pytest.raises(InputError, match="dataset root not found"):
        BAPPS2AFC(tmp_path / "nope")
    with pytest.raises(InputError, match="not a BAPPS root"):
        BAPPS2AFC(tmp_path)
    with pytest.raises(InputError, match="unknown BAPPS 2AFC split 'test'"):
        BAPPS2AFC(root, "test")
    with pytest.raises(InputError, match="superres.*missing folder"):
        BAPPS2AFC(root, "val")  # only two categories were generated
    with pytest.raises(InputError, match="unknown BAPPS 2AFC val categories"):
        BAPPS2AFC(root, "val", categories=["mix"])
    with pytest.raises(InputError, match="split folder missing"):
        BAPPS2AFC(root, "train")
    # missing judge files are named
    r2 = tmp_path / "b2"
    make_bapps_2afc(r2, "val", ("color",), n=3)
    (r2 / "2afc/val/color/judge/000001.npy").unlink()
    with pytest.raises(InputError, match=r"missing judge files for 1 of 3 triplets: 000001"):
        BAPPS2AFC(r2, "val", categories=["color"])
    with pytest.raises(InputError, match="empty selection"):
        BAPPS2AFC(root, "val", categories=["cnn"], limit=0)


def test_corrupted_image_and_judge_raise_on_access(tmp_path):
    make_bapps_2afc(tmp_path, "val", ("deblur",), n=2)
    (tmp_path / "2afc/val/deblur/p1/000001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    np.save(tmp_path / "2afc/val/deblur/judge/000000.npy", np.array([1.7]))
    ds = BAPPS2AFC(tmp_path, "val", categories=["deblur"])
    with pytest.raises(CorruptImageError, match="000001.png"):
        ds[1]
    with pytest.raises(CorruptImageError, match="judge"):
        ds[0]


def test_bapps_jnd(bapps_root, tmp_path):
    root, _, sames = bapps_root
    ds = BAPPSJND(root, load_size=None)
    assert len(ds) == 8 and ds.group(5) == "cnn"
    a, b, s = ds[5]
    assert a.shape == b.shape == (3, 32, 32) and s == pytest.approx(sames[5])
    with pytest.raises(InputError, match="only has a 'val' split"):
        BAPPSJND(root, split="train")
    with pytest.raises(InputError, match="not a BAPPS root"):
        BAPPSJND(tmp_path)


def test_nights_filters_votes_and_imagenet(tmp_path):
    votes = [6, 5, 7, 4, 6, 3, 8, 6, 6, 6, 6, 6]
    rows = make_nights(tmp_path, n=12, votes=votes)
    test = Nights(tmp_path, "test", load_size=None)
    expect = [r for r, v in zip(rows, votes) if v >= 6 and r["split"] == "test"]
    assert len(test) == len(expect) and len(test) >= 3
    inet = Nights(tmp_path, "test_imagenet", load_size=None)
    no = Nights(tmp_path, "test_no_imagenet", load_size=None)
    assert len(inet) + len(no) == len(test)
    assert {test.group(i) for i in range(len(test))} <= {"imagenet", "no_imagenet"}
    ref, left, right, lab, j = test[0]
    assert ref.shape == (3, 32, 32) and j in (0.0, 1.0) and lab == int(j)
    assert Nights(tmp_path.parent / tmp_path.name, "train", load_size=48)[0][0].shape == (3, 48, 48)
    assert len(Nights(tmp_path, "test", min_votes=0)) > len(test)


def test_nights_errors(tmp_path):
    with pytest.raises(InputError, match="data.csv missing"):
        Nights(tmp_path)
    make_nights(tmp_path, n=4)
    with pytest.raises(InputError, match="unknown NIGHTS split 'testing'"):
        Nights(tmp_path, "testing")
    with pytest.raises(InputError, match="empty selection"):
        Nights(tmp_path, "train")
    (tmp_path / "distort/000/002_1.png").unlink()
    with pytest.raises(InputError, match=r"1 image file\(s\) listed in data.csv are missing.*002_1.png"):
        Nights(tmp_path, "test")
    text = (tmp_path / "data.csv").read_text().replace("is_imagenet", "imagenet")
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(InputError, match="missing column.*is_imagenet"):
        Nights(tmp_path, "test")


def test_fetch_extracts_validates_and_skips_when_done(tmp_path, monkeypatch):
    from robustsim.data import fetch

    src = tmp_path / "src"
    fetch_val_cats = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
    make_bapps_2afc(src, "val", fetch_val_cats, n=1, size=16)
    arc = tmp_path / "twoafc_val.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src / "2afc" / "val", arcname="val")  # the official archive holds val/... (extracted into 2afc/)
    root = tmp_path / "data"
    # offline mode refuses before touching anything network-related
    with pytest.raises(InputError, match="offline mode is on"):
        fetch.fetch_dataset("bapps-2afc-val", root, progress=False)
    monkeypatch.delenv("ROBUSTSIM_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetch.fetch_dataset("bapps-2afc-val", root, progress=False, urls=(arc.as_uri(),))
    assert len(BAPPS2AFC(root, "val")) == len(fetch_val_cats)
    assert not (root / "twoafc_val.tar.gz").exists()  # archive removed after a validated extraction
    # second call: marker present, nothing downloaded (a bad URL would fail otherwise)
    fetch.fetch_dataset("bapps-2afc-val", root, progress=False, urls=("file:///nonexistent/x.tar.gz",))
    fetch.check_layout("bapps-2afc-val", root)
    with pytest.raises(InputError, match="not a BAPPS root"):
        fetch.check_layout("bapps-jnd", root)
    (root / "jnd" / "val" / "cnn" / "p0").mkdir(parents=True)
    with pytest.raises(InputError, match="traditional: missing folder"):
        fetch.check_layout("bapps-jnd", root)


def test_extract_refuses_path_traversal(tmp_path):
    from robustsim.data.fetch import extract

    evil = tmp_path / "evil.tar"
    payload = tmp_path / "p.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tf:
        tf.add(payload, arcname="../outside.txt")
    with pytest.raises(InputError, match="outside"):
        extract(evil, tmp_path / "dest", progress=False)
    assert not (tmp_path / "outside.txt").exists()


def test_data_cli_check_reports_missing(tmp_path, capsys):
    from robustsim.cli import main

    assert main(["data", "check", "bapps-jnd", "--root", str(tmp_path)]) == 2
    assert "not a BAPPS root" in capsys.readouterr().err
    make_bapps_jnd(tmp_path, n=2)
    assert main(["data", "check", "bapps-jnd", "--root", str(tmp_path)]) == 0
    assert main(["data", "photos"]) == 0
    out = capsys.readouterr().out
    assert "heldout" in out and "coffee" in out and "CC0" in out
