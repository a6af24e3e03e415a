"""Process groups for training: rank, world size and device of this process (torchrun's environment).

Under ``torchrun`` (or :func:`robustsim.train.trainer.spawn_local`), each process takes its contiguous
slice of the same global batch and the module is wrapped in DistributedDataParallel (gloo on CPU,
NCCL on CUDA).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import torch

from ..errors import InputError


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


def train_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of train.device (auto, cpu or cuda); under torchrun, cuda means this process's GPU."""
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
    device = train_device(device_name, local_rank)
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
