"""Two CPU processes (gloo, DistributedDataParallel) train the same model as one process with the same global batch."""
from __future__ import annotations

import pytest
import torch

from robustsim.train.distributed import Dist
from robustsim.train.trainer import make_recipe, spawn_local, train

from test_train_support import distill_overrides, make_teacher, make_triplet_file, state_of, tiny_config


def _setup(recipe: str, tmp_path):
    if recipe == "distill":
        teacher = make_teacher(tmp_path / "teacher.safetensors")
        ov = {**distill_overrides(teacher, tmp_path / "cache"), "train__steps": 4}
        from robustsim.train.distill import DistillRecipe

        DistillRecipe(tiny_config("distill", tmp_path / "prep", **ov)).setup(Dist())  # cache built once, shared
        return ov
    triplets = make_triplet_file(tmp_path / "t.safetensors", n=8, size=64 if recipe == "rlpips" else 32)
    ov = {"data__kind": "tensors", "data__root": str(triplets), "data__limit": None, "train__steps": 3,
          "train__batch_size": 4}
    if recipe == "rlpips":  # natural training: PGD random starts are seeded per process, so only this is bit-comparable
        ov.update({"attack__enabled": False, "optim__lr": 0.01})
    return ov


@pytest.mark.parametrize("recipe", ["distill", "finetune", "rlpips"])
def test_two_process_ddp_equals_one_process(recipe, tmp_path):
    ov = _setup(recipe, tmp_path)
    one = train(tiny_config(recipe, tmp_path / "one", **ov), resume="never")
    # fork: the children reuse the parent's imports (torch, dynamo) instead of re-importing for many seconds
    spawn_local(tiny_config(recipe, tmp_path / "two", **ov), 2, start_method="fork", resume="never")

    a, b = state_of(one.model_path), state_of(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    init = _initial(recipe, ov, tmp_path)
    moved = max(float((a[k] - init[k]).abs().max()) for k in a if k in init)
    assert moved > 1e-4  # the comparison is not between two untrained models
    # the logged (globally averaged) losses agree too
    l1 = [float(r.split(",")[1]) for r in (tmp_path / "one" / "log.csv").read_text().splitlines()[1:]]
    l2 = [float(r.split(",")[1]) for r in (tmp_path / "two" / "log.csv").read_text().splitlines()[1:]]
    assert len(l1) == len(l2) == one.total_steps and max(abs(x - y) for x, y in zip(l1, l2)) < 1e-5


def _initial(recipe, ov, tmp_path):
    r = make_recipe(tiny_config(recipe, tmp_path / "init", **ov))
    r.setup(Dist())
    torch.manual_seed(0)
    m = r.build(torch.device("cpu"))
    state = m.state_dict()
    if recipe == "rlpips":  # the exported file holds the LPIPS metric only
        state = {k[len("metric."):]: v for k, v in state.items() if k.startswith("metric.")}
    return state
