"""Each recipe end to end on tiny real data: the loss goes down, the result loads through robustsim.load."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import robustsim
from robustsim.train.common import StepContext
from robustsim.train.distributed import Dist
from robustsim.train.trainer import train

from test_train_support import CONFIGS, make_triplet_file, tiny_config


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    return make_triplet_file(tmp_path_factory.mktemp("triplets") / "ordering.safetensors", n=16, size=64)


def _all(ds):
    items = [ds[i] for i in range(len(ds))]
    return tuple(torch.stack(t) for t in zip(*items))


# --------------------------------------------------------------------------- distillation


def test_distill_from_real_effnet_teacher_caches_targets_and_learns(tmp_path):
    from robustsim.train.distill import DistillRecipe, ViewCache

    cfg = tiny_config("distill", tmp_path / "d", data__num_crops=4, train__batch_size=4, train__steps=6,
                      train__checkpoint_every=3)
    recipe = DistillRecipe(cfg)
    recipe.setup(Dist())
    cache = recipe.cache
    assert isinstance(cache, ViewCache) and (cache.n, cache.size, cache.dim) == (4, 32, 1280)
    teacher = robustsim.load("effnet-lite0-cosine")
    plain, jit, tp, tj = cache[3]
    assert plain.shape == jit.shape == (3, 32, 32)
    with torch.no_grad():
        t = teacher.features(torch.stack([plain, jit]))
    assert torch.allclose(t[0], tp, atol=1e-4) and torch.allclose(t[1], tj, atol=1e-4)  # targets = teacher(view)
    meta = cache.root / "meta.json"
    stamp = meta.stat().st_mtime_ns
    DistillRecipe(cfg).setup(Dist())
    assert meta.stat().st_mtime_ns == stamp  # reused, not recomputed

    torch.manual_seed(cfg.seed)
    student0 = recipe.build(torch.device("cpu"))
    res = train(cfg, resume="never")
    student = robustsim.load(str(res.model_path))
    assert type(student).__name__ == "LipSim" and student.certified and student.embed(plain[None]).shape == (1, 1280)
    p, j, tp_, tj_ = _all(cache)
    x, t = torch.cat([p, j]), torch.cat([tp_, tj_])
    with torch.no_grad():
        before = (student0.features(x) - t).pow(2).mean(1).sqrt().mean()
        after = (student.features(x) - t).pow(2).mean(1).sqrt().mean()
    assert after < 0.9 * before, (before, after)
    assert json.loads((tmp_path / "d" / "teacher_cache" / "meta.json").read_text())["teacher"] == "effnet-lite0-cosine"


def test_distill_random_view_mode_uses_one_view_per_crop(tmp_path):
    from test_train_support import distill_overrides, make_teacher

    from robustsim.train.distill import DistillRecipe

    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = tiny_config("distill", tmp_path / "d", data__view_mode="random",
                      **distill_overrides(teacher, tmp_path / "cache"))
    r = DistillRecipe(cfg)
    r.setup(Dist())
    batch = tuple(torch.stack(t) for t in zip(*(r.cache[i] for i in range(8))))
    x, t = r.prepare(None, batch, StepContext(0, 0, Dist()))
    took_jit = (x == batch[1]).flatten(1).all(1)
    took_plain = (x == batch[0]).flatten(1).all(1)
    assert bool((took_jit | took_plain).all()) and 0 < int(took_jit.sum()) < 8
    assert torch.equal(t[took_jit], batch[3][took_jit]) and torch.equal(t[~took_jit], batch[2][~took_jit])


# --------------------------------------------------------------------------- R-LPIPS


def _rlpips_cfg(tmp_path, triplets, **kw):
    return tiny_config("rlpips", tmp_path, data__kind="tensors", data__root=str(triplets), data__limit=None, **kw)


def test_rlpips_adversarial_step_is_proper_pgd_within_budget(tmp_path, triplets):
    from robustsim.train.rlpips import RankingObjective, RLPIPSRecipe

    cfg = _rlpips_cfg(tmp_path / "r", triplets, attack__steps=3, attack__target="x0+x1")
    recipe = RLPIPSRecipe(cfg)
    recipe.setup(Dist())
    torch.manual_seed(0)
    model = recipe.build(torch.device("cpu"))
    ref, x0, x1, judge = _all(recipe.dataset())
    ref, x0, x1, judge = ref[:6], x0[:6], x1[:6], judge[:6]
    r2, a2, b2, j2 = recipe.prepare(model, (ref, x0, x1, judge), StepContext(0, 0, Dist()))
    assert torch.equal(r2, ref) and torch.equal(j2, judge)
    for adv, clean in ((a2, x0), (b2, x1)):
        assert (adv - clean).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert (adv - clean).abs().max() > 2 / 255  # it moved
    model.eval()
    obj = RankingObjective(model, ref, x0, x1, judge, "x0+x1")
    with torch.no_grad():
        idx = torch.arange(6)
        clean_loss = obj(obj.center(), idx)[0]
        adv_loss = obj(torch.stack([a2, b2], 1), idx)[0]
    assert bool((adv_loss >= clean_loss - 1e-6).all()) and adv_loss.mean() > clean_loss.mean()


def test_rlpips_natural_training_lowers_the_ranking_loss_and_exports(tmp_path, triplets):
    from robustsim.train.rlpips import RLPIPSRecipe

    cfg = _rlpips_cfg(tmp_path / "r", triplets, attack__enabled=False, train__steps=8, optim__lr=0.01,
                      optim__schedule="constant", model__init_lin="random")
    recipe = RLPIPSRecipe(cfg)
    recipe.setup(Dist())
    ref, x0, x1, judge = _all(recipe.dataset())
    torch.manual_seed(cfg.seed)
    start = recipe.build(torch.device("cpu")).eval()
    res = train(cfg, resume="never")
    ck = torch.load(res.checkpoint, weights_only=True)["model"]
    end = recipe.build(torch.device("cpu"))
    end.load_state_dict(ck)
    end.eval()

    def bce(m):
        with torch.no_grad():
            d0, d1 = m.distances(ref, x0, x1)
            return F.binary_cross_entropy(m.head(d0, d1).clamp(1e-7, 1 - 1e-7), judge).item()

    assert bce(end) < bce(start)
    lin = [v for k, v in ck.items() if k.startswith("metric.lin")]
    assert lin and all(bool((w >= 0).all()) for w in lin)  # clamped after every step
    # two ways to load the result: robustsim's file, and the released-checkpoint format via the rlpips hub entry
    a = robustsim.load(str(res.model_path))
    b = robustsim.load("rlpips-linf-x0", weights=str(res.out_dir / "rlpips.pth"))
    with torch.no_grad():
        da, db, dm = a(ref, x0), b(ref, x0), end.metric(ref, x0)
    assert torch.allclose(da, dm, atol=1e-6) and torch.allclose(db, dm, atol=1e-6)


def test_rlpips_adversarial_run_resumes_exactly(tmp_path, triplets):
    cfg = lambda d: _rlpips_cfg(tmp_path / d, triplets, train__steps=4, train__batch_size=4, attack__steps=1)  # noqa: E731
    full = train(cfg("full"), resume="never")
    part1 = train(cfg("split"), stop_at=2)
    part2 = train(cfg("split"))
    assert part1.losses + part2.losses == full.losses


def test_rlpips_reads_the_bapps_layout(tmp_path):
    """A BAPPS-layout folder (real photos as patches) goes through data/bapps.py into training."""
    import numpy as np
    from PIL import Image

    from conftest import real_photo
    from robustsim.train.data import build_triplets

    base = tmp_path / "bapps" / "2afc" / "train" / "traditional"
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    for sub in ("ref", "p0", "p1", "judge"):
        (base / sub).mkdir(parents=True)
    for i, name in enumerate(names):
        ref = real_photo(name, 64)[0]
        imgs = {"ref": ref, "p0": (ref * 0.9).clamp(0, 1), "p1": ref.flip(-1)}
        for sub, img in imgs.items():
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(base / sub / f"{i:03d}.png")
        np.save(base / "judge" / f"{i:03d}.npy", np.array([0.25 * i], dtype=np.float32))
    cfg = tiny_config("rlpips", tmp_path / "r", data__kind="bapps", data__root=str(tmp_path / "bapps"),
                      data__subsets=["traditional"], data__limit=None, train__batch_size=2, train__steps=2)
    data = build_triplets(cfg.data)
    assert len(data) == 4
    ref, x0, x1, judge = data[2]
    assert ref.shape == (3, 64, 64) and float(judge) == pytest.approx(0.5)
    assert torch.allclose(ref, real_photo("coffee", 64)[0], atol=1 / 255 + 1e-6)
    res = train(cfg, resume="never")
    assert res.status == "done" and robustsim.load(str(res.model_path)).lpips


def test_data_parts_concatenate_sets_with_their_own_options(tmp_path):
    """data.parts appends more sets after the first, each its options merged over data.options."""
    from robustsim.errors import InputError
    from robustsim.train.data import build_triplets

    def tensor_file(name, n, fill, judge):
        p = tmp_path / f"{name}.pt"
        torch.save({"ref": torch.full((n, 3, 8, 8), fill), "x0": torch.zeros(n, 3, 8, 8),
                    "x1": torch.ones(n, 3, 8, 8), "judge": torch.full((n,), judge)}, p)
        return str(p)

    a, b = tensor_file("a", 3, 0.25, 0.0), tensor_file("b", 2, 0.75, 1.0)
    cfg = tiny_config("finetune", tmp_path / "f", data__kind="tensors", data__root=a, data__limit=None, data__size=8,
                      data__parts=[{"root": b}])
    data = build_triplets(cfg.data)
    assert len(data) == 5
    got = [(float(data[i][0].mean()), float(data[i][3])) for i in range(5)]
    assert got == [(0.25, 0.0)] * 3 + [(0.75, 1.0)] * 2
    cfg.data.limit = 4  # the limit caps the concatenation, not each part
    assert len(build_triplets(cfg.data)) == 4
    cfg.data.parts = [["not", "a", "mapping"]]
    with pytest.raises(InputError, match="data.parts"):
        build_triplets(cfg.data)
    with pytest.raises(InputError, match=r"data.parts\[0\].root=.*gone.pt"):
        tiny_config("finetune", tmp_path / "f", data__kind="tensors", data__root=a, data__parts=[{"root": str(tmp_path / "gone.pt")}])


# --------------------------------------------------------------------------- hinge fine-tuning


def test_finetune_hinge_loss_goes_down_and_model_loads(tmp_path):
    from robustsim.train.finetune import FinetuneRecipe

    cfg = tiny_config("finetune", tmp_path / "f", train__steps=8, optim__lr=0.003, data__limit=16)
    recipe = FinetuneRecipe(cfg)
    recipe.setup(Dist())
    data = _all(recipe.dataset())
    torch.manual_seed(cfg.seed)
    start = recipe.build(torch.device("cpu")).eval()
    res = train(cfg, resume="never")
    end = robustsim.load(str(res.model_path))

    def hinge(m):
        with torch.no_grad():
            return recipe.loss(m, data)[0].item()

    assert hinge(end) < hinge(start)
    assert end.certified and type(end).__name__ == "LipSim"


def test_finetune_margin_is_the_hinge_margin(tmp_path):
    from robustsim.train.finetune import FinetuneRecipe

    cfg = tiny_config("finetune", tmp_path / "f", loss__margin=0.05, data__limit=8)
    r = FinetuneRecipe(cfg)
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(0)
    m = r.build(torch.device("cpu")).eval()
    judge = torch.tensor([0.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        e = m.embed(torch.cat([x, x, x.flip(-1)]))
        d0 = (e[:4] - e[4:8]).pow(2).sum(1) / 2
        d1 = (e[:4] - e[8:]).pow(2).sum(1) / 2
        near = torch.where(judge > 0.5, d1, d0)
        far = torch.where(judge > 0.5, d0, d1)
        want = torch.relu(0.05 - (far - near)).mean()
        got = r.loss(m, (x, x, x.flip(-1), judge))[0]
    assert torch.allclose(got, want, atol=1e-7)


# --------------------------------------------------------------------------- CLI


def test_cli_trains_and_reports_bad_config(tmp_path, capsys):
    from robustsim.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "finetune", "--config", str(CONFIGS / "finetune_tiny.yaml"), "--set", f"out_dir={out}",
               "--set", "train.steps=2", "--set", "data.limit=8", "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "done" and robustsim.load(info["model"]).certified
    rc = main(["train", "finetune", "--config", str(CONFIGS / "finetune_tiny.yaml"), "--set", "train.bogus=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.bogus" in err and len(err.strip().splitlines()) == 1
    rc = main(["train", "distill", "--config", str(CONFIGS / "finetune_tiny.yaml")])
    assert rc == 2 and "is a 'finetune' config" in capsys.readouterr().err
