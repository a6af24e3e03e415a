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
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import InputError, RobustsimError
from .config import RecipeConfig

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
CKPT_VERSION = 1


class TrainingDiverged(RobustsimError):
    """The loss (or the parameters) became NaN/Inf; the last good checkpoint was kept."""


class CheckpointMismatch(InputError):
    """A checkpoint written by another recipe or architecture than the one being resumed."""


# --------------------------------------------------------------------------- distributed context


@dataclass
class Dist:
    """Process-group facts: rank, world size and the device this process trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Average a tensor over processes (identity when alone)."""
        if not self.enabled:
            return x
        x = x.detach().clone()
        torch.distributed.all_reduce(x)
        return x / self.world

    def all_true(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() == 0)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"train.device must be auto, cpu or cuda, got {name!r}")


def setup_distributed(device_name: str = "auto") -> Dist:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return Dist(0, 1, 0, device)
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
    return Dist(rank, world, local_rank, device, here)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a local process group."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, world: int, port: int, cfg_dict: Dict[str, Any], kwargs: Dict[str, Any]) -> None:
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

    mp.start_processes(_spawn_entry, args=(nprocs, free_port(), cfg.to_dict(), kwargs), nprocs=nprocs, join=True,
                       start_method=start_method)


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
            g = torch.Generator().manual_seed(_mix(self.seed, 0x5EED, epoch))
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


def _mix(*xs: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


# --------------------------------------------------------------------------- recipes


@dataclass
class StepContext:
    """What a recipe may know about the current step."""

    step: int
    seed: int
    dist: Dist

    def generator(self, per_rank: bool = True, device: Optional[torch.device] = None) -> torch.Generator:
        """A generator seeded from (seed, step[, rank]): reproducible randomness for this step."""
        g = torch.Generator(device=device or self.dist.device)
        g.manual_seed(_mix(self.seed, self.step, self.dist.rank if per_rank else 0, 0xA77))
        return g


class Recipe:
    """What a training recipe provides to :class:`Trainer`.

    ``build`` returns the module whose trainable parameters are optimised (it may hold more than the
    exported metric, e.g. a ranking head); ``loss`` returns the mean loss of a local batch and a dict
    of extra scalars to log; ``export`` writes the trained metric.
    """

    name = "base"

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg

    def setup(self, dist: Dist) -> None:
        """Work done once before training (e.g. caching teacher embeddings); all ranks call it."""

    def build(self, device: torch.device) -> nn.Module:
        raise NotImplementedError

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def prepare(self, module: nn.Module, batch: Tuple[torch.Tensor, ...], ctx: StepContext) -> Tuple[torch.Tensor, ...]:
        """Transform a batch before the loss (the adversarial step lives here)."""
        return batch

    def loss(self, module: nn.Module, batch: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def after_step(self, module: nn.Module) -> None:
        """Called after each optimiser step (e.g. projections such as lin weights >= 0)."""

    def arch(self, module: nn.Module) -> Dict[str, Any]:
        """A JSON-able description of the architecture; a checkpoint of another one is refused."""
        cfg = getattr(module, "config", None)
        desc: Dict[str, Any] = {"class": f"{type(module).__module__}:{type(module).__qualname__}"}
        try:
            desc["config"] = json.loads(json.dumps(cfg(), default=str)) if callable(cfg) else None
        except NotImplementedError:
            desc["config"] = None
        return desc

    def export(self, module: nn.Module, out_dir: Path) -> Path:
        raise NotImplementedError


class _LossModule(nn.Module):
    """Wraps (module, recipe.loss) so that DDP sees the loss computation as its forward."""

    def __init__(self, module: nn.Module, fn: Callable[..., Tuple[torch.Tensor, Dict[str, float]]]):
        super().__init__()
        self.module = module
        self._fn = fn

    def forward(self, *batch: torch.Tensor):
        return self._fn(self.module, batch)


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


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a training checkpoint safely (weights_only: tensors and plain containers only)."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path} is not a robustsim training checkpoint: {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != "robustsim-train" or "fingerprint" not in ck:
        raise InputError(f"{path} is not a robustsim training checkpoint")
    return ck


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


class _StopFlag:
    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
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


def _autocast(device: torch.device, amp: str):
    """Mixed precision only on CUDA; on CPU training runs in float32 whatever the setting."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext(), None
    if amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _to(batch: Any, device: torch.device) -> Tuple[torch.Tensor, ...]:
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


class Trainer:
    """Runs a :class:`Recipe` under a config; see the module docstring for the guarantees."""

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
        cfg, dist, recipe = self.cfg, self.dist, self.recipe
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        recipe.setup(dist)
        data = recipe.dataset()
        n = len(data)
        total = self.total_steps(n)
        seed_everything(cfg.seed)  # again: setup may or may not have drawn random numbers (e.g. a cached teacher)
        module = recipe.build(dist.device).to(dist.device)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise InputError(f"{recipe.name}: the model has no trainable parameters")
        opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
        fingerprint = {"recipe": recipe.name, "arch": recipe.arch(module)}

        start = 0
        ckpt_path = self.out_dir / CHECKPOINT
        resume_from: Optional[Path] = None
        if resume not in ("never", None, False):
            resume_from = ckpt_path if resume in ("auto", True) else Path(resume)
            if resume not in ("auto", True) and not resume_from.is_file():
                raise InputError(f"checkpoint to resume from not found: {resume_from}")
            if not resume_from.is_file():
                resume_from = None
        if resume_from is not None:
            ck = read_checkpoint(resume_from)
            check_fingerprint(ck["fingerprint"], fingerprint, resume_from)
            from ..hub import strict_load

            strict_load(module, ck["model"], f"checkpoint {resume_from}")
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            # the config's lr wins over the saved one (so a diverged run can resume with a lower lr);
            # with an unchanged config this reproduces the saved values exactly
            sched.base_lrs = [cfg.optim.lr for _ in opt.param_groups]
            f = lr_lambda(cfg, total)
            for g in opt.param_groups:
                g["lr"] = cfg.optim.lr * f(sched.last_epoch)
            _set_rng_state(ck["rng"])
            start = int(ck["step"])
            if start > total:
                raise InputError(f"{resume_from} is at step {start}, past this run's {total} steps")
        last_good: Optional[Path] = resume_from

        wrapped: nn.Module = _LossModule(module, recipe.loss)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(wrapped, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        autocast, scaler = _autocast(dist.device, cfg.train.amp)
        sampler = StepBatches(n, cfg.train.batch_size, cfg.seed, start, total, dist.rank, dist.world)
        loader = torch.utils.data.DataLoader(
            data, batch_sampler=sampler, num_workers=cfg.train.num_workers,
            pin_memory=dist.device.type == "cuda", persistent_workers=False,
        )
        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(_yaml(cfg.to_dict()))
        log = ScalarLog(self.out_dir, start, cfg.train.tensorboard) if dist.is_main else None

        def save(step: int) -> Path:
            if dist.is_main:
                atomic_save({
                    "format": "robustsim-train", "version": CKPT_VERSION, "fingerprint": fingerprint,
                    "step": step, "data_position": list(sampler.position(step)),
                    "model": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": _rng_state(), "config": json.dumps(cfg.to_dict()),
                }, ckpt_path)
            dist.barrier()
            return ckpt_path

        from tqdm.auto import tqdm

        losses: List[Tuple[int, float]] = []
        status = "done"
        step = start
        bar = tqdm(total=total, initial=start, desc=f"train {recipe.name}", unit="step", disable=not dist.is_main or None,
                   dynamic_ncols=True)
        module.train()
        t_loop = time.perf_counter()
        try:
            with _StopFlag() as stop:
                it = iter(loader)
                while step < total:
                    if stop.signal is not None or (stop_at is not None and step >= stop_at):
                        last_good = save(step)
                        status = "interrupted"
                        break
                    batch = _to(next(it), dist.device)
                    ctx = StepContext(step, cfg.seed, dist)
                    # global RNG (dropout, ...) re-seeded from (seed, step, rank): resume is exact by construction
                    torch.manual_seed(_mix(cfg.seed, step, dist.rank, 0x61))
                    batch = recipe.prepare(module, batch, ctx)
                    with autocast:
                        loss, extras = wrapped(*batch)
                    loss = loss.float()
                    if not dist.all_true(bool(torch.isfinite(loss).all())):
                        where = f"; the last good checkpoint is {last_good} (step {_ckpt_step(last_good)})" if last_good else "; no checkpoint was written before it"
                        raise TrainingDiverged(
                            f"{recipe.name}: the loss became {loss.item()} at step {step}{where}; "
                            f"lower optim.lr (now {cfg.optim.lr:g}) or check the data"
                        )
                    if step > start and step % cfg.train.checkpoint_every == 0:
                        last_good = save(step)  # parameters after `step` updates, their loss seen finite
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(opt)
                    else:
                        loss.backward()
                    if cfg.train.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                    lr = opt.param_groups[0]["lr"]
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    sched.step()
                    with torch.no_grad():
                        recipe.after_step(module)
                    gl = float(dist.mean(loss.detach()).item())
                    losses.append((step, gl))
                    if log is not None and step % cfg.train.log_every == 0:
                        log.write(step, {"loss": gl, "lr": lr, **{k: float(v) for k, v in extras.items()}})
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{gl:.4g}")
                    if step_callback is not None:
                        step_callback(step)
                if status == "done":
                    if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                        raise TrainingDiverged(
                            f"{recipe.name}: the parameters became NaN/Inf in the last step; "
                            f"the last good checkpoint is {last_good}; lower optim.lr"
                        )
                    last_good = save(step)
        finally:
            bar.close()
            if log is not None:
                log.close()
        model_path = None
        if status == "done" and dist.is_main:
            module.eval()
            model_path = recipe.export(module, self.out_dir)
        dist.barrier()
        seconds = time.perf_counter() - t0
        loop_seconds = time.perf_counter() - t_loop
        done = step - start
        if status == "interrupted" and dist.is_main:
            why = f"signal {stop.signal}" if stop.signal is not None else f"stop at step {stop_at}"
            print(f"robustsim train: interrupted ({why}) at step {step}/{total}; checkpoint {last_good}; "
                  f"run the same command again to resume", flush=True)
        return TrainResult(self.out_dir, status, step, total, losses, last_good, model_path, seconds,
                           done * cfg.train.batch_size / loop_seconds if loop_seconds > 0 else 0.0)


def _ckpt_step(path: Optional[Path]) -> Any:
    try:
        return int(torch.load(str(path), map_location="cpu", weights_only=True)["step"])
    except Exception:
        return "?"


def check_fingerprint(saved: Dict[str, Any], current: Dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint written by another recipe or for another architecture."""
    if saved.get("recipe") != current["recipe"]:
        raise CheckpointMismatch(
            f"{path} was written by recipe {saved.get('recipe')!r}, not {current['recipe']!r}; "
            f"refusing to resume (use another out_dir or --resume never)"
        )
    if saved.get("arch") != current["arch"]:
        a, b = saved.get("arch") or {}, current["arch"]
        diff = _first_difference(a, b)
        raise CheckpointMismatch(
            f"{path} was written for another architecture ({diff}); refusing to resume "
            f"(use another out_dir or --resume never)"
        )


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    return f"{where or 'model'}: checkpoint {a!r} vs config {b!r}"


def _yaml(d: Dict[str, Any]) -> str:
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
