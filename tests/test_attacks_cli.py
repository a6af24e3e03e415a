"""`robustsim attack ...`: files in, adversarial PNGs out, sizes and decisions of the *saved* files."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import real_photo
from robustsim.cli import main
from robustsim.images import load_image, save_image


@pytest.fixture
def triplet_files(tmp_path):
    ref = real_photo("chelsea", 32)
    g = torch.Generator().manual_seed(0)
    x0 = (ref + 0.06 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    x1 = torch.nn.functional.avg_pool2d(ref, 3, 1, 1, count_include_pad=False)
    paths = []
    for name, t in (("ref", ref), ("x0", x0), ("x1", x1)):
        p = tmp_path / f"{name}.png"
        save_image((t * 255).round() / 255, p)
        paths.append(str(p))
    return paths


def test_attack_2afc_reports_the_saved_files(triplet_files, tmp_path, capsys):
    out = tmp_path / "adv"
    rc = main(["attack", "2afc", *triplet_files, "--metric", "effnet-lite0-cosine", "--eps", "1.0", "--steps", "5",
               "--out", str(out), "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    saved = rep["saved"]["ref"]
    adv = load_image(saved["file"])
    ref = load_image(triplet_files[0])
    delta = (adv - ref).flatten()
    assert saved["l2"] == pytest.approx(float(delta.norm()), abs=1e-5)
    assert saved["linf"] == pytest.approx(float(delta.abs().max()), abs=1e-6)
    assert saved["l2"] <= 1.0 + 1e-6  # rounding toward the clean image keeps the budget
    # rounding moved the perturbation: the report's saved sizes are not the in-memory ones
    assert saved["l2"] <= rep["adversarial"]["ref"]["l2"] + 1e-6
    import robustsim

    m = robustsim.load("effnet-lite0-cosine")
    x0, x1 = load_image(triplet_files[1]), load_image(triplet_files[2])
    with torch.no_grad():
        d0, d1 = float(m(adv, x0)), float(m(adv, x1))
    assert rep["saved"]["d0"] == pytest.approx(d0, rel=1e-4) and rep["saved"]["d1"] == pytest.approx(d1, rel=1e-4)
    assert rep["saved"]["decision"] == int(d1 < d0)
    assert not (out / "x0_adv.png").exists()  # only perturbed images are written


def test_attack_cli_bad_input_exits_2(triplet_files, tmp_path, capsys):
    assert main(["attack", "2afc", *triplet_files, "--eps", "-1", "--steps", "2", "--metric", "effnet-lite0-cosine",
                 "--out", str(tmp_path)]) == 2
    assert "eps must be > 0" in capsys.readouterr().err
    assert main(["attack", "pair", triplet_files[0], str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["attack", "2afc", *triplet_files, "--target", "both"])
    assert e.value.code == 2
