"""The judged 2AFC suite: distortion registry, candidate construction, consensus / leave-one-out labels,
cache, errors, pixel-l2, the pair suite, the RESULTS generator, and the discrimination requirement."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from robustsim.data import judged as J
from robustsim.data.distortions import DISTORTIONS, FAMILIES, KINDS, ORDERING_KINDS, distort
from robustsim.errors import InputError, WeightsError

FIXTURES = Path(__file__).parent / "data" / "judged_cache"


@pytest.fixture(autouse=True)
def _bundled_photos_only(monkeypatch):
    """Suites see only the bundled photos (the Debian folder would change every key and count)."""
    monkeypatch.delenv("ROBUSTSIM_PHOTOS", raising=False)


class _Dist(torch.nn.Module):
    """A cheap judge: l_p distance of (optionally pooled) images; counts its calls."""

    def __init__(self, name, pool=1, p=2.0, w=1.0):
        super().__init__()
        self.name, self.pool, self.p = name, pool, p
        self.w = torch.nn.Parameter(torch.tensor(float(w)))
        self.calls = 0

    def forward(self, x, y):
        self.calls += 1
        if self.pool > 1:
            x, y = (torch.nn.functional.avg_pool2d(t, self.pool) for t in (x, y))
        return self.w * (x - y).abs().pow(self.p).flatten(1).mean(1)


def _judges():
    return [_Dist("j-pix"), _Dist("j-pool4", pool=4), _Dist("j-l1", p=1.0)]


def _pool(tmp_path, **kw):
    args = dict(size=32, judges=_judges(), cache_dir=tmp_path, progress=False, batch_size=16)
    args.update(kw)
    return J.JudgedPool(**args)


# --------------------------------------------------------------------------- registry


def test_registry_has_the_required_kinds_with_documented_ranges():
    need = {"translate", "rotate", "rescale", "elastic", "gaussian_blur", "sharpen", "gaussian_noise", "salt_pepper",
            "jpeg", "webp", "contrast", "brightness", "saturation", "colour_shift", "posterize", "pixelate"}
    assert need <= set(KINDS) and len(KINDS) >= 15 and set(DISTORTIONS) == set(KINDS)
    assert set(ORDERING_KINDS) < set(KINDS) and len(ORDERING_KINDS) == 11
    for k, d in KINDS.items():
        lo, hi = d.judged
        assert 0 <= lo < hi <= 1 and d.family in FAMILIES and d.doc and d.describe(lo) and d.describe(hi)
        assert d.fn is DISTORTIONS[k]


@pytest.fixture(scope="module")
def crop():
    from robustsim.data.catalogue import BUILTIN, crop_resize

    return crop_resize(BUILTIN[2].load(), 100, 200, 192, 64)  # coffee


def test_geometric_kinds_move_pixels_not_content(crop):
    """A 1-px shift changes many pixels but keeps the image statistics: what pixel metrics get wrong."""
    out = distort(crop, "translate", 1 / 3, seed=0)
    assert (out - crop).abs().mean() > 0.01
    assert abs(float(out.mean() - crop.mean())) < 0.01 and abs(float(out.std() - crop.std())) < 0.02
    # an integer shift along x (seed chosen so that the direction is horizontal) is an exact translation
    from robustsim.data.distortions import _warp

    shifted = _warp(crop, torch.tensor(2.0), torch.tensor(0.0))
    assert torch.allclose(shifted[:, :, 5:-5], crop[:, :, 7:-3], atol=1e-5)
    for k in ("rotate", "rescale", "elastic"):
        weak, strong = distort(crop, k, 0.3, 7), distort(crop, k, 1.0, 7)
        assert 0 < float((weak - crop).norm()) < float((strong - crop).norm())


def test_webp_and_sharpen_are_real(crop):
    w = distort(crop, "webp", 1.0, 0)
    assert 0.005 < float((w - crop).abs().mean()) < 0.2
    s = distort(crop, "sharpen", 1.0, 0)
    assert float(s.std()) > float(crop.std())  # sharpening raises local contrast


# --------------------------------------------------------------------------- candidates and labels


def test_candidates_are_deterministic_heldout_and_pair_balanced(tmp_path):
    from robustsim.data.catalogue import HELDOUT

    p = _pool(tmp_path, cache_dir=False)
    assert p.n_candidates == 2 * len(p.windows) > 0
    assert {s.name for s in p.sources} <= set(HELDOUT)
    P = len(p._pairs)
    assert P == len(p.kinds) * (len(p.kinds) - 1) // 2
    first = [tuple(sorted(p.pair_of(c))) for c in range(P)]
    assert len(set(first)) == P  # each unordered pair exactly once per cycle
    for c in (0, 5, P + 3):
        prm = p.params(c)
        assert prm["kind0"] != prm["kind1"]
        for k, s in (("kind0", "s0"), ("kind1", "s1")):
            lo, hi = KINDS[prm[k]].judged
            assert lo - 1e-9 <= prm[s] <= hi + 1e-9
    q = _pool(tmp_path, cache_dir=False)
    a, b = p.images(11), q.images(11)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(_pool(tmp_path, cache_dir=False, seed=1).images(11)[0], a[0])
    tr = _pool(tmp_path, cache_dir=False, split="train")
    assert not {s.name for s in tr.sources} & set(HELDOUT)


def test_consensus_labels_drop_counts_and_leave_one_out(tmp_path):
    p = _pool(tmp_path)
    s = p.suite(40)
    c = s.counts
    assert len(s) == 40 and c["consensus"] == 40 and c["dropped"] == c["labelled"] - 40
    assert c["dropped"] > 0  # the three judges disagree sometimes: the drop count is real
    d = p.distances()
    for i in range(len(s)):
        cand = s.indices[i]
        votes = (d[:, 1, cand] < d[:, 0, cand]).long()
        assert votes.min() == votes.max() == s.labels[i]  # unanimous, and the label is that vote
        ref, x0, x1, lab, soft = s[i]
        assert soft == float(lab) and ref.shape == (3, 32, 32)
    # the dropped candidates before the last kept one really lack consensus
    kept = set(s.indices)
    for cand in range(c["labelled"]):
        if cand not in kept:
            v = torch.sign(d[:, 0, cand] - d[:, 1, cand])
            assert not (v != 0).all() or v.min() != v.max()
    loo = p.suite(40, leave_out="j-pool4")
    assert loo.voters == ["j-pix", "j-l1"] and loo.leave_out == ["j-pool4"]
    assert loo.counts["dropped"] <= c["dropped"]  # fewer voters agree more often
    assert p.suite_for("j-pix", 10).leave_out == ["j-pix"] and p.suite_for("pixel-l2", 10).leave_out == []
    b = s.balance()
    assert set(b["kinds"]) == set(p.kinds) and 0 <= b["mean_abs_skew"] <= 0.5
    assert sum(v["n"] for v in b["pairs"].values()) == 40
    assert sum(s.pair_counts().values()) == 40


def test_judged_tensors_stack_the_leave_one_out_suite_at_the_asked_size(tmp_path):
    """``judged_tensors`` returns exactly the suite's triplets (leave-one-out for a judge), shown at the asked
    size, with the hard label and the judges' fraction beside them."""
    from robustsim.evaluate.judged import Resized, judged_tensors

    p = _pool(tmp_path)
    t = judged_tensors(p, "j-pix", 6, 48)
    suite = p.suite_for("j-pix", 6)
    assert suite.leave_out == ["j-pix"] and t["ref"].shape == (len(suite), 3, 48, 48)
    big = Resized(suite, 48)
    for i in range(len(suite)):
        ref, x0, x1, lab, j = big[i]
        assert torch.equal(t["ref"][i], ref) and torch.equal(t["x0"][i], x0) and torch.equal(t["x1"][i], x1)
        assert int(t["label"][i]) == int(lab) and float(t["judge"][i]) == float(j)
    assert t["label"].dtype == torch.long and t["judge"].dtype == torch.float64
    same = judged_tensors(p, "pixel-l2", 6, 32)  # the pool's own size: no resize, no one left out
    assert torch.equal(same["ref"][0], p.suite_for("pixel-l2", 6)[0][0])


def test_training_triplets_soft_and_hard_labels(tmp_path):
    ds = J.judged_triplets(30, split="train", size=32, judges=_judges(), consensus_only=False, cache_dir=tmp_path,
                           progress=False)
    assert len(ds) == 30 and ds.pool.split == "train" and ds.counts["dropped"] == 0
    soft = torch.tensor([ds[i][4] for i in range(30)], dtype=torch.float64)
    hard = torch.tensor([ds[i][3] for i in range(30)])
    assert all(min(abs(v - f) for f in (0.0, 1 / 3, 2 / 3, 1.0)) < 1e-12 for v in soft.tolist())
    assert ((soft > 0) & (soft < 1)).any()  # non-consensus triplets are kept, with their soft label
    assert torch.equal(hard, (soft > 0.5).long())
    from torch.utils.data import DataLoader

    ref, x0, x1, lab, j = next(iter(DataLoader(ds, batch_size=8)))
    assert ref.shape == (8, 3, 32, 32) and lab.dtype == torch.long and j.dtype == torch.float64


def test_cache_is_reused_recomputed_when_corrupt_and_keyed_by_weights(tmp_path):
    p = _pool(tmp_path)
    p.suite(20)
    files = list(tmp_path.glob("judged-*.pt"))
    assert len(files) == 1
    judges = _judges()
    q = _pool(tmp_path, judges=judges)
    s = q.suite(20)
    assert all(j.calls == 0 for j in judges)  # every distance came from the cache
    assert s.indices == p.suite(20).indices
    files[0].write_bytes(b"not a torch file")
    judges = _judges()
    with pytest.warns(UserWarning, match="recomputing"):
        r = _pool(tmp_path, judges=judges)
    assert r.suite(20).indices == s.indices and all(j.calls > 0 for j in judges)
    other = _pool(tmp_path, judges=[_Dist("j-pix", w=2.0), _Dist("j-pool4", pool=4), _Dist("j-l1", p=1.0)])
    assert other.cache_key != q.cache_key  # same names, different weights: a different cache entry
    assert _pool(tmp_path, kinds=["jpeg", "translate", "contrast"]).cache_key != q.cache_key


def test_bad_inputs_say_what_is_valid(tmp_path):
    with pytest.raises(InputError, match="unknown distortion 'blurr'.*translate"):
        _pool(tmp_path, kinds=["blurr", "jpeg"])
    with pytest.raises(InputError, match="unknown judge 'lpips-alx'.*lpips-alex"):
        J.JudgedPool(judges=["lpips-alx"], cache_dir=False, progress=False)
    p = _pool(tmp_path, per_window=1)
    with pytest.raises(InputError, match=f"at most {p.n_candidates} candidate"):
        p.suite(p.n_candidates + 1)
    small = _pool(tmp_path, kinds=["jpeg", "translate"], per_window=1, scales=(0.45,))
    with pytest.raises(InputError, match=r"only \d+ consensus triplets.*use n <= \d+"):
        small.suite(small.n_candidates)
    with pytest.raises(InputError, match="not one of this suite's judges"):
        p.suite(5, leave_out="dists")
    with pytest.raises(InputError, match="at least 2"):
        _pool(tmp_path, kinds=["jpeg"])


def test_missing_judge_weights_one_line_and_nothing_written(tmp_path, monkeypatch):
    from robustsim import hub

    def broken(*a, **k):
        raise WeightsError("lpips-vgg needs torchvision's VGG16 weights\n(vgg16-397923af.pth): put the file at X")

    monkeypatch.setattr(hub, "load", broken)
    p = J.JudgedPool(size=32, judges=["lpips-vgg", _Dist("j-pix")], cache_dir=tmp_path, progress=False)
    with pytest.raises(WeightsError) as e:
        p.suite(5)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("judge lpips-vgg") and "put the file at" in msg
    assert not list(tmp_path.iterdir())  # no half-written cache


# --------------------------------------------------------------------------- pixel-l2 and pairs


def test_pixel_l2_metric():
    import robustsim

    m = robustsim.load("pixel-l2")
    x, y = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    assert torch.allclose(m(x, y), (x - y).pow(2).flatten(1).mean(1).sqrt(), atol=1e-7)
    assert not m.certified and m.input_size is None
    x.requires_grad_(True)
    m(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(InputError):
        robustsim.load("pixel-l2", weights="x.pt")


def test_pair_suite_spearman(tmp_path):
    from robustsim.evaluate.judged import evaluate_pairs, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    js = [_Dist("j-pix"), _Dist("j-pool4", pool=4)]
    pairs = J.JudgedPairs(n=34, size=32, judges=js, cache_dir=tmp_path, progress=False)
    t = pairs.target()
    assert t.shape == (34,) and float(t.median()) == pytest.approx(1.0, rel=0.3)
    assert {pairs.group(i) for i in range(34)} == set(pairs.kinds)
    same = _Dist("j-pool4", pool=4)  # scored as a judge: the target is the other judge alone
    r = evaluate_pairs(same, pairs, progress=False)
    assert r["leave_out"] == ["j-pool4"]
    assert r["overall"] == pytest.approx(spearman(pairs.judge_distances("j-pool4"), pairs.judge_distances("j-pix")))
    r2 = evaluate_pairs(_Dist("outsider"), pairs, progress=False)  # equals j-pix: correlates with the mean strongly
    assert r2["overall"] > 0.7 and r2["leave_out"] == []


def test_judged_evaluation_and_results_report_tiny(tmp_path):
    from robustsim.evaluate.results import ResultsPlan, run_judged_results
    from robustsim.metrics.pixel import PixelL2

    judges = [_Dist("j-pix"), _Dist("j-pool4", pool=4)]

    def loader(name):
        m = {"pixel-l2": PixelL2(), "j-pool4": _Dist("j-pool4", pool=4)}[name]
        m.name = name
        return m, ""

    plan = ResultsPlan.tiny(size=32)
    out = run_judged_results(tmp_path / "docs", metrics=["pixel-l2", "j-pool4"], plan=plan, run_dir=tmp_path / "run",
                             progress=False, judges=judges, cache_dir=tmp_path / "cache", loader=loader)
    md = Path(out["paths"]["md"]).read_text()
    assert "judge consensus, not human" in md and "Spearman" in md and "ordering suite" in md
    assert "j-pool4 (judge; scored with leave-one-out labels)" in md
    r = {x["metric"]: x for x in out["results"]}
    assert r["j-pool4"]["leave_out"] == ["j-pool4"] and r["pixel-l2"]["leave_out"] == []
    assert len(r["pixel-l2"]["attacks"]) == 3 and set(r["pixel-l2"]["kinds"]) <= set(KINDS)
    for a in r["pixel-l2"]["attacks"]:
        assert all(v <= a["natural_on_subset"] + 1e-9 for v in a["eps"].values())
    assert Path(out["paths"]["plot"]).is_file()
    # resumable: a second run reads every metric back instead of recomputing
    saved = json.loads((tmp_path / "run" / "pixel-l2" / "result.json").read_text())
    assert saved["judged"]["natural"]["overall"] == r["pixel-l2"]["natural"]["overall"]
    judges2 = [_Dist("j-pix"), _Dist("j-pool4", pool=4)]
    out2 = run_judged_results(tmp_path / "docs", metrics=["pixel-l2", "j-pool4"], plan=plan, run_dir=tmp_path / "run",
                              progress=False, judges=judges2, cache_dir=tmp_path / "cache", loader=loader)
    assert all(j.calls == 0 for j in judges2)
    assert out2["results"][0]["natural"] == r["pixel-l2"]["natural"]
    # the report's run time says it was a cached rerun, not how long the evaluation takes
    assert out["meta"]["reused"] == 0 and "reused" not in md.splitlines()[2]
    assert out2["meta"]["reused"] == 2
    assert "(2 of 2 metrics' results reused from its cache" in Path(out2["paths"]["md"]).read_text()


def test_cli_judged_errors(capsys):
    from robustsim.cli import main

    rc = main(["eval", "--metric", "pixel-l2", "--dataset", "judged", "--kinds", "jpeg,nope", "--no-progress"])
    assert rc == 2 and "unknown distortion 'nope'" in capsys.readouterr().err
    rc = main(["eval", "--metric", "pixel-l2", "--dataset", "judged", "--judges", "lpips-alex,bogus", "--no-progress"])
    assert rc == 2 and "unknown judge 'bogus'" in capsys.readouterr().err


# --------------------------------------------------------------------------- discrimination (real judges)


def _real_pool(tmp_path):
    """The real judges on the bundled held-out photos, labels from the shipped fixture cache when it fits."""
    cache = tmp_path / "cache"
    if FIXTURES.is_dir():
        shutil.copytree(FIXTURES, cache)
    try:
        return J.JudgedPool(size=64, cache_dir=cache, progress=False)
    except (WeightsError, InputError) as e:  # pragma: no cover - machines without the judges' weights
        pytest.skip(f"real judges unavailable: {e}")


N_DISCRIMINATION = 150


def test_discrimination_pixel_and_random_network_far_below_lpips(tmp_path):
    """Issue 16, requirement 3 on a small suite: pixel-l2 and a random-weight LipSim score >= 15 points
    below LPIPS-alex (scored with leave-one-out labels; its distances come from the label cache)."""
    from robustsim.evaluate.judged import Resized, native_size
    from robustsim.evaluate.twoafc import triplet_distances, twoafc_scores
    from robustsim.evaluate.offline import lipsim_random
    from robustsim.metrics.pixel import PixelL2

    pool = _real_pool(tmp_path)
    try:
        loo = pool.suite_for("lpips-alex", N_DISCRIMINATION)
        full = pool.suite(N_DISCRIMINATION)
    except WeightsError as e:  # pragma: no cover
        pytest.skip(f"real judges unavailable: {e}")
    d0, d1 = loo.judge_distances("lpips-alex")
    lpips_score = float(twoafc_scores(d0, d1, loo.soft).mean())

    def score(metric):
        size = native_size(metric, 64)
        ds = Resized(full, size) if size != 64 else full
        ref, x0, x1, _, j = ds.tensors()
        a, b = triplet_distances(metric, ref, x0, x1)
        return float(twoafc_scores(a, b, j).mean())

    pix = score(PixelL2())
    rnd = score(lipsim_random()[0])
    print(f"judged n={N_DISCRIMINATION}: lpips-alex (LOO) {lpips_score:.3f}, pixel-l2 {pix:.3f}, random LipSim {rnd:.3f}")
    assert lpips_score >= 0.8
    assert pix <= lpips_score - 0.15
    assert rnd <= lpips_score - 0.15


def test_results_rows_say_where_each_model_comes_from():
    """RESULTS.md notes: the shipped and previous default by name, R-LPIPS heads trained here apart from the
    released checkpoints, a judge as leave-one-out."""
    from robustsim.evaluate.results import _note, default_metrics

    judges = ["lpips-alex", "dists"]
    assert _note("lipsim-default", judges) == "shipped model"
    assert "previous default" in _note("lipsim-effnet", judges)
    assert "trained here" in _note("rlpips-alex-linf-x0-x1", judges)
    assert _note("rlpips-linf-x0", judges) == "released checkpoint"
    assert "leave-one-out" in _note("dists", judges)
    names = default_metrics()
    assert names[:2] == ["lipsim-default", "lipsim-effnet"]
