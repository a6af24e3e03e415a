"""The training loop every recipe shares: seeding, data order, checkpoints, exact resume, DDP, logs.

Exactness. Everything random is derived from (seed, step): the data order of epoch e is a
permutation drawn from a generator seeded with (seed, e), and a recipe's per-step randomness (PGD
random starts, ...) comes from :meth:`StepContext.generator`. A checkpoint therefore only needs the
step to put the data loader back where it was; it still stores model, optimizer, scheduler and the
global RNG states so a resumed run continues exactly, on CPU bit for bit.

Multi-process. Under ``torchrun`` (or :func:`spawn_local`), each process takes its contiguous slice
of the same global batch and the module is wrapped in DistributedDataParallel (gloo on CPU, NCCL on
CUDA). DDP averages the per-process mean gradients, which equals the gradient of the global-batch
mean, so N processes train the same model as one process with the same global batch.

Checkpoints are written atomically (temporary file, then rename) every ``checkpoint_every`` steps,
on SIGINT/SIGTERM and at the end. A checkpoint is only written once the loss of its parameters has
been seen to be finite; a NaN/Inf loss stops the run with a message and the last good checkpoint
stays in place.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import InputError, RobustsimError
from .checkpoint import (CHECKPOINT, CKPT_VERSION, atomic_save, check_fingerprint, checkpoint_step, read_checkpoint,
                         rng_state, set_rng_state)
from .common import Recipe, StepContext, mix
from .config import RecipeConfig
from .distributed import Dist, free_port, setup_distributed

LOG = "log.csv"


class TrainingDiverged(RobustsimError):
    """The loss (or the parameters) became NaN/Inf; the last good checkpoint was kept."""


# --------------------------------------------------------------------------- data order


class StepBatches(torch.utils.data.Sampler):
    """Index batches for global steps [start, stop): this process's slice of the global batch.

    Epoch e visits the dataset in a permutation drawn from a generator seeded with (seed, e); the
    last incomplete batch of an epoch is dropped, so every step has exactly ``batch_size`` samples.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise InputError(f"train.batch_size={batch_size} must be divisible by the number of processes ({world})")
        if n < batch_size:
            raise InputError(f"the training set has {n} samples, fewer than train.batch_size={batch_size}")
        self.n, self.bs, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def position(self, step: int) -> Tuple[int, int]:
        """(epoch, batch index within the epoch) of a global step."""
        return divmod(step, self.per_epoch)

    def global_batch(self, step: int) -> torch.Tensor:
        epoch, pos = self.position(step)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix(self.seed, 0x5EED, epoch))
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm[pos * self.bs:(pos + 1) * self.bs]

    def __iter__(self) -> Iterator[List[int]]:
        local = self.bs // self.world
        for step in range(self.start, self.stop):
            idx = self.global_batch(step)
            yield idx[self.rank * local:(self.rank + 1) * local].tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# --------------------------------------------------------------------------- schedules


def lr_lambda(cfg: RecipeConfig, total: int) -> Callable[[int], float]:
    """Multiplier of the base lr at each step for the configured schedule."""
    o = cfg.optim
    warm = max(0, o.warmup_steps)

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "cosine":
            span = max(1, total - warm)
            t = min(1.0, (step - warm) / span)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        # linear-decay: constant until decay_start * total, then linearly to 0 at the last step
        start = int(round(o.decay_start * total))
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(1, total - start))

    return f


# --------------------------------------------------------------------------- scalar logs


class ScalarLog:
    """CSV log of per-step scalars (plus TensorBoard event files when tensorboard is installed)."""

    def __init__(self, out_dir: Path, start_step: int, tensorboard: bool):
        self.path = out_dir / LOG
        self.fields: Optional[List[str]] = None
        rows: List[Dict[str, str]] = []
        if start_step > 0 and self.path.is_file():  # resume: keep rows before the resumed step
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if int(r["step"]) < start_step]
        self._f = open(self.path, "w", newline="")
        self._w: Optional[csv.DictWriter] = None
        if self.fields:
            self._open_writer(self.fields)
            self._w.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step)
            except Exception:  # tensorboard is optional
                self.tb = None

    def _open_writer(self, fields: List[str]) -> None:
        self.fields = fields
        self._w = csv.DictWriter(self._f, fieldnames=fields, extrasaction="ignore")
        if self._f.tell() == 0:
            self._w.writeheader()

    def write(self, step: int, scalars: Dict[str, float]) -> None:
        if self._w is None:
            self._open_writer(["step"] + list(scalars))
        self._w.writerow({"step": step, **{k: f"{v:.9g}" for k, v in scalars.items()}})
        self._f.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    status: str  # "done" or "interrupted"
    step: int  # optimisation steps done
    total_steps: int
    losses: List[Tuple[int, float]]  # (step, global mean loss) for the steps run in this call
    checkpoint: Optional[Path] = None
    model_path: Optional[Path] = None
    seconds: float = 0.0  # wall time of the call, set-up included
    samples_per_second: float = 0.0  # global samples per second of the training loop


class StopFlag:
    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def autocast_for(device: torch.device, amp: str):
    """Mixed precision only on CUDA; on CPU training runs in float32 whatever the setting."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext(), None
    if amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def to_device(batch: Any, device: torch.device) -> Tuple[torch.Tensor, ...]:
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


class LossModule(nn.Module):
    """Wraps (module, recipe.loss) so that DDP sees the loss computation as its forward."""

    def __init__(self, module: nn.Module, fn: Callable[..., Tuple[torch.Tensor, Dict[str, float]]]):
        super().__init__()
        self.module = module
        self._fn = fn

    def forward(self, *batch: torch.Tensor):
        return self._fn(self.module, batch)


@dataclass
class RunState:
    """What one :meth:`Trainer.run` call builds and updates as it goes."""

    data: Any
    total: int
    module: nn.Module
    params: List[torch.Tensor]
    opt: torch.optim.Optimizer
    sched: Any
    fingerprint: Dict[str, Any]
    ckpt_path: Path
    start: int = 0
    step: int = 0
    last_good: Optional[Path] = None
    status: str = "done"
    losses: List[Tuple[int, float]] = field(default_factory=list)
    wrapped: Any = None
    autocast: Any = None
    scaler: Any = None
    sampler: Any = None
    loader: Any = None
    log: Optional["ScalarLog"] = None
    t_loop: float = 0.0


class Trainer:
    """Runs a :class:`Recipe` under a config; see the module docstring for the guarantees.

    :meth:`run` is a sequence of steps, each its own method: :meth:`setup` (data, model, optimiser),
    :meth:`restore` (resume from a checkpoint), :meth:`open_loop` (DDP, loader, logs), :meth:`loop`
    (which calls :meth:`train_step` per step and :meth:`save` at checkpoints) and :meth:`finish`.
    """

    def __init__(self, cfg: RecipeConfig, recipe: Recipe, dist: Optional[Dist] = None):
        self.cfg = cfg
        self.recipe = recipe
        self.dist = dist or setup_distributed(cfg.train.device)
        self.out_dir = Path(cfg.out_dir).expanduser()

    def total_steps(self, n: int) -> int:
        t = self.cfg.train
        if t.steps is not None:
            return int(t.steps)
        return max(1, int(math.ceil(t.epochs * max(1, n // t.batch_size))))

    def run(self, resume: Any = "auto", stop_at: Optional[int] = None, step_callback: Optional[Callable[[int], None]] = None) -> TrainResult:
        """Train; resume = "auto" (from out_dir's checkpoint if any), "never", or a checkpoint path.

        stop_at: behave as if interrupted once this many steps are done (saves a checkpoint).
        step_callback: called with the step number after each step (tests send signals from it).
        """
        t0 = time.perf_counter()
        st = self.setup()
        self.restore(st, resume)
        self.open_loop(st)
        stop = self.loop(st, stop_at, step_callback)
        return self.finish(st, stop, stop_at, t0)

    # ------------------------------------------------------------------ the steps of run()

    def setup(self) -> RunState:
        """Seed, let the recipe set up, build data, model, optimiser and schedule."""
        cfg, dist, recipe = self.cfg, self.dist, self.recipe
        seed_everything(cfg.seed)
        recipe.setup(dist)
        data = recipe.dataset()
        total = self.total_steps(len(data))
        seed_everything(cfg.seed)  # again: setup may or may not have drawn random numbers (e.g. a cached teacher)
        module = recipe.build(dist.device).to(dist.device)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise InputError(f"{recipe.name}: the model has no trainable parameters")
        opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
        return RunState(data=data, total=total, module=module, params=params, opt=opt, sched=sched,
                        fingerprint={"recipe": recipe.name, "arch": recipe.arch(module)},
                        ckpt_path=self.out_dir / CHECKPOINT)

    def restore(self, st: RunState, resume: Any) -> None:
        """Continue from a checkpoint when ``resume`` asks for one (and one exists)."""
        cfg = self.cfg
        resume_from: Optional[Path] = None
        if resume not in ("never", None, False):
            resume_from = st.ckpt_path if resume in ("auto", True) else Path(resume)
            if resume not in ("auto", True) and not resume_from.is_file():
                raise InputError(f"checkpoint to resume from not found: {resume_from}")
            if not resume_from.is_file():
                resume_from = None
        if resume_from is not None:
            ck = read_checkpoint(resume_from)
            check_fingerprint(ck["fingerprint"], st.fingerprint, resume_from)
            from ..hub import strict_load

            strict_load(st.module, ck["model"], f"checkpoint {resume_from}")
            st.opt.load_state_dict(ck["optimizer"])
            st.sched.load_state_dict(ck["scheduler"])
            # the config's lr wins over the saved one (so a diverged run can resume with a lower lr);
            # with an unchanged config this reproduces the saved values exactly
            st.sched.base_lrs = [cfg.optim.lr for _ in st.opt.param_groups]
            f = lr_lambda(cfg, st.total)
            for g in st.opt.param_groups:
                g["lr"] = cfg.optim.lr * f(st.sched.last_epoch)
            set_rng_state(ck["rng"])
            st.start = int(ck["step"])
            if st.start > st.total:
                raise InputError(f"{resume_from} is at step {st.start}, past this run's {st.total} steps")
        st.step = st.start
        st.last_good = resume_from

    def open_loop(self, st: RunState) -> None:
        """DDP wrapper, mixed precision, the step-indexed loader, the output folder and the scalar log."""
        cfg, dist = self.cfg, self.dist
        st.wrapped = LossModule(st.module, self.recipe.loss)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            st.wrapped = DDP(st.wrapped, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        st.autocast, st.scaler = autocast_for(dist.device, cfg.train.amp)
        st.sampler = StepBatches(len(st.data), cfg.train.batch_size, cfg.seed, st.start, st.total, dist.rank, dist.world)
        st.loader = torch.utils.data.DataLoader(
            st.data, batch_sampler=st.sampler, num_workers=cfg.train.num_workers,
            pin_memory=dist.device.type == "cuda", persistent_workers=False,
        )
        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml_dump(cfg.to_dict()))
        st.log = ScalarLog(self.out_dir, st.start, cfg.train.tensorboard) if dist.is_main else None

    def save(self, st: RunState, step: int) -> Path:
        """Write the checkpoint of the parameters after ``step`` updates (rank 0), then wait for every rank."""
        if self.dist.is_main:
            atomic_save({
                "format": "robustsim-train", "version": CKPT_VERSION, "fingerprint": st.fingerprint,
                "step": step, "data_position": list(st.sampler.position(step)),
                "model": st.module.state_dict(), "optimizer": st.opt.state_dict(), "scheduler": st.sched.state_dict(),
                "rng": rng_state(), "config": json.dumps(self.cfg.to_dict()),
            }, st.ckpt_path)
        self.dist.barrier()
        return st.ckpt_path

    def loop(self, st: RunState, stop_at: Optional[int], step_callback: Optional[Callable[[int], None]]) -> StopFlag:
        """Steps until the total, a signal or ``stop_at``; checkpoints on the way and at the end."""
        from tqdm.auto import tqdm

        bar = tqdm(total=st.total, initial=st.start, desc=f"train {self.recipe.name}", unit="step",
                   disable=not self.dist.is_main or None, dynamic_ncols=True)
        st.module.train()
        st.t_loop = time.perf_counter()
        try:
            with StopFlag() as stop:
                it = iter(st.loader)
                while st.step < st.total:
                    if stop.signal is not None or (stop_at is not None and st.step >= stop_at):
                        st.last_good = self.save(st, st.step)
                        st.status = "interrupted"
                        break
                    gl = self.train_step(st, next(it))
                    st.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{gl:.4g}")
                    if step_callback is not None:
                        step_callback(st.step)
                if st.status == "done":
                    if not all(bool(torch.isfinite(p).all()) for p in st.module.parameters()):
                        raise TrainingDiverged(
                            f"{self.recipe.name}: the parameters became NaN/Inf in the last step; "
                            f"the last good checkpoint is {st.last_good}; lower optim.lr"
                        )
                    st.last_good = self.save(st, st.step)
        finally:
            bar.close()
            if st.log is not None:
                st.log.close()
        return stop

    def train_step(self, st: RunState, batch: Any) -> float:
        """One optimisation step at ``st.step``; returns the global mean loss."""
        cfg, dist, recipe, step = self.cfg, self.dist, self.recipe, st.step
        batch = to_device(batch, dist.device)
        ctx = StepContext(step, cfg.seed, dist)
        # global RNG (dropout, ...) re-seeded from (seed, step, rank): resume is exact by construction
        torch.manual_seed(mix(cfg.seed, step, dist.rank, 0x61))
        batch = recipe.prepare(st.module, batch, ctx)
        with st.autocast:
            loss, extras = st.wrapped(*batch)
        loss = loss.float()
        if not dist.all_true(bool(torch.isfinite(loss).all())):
            where = (f"; the last good checkpoint is {st.last_good} (step {checkpoint_step(st.last_good)})"
                     if st.last_good else "; no checkpoint was written before it")
            raise TrainingDiverged(
                f"{recipe.name}: the loss became {loss.item()} at step {step}{where}; "
                f"lower optim.lr (now {cfg.optim.lr:g}) or check the data"
            )
        if step > st.start and step % cfg.train.checkpoint_every == 0:
            st.last_good = self.save(st, step)  # parameters after `step` updates, their loss seen finite
        st.opt.zero_grad(set_to_none=True)
        if st.scaler is not None:
            st.scaler.scale(loss).backward()
            st.scaler.unscale_(st.opt)
        else:
            loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(st.params, cfg.train.grad_clip)
        lr = st.opt.param_groups[0]["lr"]
        if st.scaler is not None:
            st.scaler.step(st.opt)
            st.scaler.update()
        else:
            st.opt.step()
        st.sched.step()
        with torch.no_grad():
            recipe.after_step(st.module)
        gl = float(dist.mean(loss.detach()).item())
        st.losses.append((step, gl))
        if st.log is not None and step % cfg.train.log_every == 0:
            st.log.write(step, {"loss": gl, "lr": lr, **{k: float(v) for k, v in extras.items()}})
        return gl

    def finish(self, st: RunState, stop: StopFlag, stop_at: Optional[int], t0: float) -> TrainResult:
        """Export the trained metric (when done), say how to resume (when interrupted), report."""
        dist = self.dist
        model_path = None
        if st.status == "done" and dist.is_main:
            st.module.eval()
            model_path = self.recipe.export(st.module, self.out_dir)
        dist.barrier()
        seconds = time.perf_counter() - t0
        loop_seconds = time.perf_counter() - st.t_loop
        done = st.step - st.start
        if st.status == "interrupted" and dist.is_main:
            why = f"signal {stop.signal}" if stop.signal is not None else f"stop at step {stop_at}"
            print(f"robustsim train: interrupted ({why}) at step {st.step}/{st.total}; checkpoint {st.last_good}; "
                  f"run the same command again to resume", flush=True)
        return TrainResult(self.out_dir, st.status, st.step, st.total, st.losses, st.last_good, model_path, seconds,
                           done * self.cfg.train.batch_size / loop_seconds if loop_seconds > 0 else 0.0)


def yaml_dump(d: Dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(d)), sort_keys=False)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


RECIPE_CLASSES = {
    "rlpips": "robustsim.train.rlpips:RLPIPSRecipe",
    "distill": "robustsim.train.distill:DistillRecipe",
    "finetune": "robustsim.train.finetune:FinetuneRecipe",
}


def make_recipe(cfg: RecipeConfig) -> Recipe:
    import importlib

    mod, _, cls = RECIPE_CLASSES[cfg.recipe].partition(":")
    return getattr(importlib.import_module(mod), cls)(cfg)


def train(cfg: RecipeConfig, resume: Any = "auto", stop_at: Optional[int] = None,
          step_callback: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Run the recipe a config names (one process, or this process's part under torchrun)."""
    dist = setup_distributed(cfg.train.device)
    try:
        return Trainer(cfg, make_recipe(cfg), dist).run(resume=resume, stop_at=stop_at, step_callback=step_callback)
    finally:
        if dist.initialised_here:
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- local processes


def spawn_entry(rank: int, world: int, port: int, cfg_dict: Dict[str, Any], kwargs: Dict[str, Any]) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from .config import from_dict

    train(from_dict(cfg_dict), **kwargs)


def spawn_local(cfg: RecipeConfig, nprocs: int, start_method: str = "spawn", **kwargs: Any) -> None:
    """Run ``train(cfg)`` in ``nprocs`` local processes (a CPU stand-in for torchrun).

    start_method "fork" starts much faster but is only safe when the parent has not started
    OpenMP/CUDA threads (single-threaded CPU torch, as in the tests).
    """
    import torch.multiprocessing as mp

    mp.start_processes(spawn_entry, args=(nprocs, free_port(), cfg.to_dict(), kwargs), nprocs=nprocs, join=True,
                       start_method=start_method)
