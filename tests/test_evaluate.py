"""Evaluation harness: scores against references, certified accounting, resumability (interrupted runs),
bad input, reports and the CLI. Tiny models on real-photo suites; each test takes seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fake_datasets import make_bapps_2afc
from robustsim import certify
from robustsim.data.bapps import BAPPS2AFC
from robustsim.errors import CorruptImageError
from robustsim.data.photos import OrderingSuite
from robustsim.errors import InputError
from robustsim.evaluate import jnd as J
from robustsim.evaluate import twoafc as T
from robustsim.evaluate.certified import certified_accuracy, certified_curve
from robustsim.metrics.base import Metric
from robustsim.metrics.embedding import EmbeddingMetric


class PixelL2(Metric):
    name = "pixel-l2"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def distance(self, x, y):
        self.calls += 1
        return (x - y).pow(2).flatten(1).mean(1)


def tiny_embedding(seed=0):
    torch.manual_seed(seed)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    m = EmbeddingMetric(enc, input_size=None)
    m.name = "tiny-embed"
    return m.eval()


def tiny_lipsim(seed=0):
    from robustsim.metrics.lipsim import LipSim

    torch.manual_seed(seed)
    m = LipSim(input_size=16, stem="unshuffle2", channels=12, conv_depth=1, conv_inner=4, pool=(2,),
               linear_depth=1, linear_inner=16, embed_dim=16)
    m.name = "tiny-lipsim"
    return m.eval()


@pytest.fixture(scope="module")
def suite():
    return OrderingSuite(n=22, size=16, seed=3)


# ------------------------------------------------------------------ scores


def test_twoafc_score_formula():
    d0 = torch.tensor([0.1, 0.5, 0.3, 0.2])
    d1 = torch.tensor([0.2, 0.4, 0.3, 0.9])
    j = torch.tensor([0.25, 0.25, 0.7, 1.0])
    assert torch.allclose(T.twoafc_scores(d0, d1, j), torch.tensor([0.75, 0.25, 0.5, 0.0], dtype=torch.float64))
    with pytest.raises(InputError, match="same shape"):
        T.twoafc_scores(d0, d1[:2], j)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 60), st.booleans())
def test_jnd_map_matches_sklearn(seed, n, ties):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    d = rng.integers(0, 5, n).astype(float) if ties else rng.random(n)
    same = (rng.random(n) < 0.4).astype(float)
    same[0] = 1.0
    assert J.jnd_map(d, same, interpolated=False) == pytest.approx(average_precision_score(same, -d), abs=1e-12)


def test_jnd_map_interpolated_matches_lpips_reference():
    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import lpips

    rng = np.random.default_rng(1)
    d = rng.random(200)
    same = rng.choice([0.0, 0.25, 0.5, 1.0], 200)  # soft judgments, as in BAPPS JND
    o = np.argsort(d)
    tp, fp = np.cumsum(same[o]), np.cumsum(1 - same[o])
    ref = lpips.voc_ap(tp / same.sum(), tp / (tp + fp))  # lpips.trainer.score_jnd_dataset's computation
    assert J.jnd_map(d, same) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(InputError, match="no pair was judged"):
        J.jnd_map(d, np.zeros(200))


def test_certified_accuracy_counts_correct_and_certified():
    s = torch.tensor([1.0, 1.0, 0.0, 1.0])
    r = torch.tensor([0.5, 0.1, 0.9, 0.0])
    assert certified_accuracy(s, r, 0.0) == 0.5
    assert certified_accuracy(s, r, 0.2) == 0.25
    assert torch.allclose(certified_curve(s, r, [0.0, 0.2, 1.0]), torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64))


# ------------------------------------------------------------------ 2AFC evaluation


def test_natural_2afc_on_ordering_suite(suite):
    res = T.evaluate_2afc(PixelL2(), suite, batch_size=8, progress=False)
    assert res["n"] == 22 and res["natural"]["overall"] == 1.0  # pixel distance orders same-kind distortions
    assert set(res["natural"]["groups"]) == set(suite.kinds)
    emb = tiny_embedding()
    res2 = T.evaluate_2afc(emb, suite, batch_size=5, progress=False)
    ref, x0, x1, lab, j = suite.tensors()
    d0, d1 = emb(ref, x0), emb(ref, x1)
    expect = T.twoafc_scores(d0, d1, j).mean()
    assert res2["natural"]["overall"] == pytest.approx(float(expect), abs=1e-9)


def test_certified_2afc_uses_certificates_and_one_forward_pass(suite):
    m = tiny_lipsim()
    calls = {"n": 0}
    m.encoder.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + a[1][0].shape[0]))
    nat = T.evaluate_2afc(m, suite, batch_size=11, progress=False)
    n_nat, calls["n"] = calls["n"], 0
    cer = T.evaluate_2afc(m, suite, batch_size=11, certified=True, progress=False)
    assert calls["n"] == n_nat == 3 * 22  # the certified run costs exactly the natural forward passes
    assert cer["natural"]["overall"] == pytest.approx(nat["natural"]["overall"])
    ref, x0, x1, lab, j = suite.tensors()
    c = certify.two_afc(m, ref, x0, x1)
    sc = T.twoafc_scores(c.d0, c.d1, j)
    for e in T.PAPER_CERT_EPS:
        key = f"{e * 255:.0f}/255"
        assert cer["certified"]["at"][key]["overall"] == pytest.approx(float((sc * c.certified(e).double()).mean()))
        assert cer["certified"]["at"][key]["overall"] <= cer["natural"]["overall"]
    assert cer["certified"]["curve"][0] == pytest.approx(float((sc * (c.radius > 0).double()).mean()))
    assert all(a >= b for a, b in zip(cer["certified"]["curve"], cer["certified"]["curve"][1:]))  # non-increasing
    with pytest.raises(InputError, match="not a certified"):
        T.evaluate_2afc(PixelL2(), suite, certified=True, progress=False)


def test_attacked_2afc_never_beats_natural(suite):
    m = tiny_embedding()
    spec = T.AttackSpec("pgd", "l2", [0.05, 1.0], "ref", steps=5)
    res = T.evaluate_2afc(m, suite, batch_size=11, attack=spec, limit=11, progress=False)
    a = res["attacked"]["eps"]
    assert set(a) == {"0.05", "1"} and a["1"]["n"] == 11
    assert a["1"]["overall"] <= res["natural"]["overall"] and a["1"]["overall"] <= a["0.05"]["overall"] + 1e-9
    assert a["1"]["overall"] < 0.5  # 1.0 l2 on a 16×16 crop breaks an untrained metric
    with pytest.raises(InputError, match="positive"):
        T.AttackSpec(eps=[0.0])


class _Interrupting(PixelL2):
    def __init__(self, stop_at):
        super().__init__()
        self.stop_at = stop_at

    def distance(self, x, y):
        if self.calls + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().distance(x, y)


def test_interrupted_run_resumes_without_recomputing(suite, tmp_path):
    full = T.evaluate_2afc(PixelL2(), suite, batch_size=4, progress=False)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        T.evaluate_2afc(_Interrupting(stop_at=4), suite, batch_size=4, run_dir=run, progress=False)
    done = sorted((run / "batches" / "natural").glob("*.pt"))
    assert len(done) == 3  # batches 0-2 finished before the interruption
    m = PixelL2()
    again = T.evaluate_2afc(m, suite, batch_size=4, run_dir=run, progress=False)
    assert m.calls == 6 - 3  # only the 3 missing batches (of 6) were computed
    assert again["natural"] == full["natural"]
    m2 = PixelL2()
    T.evaluate_2afc(m2, suite, batch_size=4, run_dir=run, progress=False)
    assert m2.calls == 0
    with pytest.raises(InputError, match="different configuration.*batch_size"):
        T.evaluate_2afc(PixelL2(), suite, batch_size=8, run_dir=run, progress=False)
    # other weights, same name: refused (results never mix two weight sets)
    T.evaluate_2afc(tiny_embedding(1), suite, batch_size=4, run_dir=tmp_path / "r2", limit=4, progress=False)
    with pytest.raises(InputError, match="differs in: weights"):
        T.evaluate_2afc(tiny_embedding(2), suite, batch_size=4, run_dir=tmp_path / "r2", limit=4, progress=False)


def test_corrupted_image_is_skipped_and_counted_or_fails(tmp_path):
    make_bapps_2afc(tmp_path, "val", ("traditional",), n=5, size=16)
    (tmp_path / "2afc/val/traditional/p0/000002.png").write_bytes(b"not a png")
    ds = BAPPS2AFC(tmp_path, "val", categories=["traditional"], load_size=None)
    res = T.evaluate_2afc(PixelL2(), ds, batch_size=2, progress=False)
    assert res["n"] == 4 and res["skipped"] == 1 and "000002.png" in res["skipped_items"][0]
    with pytest.raises(CorruptImageError, match="000002.png"):
        T.evaluate_2afc(PixelL2(), ds, batch_size=2, on_corrupt="fail", progress=False)
    with pytest.raises(InputError, match="empty selection"):
        T.evaluate_2afc(PixelL2(), ds, limit=0, progress=False)


def test_jnd_evaluation_on_generated_layout(tmp_path):
    from _fake_datasets import make_bapps_jnd
    from robustsim.data.bapps import BAPPSJND

    sames = make_bapps_jnd(tmp_path, n=6, size=16)
    ds = BAPPSJND(tmp_path, load_size=None)
    res = J.evaluate_jnd(PixelL2(), ds, batch_size=4, progress=False)
    d = torch.stack([PixelL2()(ds[i][0][None], ds[i][1][None])[0] for i in range(len(ds))])
    assert res["jnd_map"]["overall"] == pytest.approx(J.jnd_map(d, sames))
    assert set(res["jnd_map"]["groups"]) == {"traditional", "cnn"}


# ------------------------------------------------------------------ embedding attack, retrieval, report


def test_embedding_attack_histogram(suite):
    from robustsim.evaluate.embedding import evaluate_embedding_attack

    res = evaluate_embedding_attack(tiny_embedding(), suite, eps=[0.5], steps=3, batch_size=4, limit=6, progress=False)
    s = res["eps"]["0.5"]
    assert s["n"] == 6 and sum(s["hist_counts"]) == 6 and min(s["distances"]) >= 0 and s["mean"] > 0


def test_retrieval_clean_attacked_and_no_embedding_error():
    from robustsim.evaluate.offline import offline_retrieval_set
    from robustsim.evaluate.retrieval import evaluate_retrieval

    q, g, t = offline_retrieval_set(6, 16)
    m = tiny_lipsim()
    res = evaluate_retrieval(m, q, g, t, eps=1.0, steps=3, progress=False)
    e_q, e_g = m.embed(q), m.embed(g)
    assert res["top1_clean"] == pytest.approx(float(((e_q @ e_g.T).argmax(1) == t).double().mean()))
    assert set(res["top1_certified"]) == {"36/255", "72/255", "108/255"}
    assert res["top1_certified"]["36/255"] <= res["top1_clean"]
    with pytest.raises(InputError, match="no embedding"):
        evaluate_retrieval(PixelL2(), q, g, t, progress=False)
    with pytest.raises(InputError, match="targets must index"):
        evaluate_retrieval(m, q, g, t + 10, progress=False)


def test_report_tables_and_plots(suite, tmp_path):
    from robustsim.evaluate.report import write_report

    m = tiny_lipsim()
    res = T.evaluate_2afc(m, suite, batch_size=11, certified=True,
                          attack=T.AttackSpec("pgd", "l2", [0.5], steps=2), limit=11, progress=False)
    res["note"] = "random weights"
    paths = write_report([res], tmp_path, title="T")
    md = paths["md"].read_text()
    assert "| tiny-lipsim (random weights) | 11 |" in md
    assert f"{100 * res['natural']['overall']:.1f}" in md and "Certified ε=36/255" in md and "PGD l2 ε=0.5" in md
    assert paths["certified_png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths["json"].read_text())[0]["natural"] == res["natural"]


def test_cli_eval_bapps_certified_resumable(tmp_path, capsys):
    from robustsim import hub
    from robustsim.cli import main

    model = hub.save(tiny_lipsim(), tmp_path / "tiny.safetensors")
    make_bapps_2afc(tmp_path / "b", "val", ("traditional", "cnn"), n=3, size=16)
    out = tmp_path / "out"
    argv = ["eval", "--metric", str(model), "--dataset", "bapps-2afc", "--root", str(tmp_path / "b"),
            "--categories", "traditional,cnn", "--size", "16", "--certified", "--batch-size", "4", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    assert "Certified ε=36/255" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())[0]
    assert res["n"] == 6 and set(res["natural"]["groups"]) == {"traditional", "cnn"}
    batch = sorted((out / "2afc" / "batches" / "natural").glob("*.pt"))[0]
    before = batch.stat().st_mtime_ns
    assert main(argv) == 0 and batch.stat().st_mtime_ns == before  # rerun reuses finished batches
    assert (out / "results_certified.png").is_file()
    # bad input: one line, exit 2
    assert main(["eval", "--metric", str(model), "--dataset", "nights", "--root", str(tmp_path / "none")]) == 2
    assert "dataset root not found" in capsys.readouterr().err
    assert main(["eval", "--metric", str(model), "--dataset", "bapps-2afc", "--root", str(tmp_path / "b"), "--split", "test"]) == 2
    assert "unknown BAPPS 2AFC split" in capsys.readouterr().err
    assert main(["eval", "--metric", str(model), "--dataset", "nights"]) == 2
    assert "needs --root" in capsys.readouterr().err


def test_certified_budgets_are_keyed_by_what_was_evaluated():
    """36/255 stays "36/255"; 0.5 is "0.5", not "128/255" (127.5/255 rounded: a budget nobody evaluated);
    keys parse back to the budget and the summary scores each at its own ε."""
    from robustsim.evaluate.twoafc import budget_key, budget_value, certified_summary

    assert [budget_key(e) for e in (36 / 255, 108 / 255, 0.5, 1.0, 0.25)] == ["36/255", "108/255", "0.5", "255/255", "0.25"]
    for e in (36 / 255, 0.5, 1.0, 0.3):
        assert budget_value(budget_key(e)) == pytest.approx(e, rel=1e-9)
    radius = torch.tensor([0.49, 0.501, 0.51, 2.0], dtype=torch.float64)
    out = certified_summary(torch.ones(4, dtype=torch.float64), radius, ["a"] * 4, at=(0.5, 128 / 255))
    assert out["at"]["0.5"]["overall"] == 0.75 and out["at"]["128/255"]["overall"] == 0.5
