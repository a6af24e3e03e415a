"""Read PEFT LoRA adapter folders (as DreamSim releases them) and merge them into plain weights.

An adapter folder holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``, ...) and
``adapter_model.safetensors`` or ``adapter_model.bin`` with ``<module>.lora_A.weight`` (r × in) and
``<module>.lora_B.weight`` (out × r). A LoRA linear layer computes ``W x + s·B A x`` with
``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), so merging is
``W <- W + s·B A``: the merged network is the adapted one, without peft.

Folders are read from a directory or from inside a zip archive (:class:`Archive`), tensors with
``weights_only`` torch loading or safetensors, never by unpickling objects.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..errors import WeightsError

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")

# LoRA targets we can merge, as module paths inside one ViT block in DINO layout (DreamSim trains "qkv").
KNOWN_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class Archive:
    """Files of a checkpoint release, from a directory or a zip file, addressed by relative posix path."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path).expanduser()
        self._zip: Optional[zipfile.ZipFile] = None
        if self.path.is_dir():
            names = [
                PurePosixPath(Path(root, f).relative_to(self.path).as_posix())
                for root, _, files in os.walk(self.path)
                for f in files
            ]
        elif self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise WeightsError(f"{self.path} is neither a directory nor a zip archive")
            self._zip = zipfile.ZipFile(self.path)
            names = [PurePosixPath(n) for n in self._zip.namelist() if not n.endswith("/")]
        else:
            raise WeightsError(f"checkpoint not found: {self.path}")
        self.names: List[PurePosixPath] = sorted(n for n in names if "__MACOSX" not in n.parts)

    def __repr__(self) -> str:
        return f"Archive({str(self.path)!r})"

    def find(self, filename: str) -> Optional[PurePosixPath]:
        """The shallowest file with this base name, or None."""
        hits = [n for n in self.names if n.name == filename]
        return min(hits, key=lambda n: (len(n.parts), str(n))) if hits else None

    def folder(self, name: str) -> Optional[PurePosixPath]:
        """The shallowest folder with this name that holds an adapter config, or None."""
        hits = [n.parent for n in self.names if n.name == CONFIG_NAME and n.parent.name == name]
        return min(hits, key=lambda n: (len(n.parts), str(n))) if hits else None

    def adapter_folders(self) -> List[str]:
        """Names of every folder that holds an adapter config (to say what a checkpoint is)."""
        return sorted({n.parent.name for n in self.names if n.name == CONFIG_NAME})

    def read_bytes(self, name: PurePosixPath) -> bytes:
        if self._zip is not None:
            return self._zip.read(str(name))
        return (self.path / name).read_bytes()

    def where(self, name: PurePosixPath) -> str:
        return f"{self.path}{'!' if self._zip is not None else os.sep}{name}"

    def load_tensors(self, name: PurePosixPath) -> Any:
        """A torch (weights_only) or safetensors file inside the archive."""
        data = self.read_bytes(name)
        what = self.where(name)
        if name.suffix == ".safetensors":
            from safetensors.torch import load as load_st

            try:
                return load_st(data)
            except Exception as e:
                raise WeightsError(f"{what} is not a valid safetensors file: {e}") from e
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(
                f"refusing to load {what}: it is not a plain tensor checkpoint loadable with weights_only=True ({e})"
            ) from e

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


@dataclass
class LoraUpdate:
    """One adapted linear layer: W += scale · B @ A (and its bias replaced when trained)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    fan_in_fan_out: bool = False

    def delta(self) -> torch.Tensor:
        d = (self.b.double() @ self.a.double()) * self.scale
        return d.T if self.fan_in_fan_out else d


@dataclass
class LoraAdapter:
    """A parsed adapter: updates keyed by (model index or None, module path in DINO layout)."""

    config: Dict[str, Any]
    updates: Dict[Tuple[Optional[int], str], LoraUpdate] = field(default_factory=dict)
    biases: Dict[Tuple[Optional[int], str], torch.Tensor] = field(default_factory=dict)
    source: str = ""

    def models(self) -> List[Optional[int]]:
        return sorted({k[0] for k in [*self.updates, *self.biases]}, key=lambda i: -1 if i is None else i)


# "<prefix>[extractor_list.<i>.]...<root-level ViT module>....lora_A[.<adapter>].weight"
_KEY = re.compile(
    r"^(?:.*?\bextractor_list\.(?P<model>\d+)\.)?(?:.*?\.)?(?P<module>(?:blocks|patch_embed|norm|pos_drop|head)(?:\.[\w]+)*?)"
    r"\.(?:lora_(?P<ab>[AB])(?:\.(?P<adapter>[\w-]+))?\.weight|(?P<bias>bias))$"
)


def _pattern_value(pattern: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the key matches the module name or a dotted suffix."""
    for key, value in pattern.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _target_ok(target: str) -> bool:
    return any(t == target or t.endswith("." + target) for t in KNOWN_TARGETS)


def check_config(cfg: Mapping[str, Any], what: str) -> None:
    """Reject adapter configs this merger cannot reproduce exactly (naming the offending field)."""
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise WeightsError(f"{what}: adapter type {peft_type!r} is not LoRA")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise WeightsError(f"{what}: adapter_config.json has no {key!r}")
    if cfg.get("use_dora"):
        raise WeightsError(f"{what}: DoRA adapters (use_dora) are not supported")
    if cfg.get("modules_to_save"):
        raise WeightsError(f"{what}: modules_to_save={cfg['modules_to_save']} is not supported (only LoRA layers)")
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        raise WeightsError(f"{what}: regex target_modules {targets!r} are not supported; list module names")
    unknown = [t for t in targets if not _target_ok(t)]
    if unknown:
        raise WeightsError(
            f"{what}: unknown LoRA target {', '.join(map(repr, unknown))}; this loader merges {', '.join(KNOWN_TARGETS)}"
        )


def read_adapter(archive: Archive, folder: PurePosixPath) -> LoraAdapter:
    """Parse an adapter folder inside an archive: config, tensors, scales."""
    where = archive.where(folder)
    names = set(archive.names)
    try:
        cfg = json.loads(archive.read_bytes(folder / CONFIG_NAME).decode("utf-8"))
    except (KeyError, FileNotFoundError) as e:
        raise WeightsError(f"{where}: missing {CONFIG_NAME}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{where}/{CONFIG_NAME} is not valid JSON: {e}") from e
    check_config(cfg, where)
    weight_file = next((folder / w for w in WEIGHT_NAMES if folder / w in names), None)
    if weight_file is None:
        raise WeightsError(f"{where}: no adapter weights ({' or '.join(WEIGHT_NAMES)})")
    state = archive.load_tensors(weight_file)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{archive.where(weight_file)} does not contain a state dict")

    adapter = LoraAdapter(config=cfg, source=archive.where(weight_file))
    r_cfg, alpha_cfg = int(cfg["r"]), float(cfg["lora_alpha"])
    pairs: Dict[Tuple[Optional[int], str], Dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise WeightsError(f"{adapter.source}: entry {key!r} is not a tensor")
        m = _KEY.match(key)
        if m is None:
            raise WeightsError(f"{adapter.source}: cannot place adapter tensor {key!r} in the model")
        idx = None if m.group("model") is None else int(m.group("model"))
        module = m.group("module")
        if m.group("bias"):
            prev = adapter.biases.get((idx, module))
            if prev is not None and not torch.equal(prev, t):
                raise WeightsError(f"{adapter.source}: two different biases for {module}")
            adapter.biases[(idx, module)] = t
            continue
        slot = pairs.setdefault((idx, module), {})
        prev = slot.get(m.group("ab"))
        if prev is not None and not torch.equal(prev, t):  # DreamSim v0.1 registers each block twice
            raise WeightsError(f"{adapter.source}: two different lora_{m.group('ab')} for {module}")
        slot[m.group("ab")] = t
    for (idx, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise WeightsError(f"{adapter.source}: {module} has lora_{'A' if 'A' in ab else 'B'} but not its pair")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise WeightsError(f"{adapter.source}: {module} has LoRA factors of shapes {tuple(a.shape)}, {tuple(b.shape)}")
        r = int(_pattern_value(cfg.get("rank_pattern") or {}, module, r_cfg))
        if a.shape[0] != r:
            raise WeightsError(f"{adapter.source}: {module} has rank {a.shape[0]} but the config says r={r}")
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, alpha_cfg))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        adapter.updates[(idx, module)] = LoraUpdate(a, b, scale, bool(cfg.get("fan_in_fan_out", False)))
    if not adapter.updates:
        raise WeightsError(f"{adapter.source}: the adapter holds no LoRA tensors")
    return adapter


def merge(state: Mapping[str, torch.Tensor], adapter: LoraAdapter, model: Optional[int], what: str) -> Dict[str, torch.Tensor]:
    """A copy of a DINO-layout state dict with the adapter's updates for ``model`` merged in.

    Every update must land on an existing 2-D weight (a linear layer) of matching shape; anything
    else is reported as an unknown LoRA target rather than silently ignored.
    """
    out = dict(state)
    for (idx, module), up in adapter.updates.items():
        if idx != model:
            continue
        rel = module.split(".", 2)[-1] if module.startswith("blocks.") else module
        key = module + ".weight"
        if not _target_ok(rel) or key not in out or out[key].ndim != 2:
            raise WeightsError(f"{what}: unknown LoRA target {module!r} (this loader merges {', '.join(KNOWN_TARGETS)})")
        w = out[key]
        d = up.delta()
        if tuple(d.shape) != tuple(w.shape):
            raise WeightsError(f"{what}: LoRA update for {module} has shape {tuple(d.shape)}, the weight {tuple(w.shape)}")
        out[key] = (w.double() + d).to(w.dtype)
    for (idx, module), bias in adapter.biases.items():
        if idx != model:
            continue
        key = module + ".bias"
        if key not in out or out[key].shape != bias.shape:
            raise WeightsError(f"{what}: adapter bias for {module!r} does not fit the model")
        out[key] = bias.to(out[key].dtype)
    return out
