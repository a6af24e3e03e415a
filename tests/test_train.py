"""The shared training loop: exact resume, interrupts, divergence, configs, schedules, data order, jitter."""
from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from robustsim.errors import InputError
from robustsim.train.checkpoint import CheckpointMismatch, read_checkpoint
from robustsim.train.trainer import StepBatches, TrainingDiverged, lr_lambda, train
from robustsim.train.config import from_dict, load_config

from test_train_support import CONFIGS, distill_overrides, make_teacher, state_of, tiny_config


@pytest.fixture(scope="module")
def teacher_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    return make_teacher(root / "teacher.safetensors"), root / "cache"


def _distill(tmp, teacher_env, name="run", **kw):
    teacher, cache = teacher_env
    return tiny_config("distill", tmp / name, **{**distill_overrides(teacher, cache), **kw})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- exact resume


def test_resume_after_stop_matches_uninterrupted_run_bit_for_bit(tmp_path, teacher_env):
    full = train(_distill(tmp_path, teacher_env, "full"), resume="never")
    assert full.status == "done" and full.step == 8
    part1 = train(_distill(tmp_path, teacher_env, "split"), stop_at=4)
    assert part1.status == "interrupted" and part1.model_path is None
    assert read_checkpoint(part1.checkpoint)["step"] == 4
    part2 = train(_distill(tmp_path, teacher_env, "split"))  # resume="auto" picks up the checkpoint
    assert part2.status == "done"
    assert [s for s, _ in part2.losses] == [4, 5, 6, 7]
    assert part1.losses + part2.losses == full.losses  # exact float equality, every step
    a, b = state_of(full.model_path), state_of(part2.model_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the CSV log of the resumed run is the same as the uninterrupted one
    assert _rows(tmp_path / "full" / "log.csv") == _rows(tmp_path / "split" / "log.csv")


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_is_exact(tmp_path, teacher_env):
    full = train(_distill(tmp_path, teacher_env, "full", train__steps=6), resume="never")

    def send(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    part1 = train(_distill(tmp_path, teacher_env, "sig", train__steps=6), step_callback=send)
    assert signal.getsignal(signal.SIGTERM) is old  # handlers restored
    assert part1.status == "interrupted" and part1.step == 3
    assert read_checkpoint(part1.checkpoint)["step"] == 3
    part2 = train(_distill(tmp_path, teacher_env, "sig", train__steps=6))
    assert part1.losses + part2.losses == full.losses


def test_checkpoint_holds_everything_needed_to_resume(tmp_path, teacher_env):
    res = train(_distill(tmp_path, teacher_env, train__steps=2), resume="never")
    ck = read_checkpoint(res.checkpoint)
    assert {"model", "optimizer", "scheduler", "rng", "step", "data_position", "fingerprint", "config"} <= set(ck)
    assert ck["step"] == 2 and ck["data_position"] == [0, 2]  # 32 crops / batch 8 = 4 steps per epoch
    assert ck["fingerprint"]["recipe"] == "distill"
    assert not list(res.out_dir.glob("*.tmp*"))  # atomic writes leave no temporary files


# --------------------------------------------------------------------------- bad input


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, teacher_env):
    cfg = _distill(tmp_path, teacher_env, optim__lr=50.0, optim__warmup_steps=0, train__checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, resume="never")
    msg = str(e.value)
    assert "nan" in msg.lower() and "optim.lr" in msg and "last good checkpoint" in msg
    ck = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    bad_step = int(msg.split("at step ")[1].split(";")[0])
    assert 0 < ck["step"] <= bad_step
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    # the same run resumed from it diverges at the same step again: the checkpoint is the state just before
    with pytest.raises(TrainingDiverged, match=f"at step {bad_step};"):
        train(cfg)


def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path, teacher_env):
    train(_distill(tmp_path, teacher_env, train__steps=2), resume="never")
    with pytest.raises(CheckpointMismatch, match=r"another architecture.*linear_inner"):
        train(_distill(tmp_path, teacher_env, train__steps=4, model__arch__linear_inner=16))


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path, teacher_env):
    first = train(_distill(tmp_path, teacher_env, train__steps=2), resume="never")
    cfg = tiny_config("finetune", tmp_path / "ft", data__kind="photos-ordering", data__limit=16)
    with pytest.raises(CheckpointMismatch, match="recipe 'distill', not 'finetune'"):
        train(cfg, resume=str(first.checkpoint))


def test_config_rejects_unknown_keys_naming_them():
    with pytest.raises(InputError, match=r"train\.stepz"):
        load_config(CONFIGS / "distill_tiny.yaml", {"train.stepz": 3})
    with pytest.raises(InputError, match=r"unknown config key\(s\): learning_rate"):
        from_dict({"recipe": "distill", "learning_rate": 0.1, "train": {"steps": 1}})
    with pytest.raises(InputError, match=r"attack\.epsilon"):
        from_dict({"recipe": "rlpips", "train": {"steps": 1}, "attack": {"epsilon": 0.1},
                   "data": {"kind": "photos-ordering"}})


def test_config_reports_missing_data(tmp_path):
    with pytest.raises(InputError, match=r"missing data: data\.root=.*nowhere"):
        from_dict({"recipe": "rlpips", "train": {"steps": 1}, "data": {"kind": "bapps", "root": str(tmp_path / "nowhere")}})
    with pytest.raises(InputError, match=r"data\.folders: .*nophotos"):
        from_dict({"recipe": "distill", "train": {"steps": 1}, "data": {"folders": [str(tmp_path / "nophotos")]}})
    with pytest.raises(InputError, match="data.root is required"):
        from_dict({"recipe": "finetune", "train": {"steps": 1}, "data": {"kind": "nights"}})


def test_config_types_fractions_and_choices():
    cfg = load_config(CONFIGS / "rlpips_tiny.yaml")
    assert cfg.attack.eps == pytest.approx(4 / 255)  # "4/255" in YAML
    with pytest.raises(InputError, match="train.batch_size must be an integer"):
        from_dict({"recipe": "distill", "train": {"steps": 1, "batch_size": "many"}})
    with pytest.raises(InputError, match="exactly one of train.steps and train.epochs"):
        from_dict({"recipe": "distill", "train": {"steps": 1, "epochs": 2}})
    with pytest.raises(InputError, match="attack.target"):
        from_dict({"recipe": "rlpips", "train": {"steps": 1}, "attack": {"target": "x2"}, "data": {"kind": "photos-ordering"}})


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_parses(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", check_paths=False)
    assert cfg.recipe in name or name.startswith(("shipped", "lipsim"))


def test_paper_schedule_of_rlpips():
    cfg = load_config(CONFIGS / "rlpips_paper.yaml", check_paths=False)
    assert (cfg.train.batch_size, cfg.optim.lr, cfg.optim.betas[0]) == (50, 1e-4, 0.5)
    assert cfg.train.epochs == 10 and cfg.optim.schedule == "linear-decay" and cfg.optim.decay_start == 0.5
    f = lr_lambda(cfg, 1000)
    assert [f(s) for s in (0, 499)] == [1.0, 1.0]  # 5 constant epochs
    assert f(750) == pytest.approx(0.5) and f(999) == pytest.approx(0.002)  # then linear decay to 0


def test_cosine_schedule_with_warmup():
    cfg = from_dict({"recipe": "distill", "train": {"steps": 1},
                     "optim": {"schedule": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}}, check_paths=False)
    f = lr_lambda(cfg, 104)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(54) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(104) == pytest.approx(0.1)


# --------------------------------------------------------------------------- data order


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 60), bs_per=st.integers(1, 4), world=st.sampled_from([1, 2, 4]), seed=st.integers(0, 5))
def test_step_batches_cover_each_epoch_once_and_ranks_split_the_global_batch(n, bs_per, world, seed):
    bs = bs_per * world
    assume(n >= bs)
    per_epoch = n // bs
    whole = StepBatches(n, bs, seed, 0, 2 * per_epoch)
    batches = list(whole)
    first = sorted(i for b in batches[:per_epoch] for i in b)
    assert len(first) == len(set(first)) == per_epoch * bs  # no repeats within an epoch
    ranks = [list(StepBatches(n, bs, seed, 0, 2 * per_epoch, r, world)) for r in range(world)]
    for s in range(2 * per_epoch):
        assert sum((ranks[r][s] for r in range(world)), []) == batches[s]
    resumed = list(StepBatches(n, bs, seed, per_epoch - 1, 2 * per_epoch))
    assert resumed == batches[per_epoch - 1:]


def test_batch_must_split_evenly_and_fit_the_data():
    with pytest.raises(InputError, match="divisible by the number of processes"):
        StepBatches(10, 3, 0, 0, 1, 0, 2)
    with pytest.raises(InputError, match="fewer than train.batch_size"):
        StepBatches(3, 4, 0, 0, 1)


# --------------------------------------------------------------------------- colour jitter vs torchvision


def _torchvision_functional():
    # torchvision comes with the test extras (through lpips): the reference must be there, not skipped
    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision.transforms.functional as TF

    return TF


@settings(max_examples=15, deadline=None)
@given(b=st.floats(0.6, 1.4), c=st.floats(0.6, 1.4), s=st.floats(0.8, 1.2), h=st.floats(-0.1, 0.1))
def test_colour_adjustments_match_torchvision(b, c, s, h):
    from conftest import real_photo

    from robustsim.data import augment

    TF = _torchvision_functional()
    x = real_photo("coffee", 32)[0]
    for ours, ref, f in ((augment.adjust_brightness, TF.adjust_brightness, b),
                         (augment.adjust_contrast, TF.adjust_contrast, c),
                         (augment.adjust_saturation, TF.adjust_saturation, s),
                         (augment.adjust_hue, TF.adjust_hue, h)):
        assert torch.allclose(ours(x, f), ref(x, f), atol=2e-5), ours.__name__
    assert torch.allclose(augment.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_color_jitter_probabilities_and_range():
    from robustsim.data.augment import color_jitter

    x = torch.rand(400, 3, 4, 4)
    y = color_jitter(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    unchanged = (y == x).flatten(1).all(1).float().mean().item()
    gray = ((y[:, 0] == y[:, 1]) & (y[:, 1] == y[:, 2])).flatten(1).all(1).float().mean().item()
    assert abs(unchanged - 0.2 * 0.8) < 0.06  # neither jittered (p=0.8) nor made gray (p=0.2)
    assert abs(gray - 0.2) < 0.06
    same = color_jitter(x, torch.Generator().manual_seed(0))
    assert torch.equal(y, same)  # seeded


# --------------------------------------------------------------------------- teacher cache


def test_interrupted_teacher_cache_build_continues_where_it_stopped(tmp_path, teacher_env, monkeypatch):

    from robustsim.train import distill

    teacher, _ = teacher_env
    ov = {"data__cache_dir": str(tmp_path / "c1"), "teacher__batch_size": 8}
    fresh = distill.DistillRecipe(_distill(tmp_path, teacher_env, "a", **ov)).prepare_cache()

    calls = {"n": 0}
    real = distill.teacher_targets

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the build is stopped during its third batch
        return real(*a, **k)

    monkeypatch.setattr(distill, "teacher_targets", flaky)
    ov2 = {"data__cache_dir": str(tmp_path / "c2"), "teacher__batch_size": 8}
    with pytest.raises(KeyboardInterrupt):
        distill.DistillRecipe(_distill(tmp_path, teacher_env, "b", **ov2)).prepare_cache()
    meta = __import__("json").loads((tmp_path / "c2" / "meta.json").read_text())
    assert meta["complete"] is False and meta["done"] == 16
    calls["n"] = 10  # no more interruptions; count the batches the second attempt needs
    resumed = distill.DistillRecipe(_distill(tmp_path, teacher_env, "b", **ov2)).prepare_cache()
    assert calls["n"] == 10 + 2  # only the two missing batches of 8 crops (32 in all)
    for f in ("views.u8", "targets.f32"):
        assert np.array_equal(np.fromfile(fresh.root / f, dtype=np.uint8), np.fromfile(resumed.root / f, dtype=np.uint8))
