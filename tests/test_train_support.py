"""Shared set-up of the training tests (no tests here): tiny configs from configs/*_tiny.yaml, a tiny teacher."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def tiny_config(name: str, out_dir: Path, **overrides: Any):
    """configs/{name}_tiny.yaml with out_dir and dotted-key overrides (``train__steps=4`` -> train.steps)."""
    from robustsim.train.config import load_config

    ov: Dict[str, Any] = {"out_dir": str(out_dir)}
    ov.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(CONFIGS / f"{name}_tiny.yaml", ov)


def make_teacher(path: Path) -> Path:
    """A small random LipSim saved by robustsim: a cheap stand-in teacher (48-d) for machinery tests."""
    import robustsim
    from robustsim.metrics.lipsim import LipSim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        t = LipSim(input_size=32, stem="unshuffle2", channels=12, conv_depth=1, conv_inner=4, pool=[2],
                   linear_depth=1, linear_inner=16, embed_dim=48)
    robustsim.save(t, path)
    return path


def distill_overrides(teacher: Path, cache: Path) -> Dict[str, Any]:
    """Make distill_tiny use the small teacher and a shared cache directory."""
    return {"teacher__name": str(teacher), "model__arch__pool": [2], "model__arch__embed_dim": 48,
            "data__cache_dir": str(cache)}


def make_triplet_file(path: Path, n: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Ordering triplets of the real training photos, stored as uint8 tensors (kind: tensors)."""
    from safetensors.torch import save_file

    from robustsim.data.photos import OrderingSuite

    ref, x0, x1, _, judge = OrderingSuite(n=n, size=size, split="train", seed=seed).tensors()
    q = lambda t: (t * 255).round().clamp(0, 255).to(torch.uint8).contiguous()  # noqa: E731
    save_file({"ref": q(ref), "x0": q(x0), "x1": q(x1), "judge": judge.contiguous()}, str(path))
    return path


def state_of(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
