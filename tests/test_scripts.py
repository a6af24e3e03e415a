"""The evaluation scripts behind docs/MODELS.md and docs/TRAINING.md: tables and plots from their JSON."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
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


class _FakePool:
    """Triplets whose far image is a constant shift c of the reference: ||x_far - ref|| = c·sqrt(3·s²)."""

    def __init__(self, shifts, labels):
        self.items = []
        for c, lab in zip(shifts, labels):
            ref = torch.full((3, 64, 64), 0.25)
            near, far = ref + 0.001, ref + c
            x0, x1 = (far, near) if lab == 1 else (near, far)
            self.items.append((ref, x0, x1, lab, float(lab)))

    def suite(self, n):
        return self.items[:n]


def test_model_card_attack_ceiling_counts_far_images_beyond_eps():
    """The bound under a reference attack: only triplets whose far image lies beyond ε can be kept by any
    metric (the far image is picked by the label, and sizes are measured after the upsampling)."""
    mod = _script("model_card_eval")
    unit = (3 * 128 * 128) ** 0.5  # a shift of 1/unit has l2 norm 1 at 128 px
    pool = _FakePool([0.5 / unit, 1.5 / unit, 3.0 / unit, 0.9 / unit], [0, 1, 0, 1])
    args = type("A", (), {"n": 4, "n_attack": 4, "eps": [0.25, 1.0, 2.0, 4.0]})()
    row = mod.attack_ceiling(pool, args, 128)
    assert row["bound"] and row["n_attack"] == 4
    assert row["apgd"] == {"0.25": 1.0, "1.0": 0.5, "2.0": 0.25, "4.0": 0.0}
    args.n_attack = 2  # only the attacked subset counts
    assert mod.attack_ceiling(pool, args, 128)["apgd"]["1.0"] == 0.5
    md = mod.table([row], args.eps, [])
    assert "| upper bound, any metric | — | — | 100.0% | 50.0% | 25.0% | 0.0% |" in md


def test_model_card_display_names_keep_runs_apart():
    mod = _script("model_card_eval")
    assert mod.display_name("lpips-alex") == "lpips-alex"
    assert mod.display_name("runs/v4_judged_all/model.safetensors") == "v4_judged_all"
    assert mod.display_name("runs/v4_plain_hinge/model.safetensors") == "v4_plain_hinge"
    assert mod.display_name("weights/lipsim_effnet.safetensors") == "lipsim_effnet"


def test_model_card_plot_draws_both_panels(tmp_path):
    mod = _script("model_card_eval")
    row = lambda name, nat, att, cert: {"metric": name, "natural": nat, "natural_on_subset": nat,  # noqa: E731
                                        "apgd": {"0.5": att[0], "1.0": att[1]}, "certified": cert}
    rows = [row("lipsim-x", 0.85, [0.6, 0.4], {"36/255": 0.7, "72/255": 0.5}), row("lpips-alex", 0.91, [0.5, 0.2], {}),
            {"metric": "upper bound, any metric", "natural": 1.0, "natural_on_subset": 1.0,
             "apgd": {"0.5": 0.98, "1.0": 0.96}, "certified": {}, "bound": True}]
    png = tmp_path / "card.png"
    mod.plot(rows, png)
    with Image.open(png) as im:
        assert im.size[0] > 2.2 * im.size[1]  # curves vs ε and the natural/attacked trade-off side by side


def test_model_card_curves_pick_the_metrics_the_card_is_about(tmp_path):
    """A card of many metrics draws curves vs ε only for those chosen (by default the first 3 and the
    uncertified baselines), and a name that is not among the card's metrics is refused."""
    mod = _script("model_card_eval")
    names = ["lipsim-default"] + [f"runs/v{i}/model.safetensors" for i in range(5)] + ["lpips-alex", "pixel-l2"]
    assert mod.curve_names(names, None) == ["lipsim-default", "v0", "v1", "lpips-alex", "pixel-l2"]
    assert mod.curve_names(names[:4], None) == ["lipsim-default", "v0", "v1", "v2"]
    assert mod.curve_names(names, "lipsim-default,runs/v3/model.safetensors") == ["lipsim-default", "v3"]
    with pytest.raises(ValueError, match="runs/typo/model.safetensors"):
        mod.curve_names(names, "lipsim-default,runs/typo/model.safetensors")
    row = lambda name, cert: {"metric": name, "natural": 0.9, "natural_on_subset": 0.9,  # noqa: E731
                              "apgd": {"0.5": 0.6, "1.0": 0.4}, "certified": cert}
    rows = [row("lipsim-x", {"36/255": 0.7}), row("v3", {"36/255": 0.6}), row("lpips-alex", {})]
    labels = mod.plot(rows, tmp_path / "card.png", curves=["lipsim-x", "lpips-alex"])
    assert labels == ["lipsim-x: APGD-CE", "lipsim-x: certified", "lpips-alex: APGD-CE"]
    assert len(mod.plot(rows, tmp_path / "all.png")) == 5


def test_model_card_reuses_a_saved_result_only_for_the_same_weights(tmp_path):
    """A retrained run keeps its path; its saved card numbers must not be served for the new weights."""
    mod = _script("model_card_eval")
    ident = {"n": 500, "seed": 0}
    assert mod.result_ident("pixel-l2", ident) == ident  # no weights
    from robustsim import hub

    pinned = mod.result_ident("lipsim-effnet", ident)["weights_sha256"]  # a packaged model: its pinned file
    assert pinned == {"main": hub.model_spec("lipsim-effnet").weights["main"].sha256}
    w = tmp_path / "run" / "model.safetensors"
    w.parent.mkdir()
    w.write_bytes(b"first weights")
    first = mod.result_ident(str(w), ident)
    assert first != ident and first["n"] == 500
    w.write_bytes(b"retrained weights")
    assert mod.result_ident(str(w), ident) != first


def test_model_card_keeps_the_saved_row_of_a_weights_file_that_is_not_here(tmp_path, capsys):
    """runs/ is not in git: a fresh clone rebuilds a card from the saved rows of absent files, but only when
    every setting except the sha256 matches, and never for a present file whose weights changed."""
    mod = _script("model_card_eval")
    ident = {"n": 500, "seed": 0, "pool": "abc"}
    row = {"metric": "v9", "natural": 0.9}
    saved = {"ident": {**ident, "weights_sha256": "old"}, "result": row}
    gone = str(tmp_path / "runs" / "v9" / "model.safetensors")
    assert mod.saved_result(gone, saved, ident) == row
    assert "not on this machine" in capsys.readouterr().err
    assert mod.saved_result(gone, saved, {**ident, "seed": 1}) is None  # other settings: no row
    assert mod.saved_result("pixel-l2", {"ident": {**ident, "weights_sha256": "old"}, "result": row}, ident) is None
    here = tmp_path / "here.safetensors"
    here.write_bytes(b"new weights")
    assert mod.saved_result(str(here), saved, mod.result_ident(str(here), ident)) is None


def test_model_card_refuses_an_absent_weights_file_without_a_saved_row_before_labelling(tmp_path, monkeypatch, capsys):
    mod = _script("model_card_eval")
    monkeypatch.setattr(mod, "evaluate_one", lambda *a: pytest.fail("nothing may be evaluated"))
    monkeypatch.setattr(sys, "argv", ["model_card_eval.py", "--metrics", "runs/typo/model.safetensors",
                                      "--out", str(tmp_path / "card")])
    assert mod.main() == 2
    assert "runs/typo/model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "card").exists()  # refused before the held-out pool was labelled or a folder made


def test_model_card_sampling_note_gives_the_largest_standard_error_of_each_column():
    """The card says how much a share moves with the draw alone: sqrt(p(1-p)/n) at p = 1/2, in points."""
    mod = _script("model_card_eval")
    note = mod.sampling_note(500, 50)
    assert "±2.2 points at n = 500" in note and "±7.1 at n = 50" in note
    assert "±3.2 at n = 250" in mod.sampling_note(500, 250)
    whole = mod.sampling_note(500, 500)  # every triplet attacked: one error, said once
    assert "±2.2 points at n = 500 (every column)" in whole and whole.count("±") == 1


def _tiny_lipsim(seed: int, **over):
    from robustsim.metrics.lipsim import LipSim

    torch.manual_seed(seed)
    cfg = dict(input_size=16, stem="unshuffle2", channels=12, conv_depth=1, conv_inner=4, pool=(2,),
               linear_depth=1, linear_inner=16, embed_dim=16)
    return LipSim(**{**cfg, **over}).eval()


def test_average_weights_writes_the_weighted_mean_and_refuses_other_architectures(tmp_path, capsys):
    import robustsim
    from robustsim import hub

    mod = _script("average_weights")
    a, b = _tiny_lipsim(0), _tiny_lipsim(1)
    pa, pb = hub.save(a, tmp_path / "a.safetensors"), hub.save(b, tmp_path / "b.safetensors")
    out = tmp_path / "soup" / "m.safetensors"
    assert mod.main([str(pa), str(pb), "--weights", "0.25,0.75", "--out", str(out)]) == 0
    soup = robustsim.load(str(out))
    for k, t in a.state_dict().items():
        torch.testing.assert_close(soup.state_dict()[k], 0.25 * t + 0.75 * b.state_dict()[k])
    assert soup.lipschitz <= 1.0  # still a certified 1-Lipschitz network
    assert mod.main([str(pa), str(pb), "--weights", "0.5,0.6", "--out", str(out)]) == 2
    assert "summing to 1" in capsys.readouterr().err
    assert mod.main([str(pa), str(pb), "--weights", "half,half", "--out", str(out)]) == 2
    assert "summing to 1, got half,half" in capsys.readouterr().err
    other = _tiny_lipsim(2, conv_inner=8)
    with pytest.raises(ValueError, match="not the same architecture"):
        mod.average_state([a.state_dict(), other.state_dict()], [0.5, 0.5])


def test_probe_branch_pixels_are_one_lipschitz_and_the_radius_is_tight_for_an_isometry(tmp_path):
    """P_k contracts (equality on block-constant differences); for the isometric hybrid of g = x - 1/2 the
    reported radius is exact: the worst-case move of the reference at 0.999× keeps the decision, 1.001× flips it."""
    mod = _script("probe_branch")
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    for k in (1, 2, 4):
        assert bool(((mod.pixel_branch(x, k) - mod.pixel_branch(y, k)).norm(dim=1)
                     <= (x.double() - y.double()).flatten(1).norm(dim=1) + 1e-12).all())
    block = torch.rand(4, 3, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3)
    torch.testing.assert_close((mod.pixel_branch(x + block, 4) - mod.pixel_branch(x, 4)).norm(dim=1),
                               block.flatten(1).double().norm(dim=1))
    with pytest.raises(ValueError, match="divide"):
        mod.pixel_branch(x, 3)

    def h(im, s=0.6):  # [cos θ·(x - 1/2), sin θ·P_1(x)]: an isometry of the pixels
        return mod.hybrid((im.double() - 0.5).flatten(1), mod.pixel_branch(im, 1), s)

    ref, x0, x1 = torch.rand(3, 6, 3, 8, 8).double()
    judge = torch.zeros(6, dtype=torch.float64)
    score, radius = mod.scores_and_radii(h(ref), h(x0), h(x1), judge)
    a, b = (torch.nn.functional.normalize(h(t), dim=1) for t in (x0, x1))
    closer_one = ((a - b) * torch.nn.functional.normalize(h(ref), dim=1)).sum(1) < 0
    torch.testing.assert_close(score, (~closer_one).double())
    c, o = torch.where(closer_one[:, None], b, a), torch.where(closer_one[:, None], a, b)
    w = (c - o)[:, :192] * 0.8 + (c - o)[:, 192:] * 0.6  # h's adjoint applied to c - o, in pixels
    w = (w / w.norm(dim=1, keepdim=True)).reshape(6, 3, 8, 8)
    for factor, kept in ((0.999, True), (1.001, False)):
        moved = h(ref - factor * radius[:, None, None, None] * w)
        still = ((moved * (c - o)).sum(1) > 0)
        assert bool((still == kept).all()), (factor, still)
    rows = mod.frontier({"ref": ref, "x0": x0, "x1": x1, "g_ref": h(ref, 0), "g0": h(x0, 0), "g1": h(x1, 0)},
                        judge, [1, 2], [0, 0.5], [0.1, 1.0])
    assert [(r["k"], r["sin"]) for r in rows] == [(1, 0.0), (1, 0.5), (2, 0.5)]  # θ = 0 once
    # g = pixels: θ = 0 and (k = 1, sin θ = 0.5) are both isometries of the pixel cosine, same decisions and radii
    assert rows[0]["natural"] == rows[1]["natural"] == 100 * float(score.mean())
    assert rows[0]["certified"] == pytest.approx(rows[1]["certified"])
    assert mod.natural_gain({"ref": ref, "x0": x0, "x1": x1, "g_ref": h(ref), "g0": h(x0), "g1": h(x1)}) \
        == pytest.approx({"q10": 1.0, "median": 1.0, "q90": 1.0})  # an isometry keeps every distance
    with pytest.raises(SystemExit):  # refused before any data or model is loaded
        mod.main(["--pools", "3", "--out", str(tmp_path)])


def test_probe_attack_gain_beats_a_random_direction_and_never_exceeds_the_lipschitz_bound():
    mod = _script("probe_branch")
    net = _tiny_lipsim(0)
    torch.manual_seed(1)
    refs = torch.rand(8, 3, 16, 16) * 0.5 + 0.25  # room for the budget inside [0, 1]
    adv = mod.attack_images(net, refs, eps=0.5, steps=20)
    gain = mod.attack_gain(net, refs, adv)
    step = torch.randn_like(refs)
    step = 0.5 * step / step.flatten(1).norm(dim=1)[:, None, None, None]
    with torch.no_grad():
        rand = ((net.raw_features(refs + step) - net.raw_features(refs)).norm(dim=1) / 0.5).median()
    assert gain["q10"] <= gain["median"] <= gain["q90"] <= net.lipschitz + 1e-6
    assert gain["median"] > float(rand)
    stages = mod.stage_gains(net.encoder, refs, adv)  # from the pixels, stage by stage: 1-Lipschitz all along
    assert list(stages) == ["stem", "convs", "pool", "linears", "truncate"]
    assert stages["stem"] == pytest.approx(1.0)  # PixelUnshuffle + zero channels: an isometry
    assert all(v <= net.lipschitz + 1e-6 for v in stages.values())
    assert stages["truncate"] == pytest.approx(gain["median"], rel=1e-5)


def test_probe_rest_branch_at_full_scale_is_the_untruncated_network():
    """branch "rest", s = 1: [g, rest] is the network without its truncation, so its decisions are the
    decisions of the same weights with embed_dim = all features; s = 0 is the metric itself."""
    from robustsim.train.finetune import with_config

    mod = _script("probe_branch")
    net = _tiny_lipsim(3)
    whole = with_config(net, {"embed_dim": net.encoder.config.features})
    torch.manual_seed(2)
    ref, x0, x1 = torch.rand(3, 10, 3, 16, 16)
    judge = (torch.rand(10) > 0.5).double()
    with torch.no_grad():
        feats = {"g_ref": net.raw_features(ref), "g0": net.raw_features(x0), "g1": net.raw_features(x1)}
        full = [whole.raw_features(t) for t in (ref, x0, x1)]
    feats.update({k: f[:, 16:] for k, f in zip(("rest_ref", "rest0", "rest1"), full)})
    rows = mod.frontier(feats, judge, [1], [0.0, 1.0], [0.01], branch="rest")
    own = mod.scores_and_radii(feats["g_ref"], feats["g0"], feats["g1"], judge)
    untruncated = mod.scores_and_radii(*full, judge)
    assert [r["k"] for r in rows] == [0, 0]
    assert rows[0]["natural"] == pytest.approx(100 * float(own[0].mean()))
    assert rows[1]["natural"] == pytest.approx(100 * float(untruncated[0].mean()))
    assert rows[1]["certified"]["0.01"] == pytest.approx(100 * float((untruncated[0] * (untruncated[1] > 0.01)).mean()))
    with pytest.raises(ValueError, match="branch"):
        mod.frontier(feats, judge, [1], [0.5], [0.01], branch="noise")


def test_probe_metric_branch_is_a_one_lipschitz_ensemble_with_both_members_at_its_ends(tmp_path):
    """branch "metric": h = [cos θ·g, sin θ·g₂] of two 1-Lipschitz networks contracts every pixel distance;
    sin θ = 0 is the first metric's decisions and radii, sin θ = 1 the second's."""
    mod = _script("probe_branch")
    a, b = _tiny_lipsim(4), _tiny_lipsim(5, blur=3)
    torch.manual_seed(3)
    ref, x0, x1 = torch.rand(3, 12, 3, 16, 16)
    judge = (torch.rand(12) > 0.5).double()
    with torch.no_grad():
        fa = [a.raw_features(t).double() for t in (ref, x0, x1)]
        fb = [b.raw_features(t).double() for t in (ref, x0, x1)]
    for s in (0.3, 0.8):
        moved = (mod.hybrid(fa[1], fb[1], s) - mod.hybrid(fa[0], fb[0], s)).norm(dim=1)
        assert bool((moved <= (x0 - ref).flatten(1).double().norm(dim=1) * (1 + 1e-6)).all())
    feats = {"g_ref": fa[0], "g0": fa[1], "g1": fa[2], "rest_ref": fb[0], "rest0": fb[1], "rest1": fb[2]}
    rows = mod.frontier(feats, judge, [1], [0.0, 0.5, 1.0], [0.01, 0.25], branch="metric")
    assert [r["k"] for r in rows] == [0, 0, 0]
    assert rows[0]["natural"] != rows[2]["natural"]  # the two members disagree here, so the ends are told apart
    for row, f in ((rows[0], fa), (rows[2], fb)):
        sc, rad = mod.scores_and_radii(*f, judge)
        assert row["natural"] == pytest.approx(100 * float(sc.mean()))
        for e in ("0.01", "0.25"):
            assert row["certified"][e] == pytest.approx(100 * float((sc * (rad > float(e))).mean()))
    for argv in (["--branch", "metric"], ["--other", "lipsim-default"]):  # refused before any data is loaded
        with pytest.raises(SystemExit):
            mod.main(argv + ["--out", str(tmp_path)])


def test_transplant_weights_keeps_what_fits_and_builds_the_new_architecture(tmp_path, capsys):
    import robustsim
    from robustsim import hub

    mod = _script("transplant_weights")
    src = _tiny_lipsim(4)  # 16 px, unshuffle2 -> 12 × 8 × 8, pool 2 -> 192 features
    path = hub.save(src, tmp_path / "src.safetensors")
    out = tmp_path / "new" / "pool1.safetensors"
    assert mod.main([str(path), "--set", "pool=1", "--set", "linear_inner=8", "--set", "embed_dim=768",
                     "--out", str(out)]) == 0
    new = robustsim.load(str(out))
    assert new.config()["pool"] == [1] and new.config()["embed_dim"] == 768
    old, now = src.state_dict(), new.state_dict()
    convs = [k for k in old if ".convs." in k]
    assert convs and all(torch.equal(now[k], old[k]) for k in convs)  # the convolutions are transplanted
    assert now["encoder.linears.0.weight"].shape != old["encoder.linears.0.weight"].shape
    assert "new" in capsys.readouterr().out
    assert new.lipschitz <= 1.0
    assert mod.parse_value("2,2") == [2, 2] and mod.parse_value("3") == 3 and mod.parse_value("pad") == "pad"
    with pytest.raises(SystemExit):  # no change asked for: nothing to transplant
        mod.main([str(path), "--out", str(out)])
    assert mod.main([str(path), "--set", "widht=3", "--out", str(out)]) == 2  # a misspelt key, one line
    assert "widht" in capsys.readouterr().err


def test_probe_spectrum_bands_follow_parseval_and_place_known_patterns(tmp_path):
    """The band shares of scripts/probe_spectrum.py sum to 1, a checkerboard lies in the top band and a
    constant in the lowest, the 3×3 blur keeps the constant's interior and removes the checkerboard's, and
    the table and plot are written."""
    mod = _script("probe_spectrum")
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = (((i + j) % 2) * 2 - 1).double().expand(1, 3, 32, 32)
    const = torch.ones(1, 3, 32, 32, dtype=torch.float64)
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shares = mod.band_shares(torch.cat([checker, const, noise]))
    assert torch.allclose(shares.sum(1), torch.ones(6, dtype=torch.float64))
    assert float(shares[0, -1]) == pytest.approx(1.0) and float(shares[1, 0]) == pytest.approx(1.0)
    # white noise spreads by band area: the top band (|f| >= 1/4) is 3/4 of the plane
    assert 0.6 < float(shares[2:, -1].mean()) < 0.85
    kept = mod.blur_kept(torch.cat([checker, const]), 3)
    assert float(kept[0]) < 0.2 and float(kept[1]) > 0.95
    with pytest.raises(ValueError, match="square"):
        mod.band_shares(torch.zeros(1, 3, 8, 16))
    summary = {"natural": mod.summarise(torch.cat([const, torch.zeros_like(const)])), "attack": mod.summarise(checker)}
    assert summary["natural"]["n"] == 1  # the identical pair is skipped
    mod.write({"runs/m/model.safetensors": summary}, tmp_path, "python scripts/probe_spectrum.py --n 2", 1.0, 5)
    md = (tmp_path / "probe.md").read_text()
    assert "| runs/m/model.safetensors | attack | 1 | 0.0% | 0.0% | 0.0% | 100.0% |" in md
    assert (tmp_path / "probe.png").stat().st_size > 1000


def test_proof_precision_certifies_less_as_the_allowance_grows():
    """scripts/proof_precision.py: its first row is the default certificate, and every coarser bound (the
    proven float32 one, the default plus a growing declared error) certifies no more at any ε."""
    from robustsim import certify
    from robustsim.metrics.lipsim import LipSim

    mod = _script("proof_precision")
    torch.manual_seed(0)
    m = LipSim(input_size=32, stem="unshuffle4", channels=48, conv_depth=2, conv_inner=16, pool=(2,),
               linear_depth=2, linear_inner=64, embed_dim=128).eval()
    ref = torch.rand(24, 3, 32, 32)
    x0 = (ref + 0.05 * torch.randn_like(ref)).clamp(0, 1)
    x1 = (ref + 0.3 * torch.randn_like(ref)).clamp(0, 1)
    label = torch.rand(24) < 0.2  # mostly x0 (the small perturbation) preferred, a few wrong labels
    eps = (0.02, 0.1, 0.3)
    rows = mod.certified_rows(m, ref, x0, x1, label, allowances=(1e-4, 1e-3, 1e-2), eps=eps)
    assert [r["mode"] for r in rows][:2] == ["proven float64 (default)", "proven float32"]
    base = certify.two_afc(m, ref, x0, x1)
    correct = base.closer.bool() == label
    assert rows[0]["certified"] == [float((correct & base.certified(e)).double().mean()) for e in eps]
    assert rows[0]["certified"][0] > 0  # something to lose
    for r in rows[1:]:
        assert all(c <= c0 for c, c0 in zip(r["certified"], rows[0]["certified"])), r
        assert r["rel_err"] > rows[0]["rel_err"]
    declared = [r["certified"] for r in rows[2:]]
    assert all(all(b <= a for a, b in zip(p, q)) for p, q in zip(declared, declared[1:]))
    assert declared[-1][0] < rows[0]["certified"][0]  # a 1% error allowance does cost certificates
    assert "| proven float32 |" in mod.table(rows, eps)
    assert mod.eps_label(36 / 255) == "36/255" and mod.eps_label(1.0) == "1" and mod.eps_label(0.3) == "0.3"
