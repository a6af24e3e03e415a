"""Convert released LipSim checkpoints (the official ``L2LipschitzNetwork``) to robustsim's format.

The official checkpoint is a dict with ``model_state_dict`` whose keys carry the DataParallel and
wrapper prefixes ``module.model.``. Conv layer i is ``convs.{i}.{kernel,bias,q}``, dense layer j is
``linear.{j+1}.{weight,bias,q}`` (index 0 is the Flatten), and since the same modules are also
registered in ``base`` every tensor appears a second time as ``base.1.{i}.*`` / ``base.2.{j+1}.*``.
We infer the architecture from the shapes, check the duplicates are equal, and refuse anything else.

The official convolution computes its rescaling with exp(-q) and exp(q) broadcast along the same axis,
so they cancel and its t ignores q entirely; our SLL convolution implements the paper's formula, in
which q matters. Setting the converted conv q to zero makes the two formulas identical (exp(0) = 1 on
both sides), so the converted model computes exactly what the released one computed. The dense layers'
q are used correctly by the official code and are kept.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..errors import WeightsError

OFFICIAL_INPUT = 224
OFFICIAL_POOL = (4, 4)
DEFAULT_EMBED_DIM = 1792  # the DreamSim ensemble's dimension, the teacher of the released models

_CONV = re.compile(r"^(?:convs|base\.1)\.(\d+)\.(kernel|bias|q)$")
_LIN = re.compile(r"^(?:linear|base\.2)\.(\d+)\.(weight|bias|q)$")


def _strip(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _unwrap(obj: Dict, what: str) -> Dict[str, torch.Tensor]:
    for key in ("model_state_dict", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{what} holds no tensors (expected an official LipSim checkpoint with model_state_dict)")
    return tensors


def _dedupe(state: Dict[str, torch.Tensor], what: str) -> Tuple[Dict[int, Dict[str, torch.Tensor]], Dict[int, Dict[str, torch.Tensor]]]:
    """Group into conv layers and dense layers; check the ``base.*`` duplicates agree with the main keys."""
    main_conv: Dict[int, Dict[str, torch.Tensor]] = {}
    main_lin: Dict[int, Dict[str, torch.Tensor]] = {}
    dup: Dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state.items():
        mc, ml = _CONV.match(k), _LIN.match(k)
        if k.startswith("base."):
            if not (mc or ml):
                unknown.append(k)
            else:
                dup[k] = v
            continue
        if mc:
            main_conv.setdefault(int(mc.group(1)), {})[mc.group(2)] = v
        elif ml:
            main_lin.setdefault(int(ml.group(1)), {})[ml.group(2)] = v
        else:
            unknown.append(k)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise WeightsError(f"{what} is not an official LipSim (L2LipschitzNetwork) checkpoint: unexpected keys {shown}")
    for k, v in dup.items():
        mc, ml = _CONV.match(k), _LIN.match(k)
        group, idx, name, main = (main_conv, int(mc.group(1)), mc.group(2), "convs") if mc else (
            main_lin, int(ml.group(1)), ml.group(2), "linear")
        ref = group.get(idx, {}).get(name)
        if ref is None:
            raise WeightsError(f"{what} is inconsistent: {k} has no counterpart {main}.{idx}.{name}")
        if ref.shape != v.shape or not torch.equal(ref, v):
            raise WeightsError(f"{what} is inconsistent: duplicated tensor {k} differs from {main}.{idx}.{name}")
    if dup:  # when the duplicates are there, they must cover every main tensor
        n_main = sum(len(g) for g in main_conv.values()) + sum(len(g) for g in main_lin.values())
        if len(dup) != n_main:
            raise WeightsError(
                f"{what} is inconsistent: {n_main} main tensors but {len(dup)} duplicated base.* tensors"
            )
    return main_conv, main_lin


def _check_layers(group: Dict[int, Dict[str, torch.Tensor]], names: Tuple[str, ...], start: int, kind: str, what: str) -> list:
    idx = sorted(group)
    if idx != list(range(start, start + len(idx))):
        raise WeightsError(f"{what}: {kind} layer indices {idx} are not consecutive from {start}")
    layers = []
    for i in idx:
        missing = [n for n in names if n not in group[i]]
        if missing:
            raise WeightsError(f"{what}: {kind} layer {i} lacks {', '.join(missing)}")
        layers.append(group[i])
    return layers


def infer_official_config(state: Dict[str, torch.Tensor], what: str = "checkpoint"):
    """(depth, channels, conv_inner, kernel_size, linear_depth, linear_inner, convs, linears) from shapes."""
    conv_g, lin_g = _dedupe(state, what)
    convs = _check_layers(conv_g, ("kernel", "bias", "q"), 0, "conv", what)
    lins = _check_layers(lin_g, ("weight", "bias", "q"), 1, "linear", what)
    if not convs:
        raise WeightsError(f"{what} has no conv layers (convs.0.kernel ...); is it an official LipSim checkpoint?")
    inner, channels, k, k2 = convs[0]["kernel"].shape
    if k != k2 or k % 2 != 1:
        raise WeightsError(f"{what}: conv kernels must be square with an odd size, got {k}×{k2}")
    for i, layer in enumerate(convs):
        want = {"kernel": (inner, channels, k, k), "bias": (1, inner, 1, 1), "q": (inner,)}
        for n, shape in want.items():
            if tuple(layer[n].shape) != shape:
                raise WeightsError(f"{what}: convs.{i}.{n} has shape {tuple(layer[n].shape)}, expected {shape}")
    side = OFFICIAL_INPUT // (OFFICIAL_POOL[0] * OFFICIAL_POOL[1])
    features = channels * side * side
    lin_inner = lins[0]["weight"].shape[0] if lins else 1
    for j, layer in enumerate(lins, start=1):
        want = {"weight": (lin_inner, features), "bias": (1, lin_inner), "q": (lin_inner,)}
        for n, shape in want.items():
            if tuple(layer[n].shape) != shape:
                raise WeightsError(
                    f"{what}: linear.{j}.{n} has shape {tuple(layer[n].shape)}, expected {shape} "
                    f"(C={channels} channels × {side}×{side} after pooling)"
                )
    return channels, len(convs), inner, k, len(lins), lin_inner, convs, lins


LIPSIM_CLASS = "robustsim.metrics.lipsim:LipSim"


def convert_official_state(obj: Dict, embed_dim: Optional[int] = None, what: str = "checkpoint"):
    """An official LipSim checkpoint (loaded dict) -> a :class:`robustsim.metrics.lipsim.LipSim` in eval mode.

    embed_dim: number of leading coordinates kept (the official ``n_classes``); it is not stored in the
    checkpoint (truncation has no parameters). Default 1792 (DreamSim ensemble).
    """
    from ..hub import build_metric

    state = _strip(_unwrap(obj, what))
    channels, depth, inner, k, lin_depth, lin_inner, convs, lins = infer_official_config(state, what)
    e = DEFAULT_EMBED_DIM if embed_dim is None else int(embed_dim)
    cfg = dict(
        input_size=OFFICIAL_INPUT, stem="pad", channels=channels, conv_depth=depth, conv_inner=inner,
        kernel_size=k, pool=OFFICIAL_POOL, linear_depth=lin_depth, linear_inner=lin_inner, embed_dim=e,
    )
    ours = {}
    for i, layer in enumerate(convs):
        ours[f"encoder.convs.{i}.kernel"] = layer["kernel"]
        ours[f"encoder.convs.{i}.bias"] = layer["bias"]
        # the official conv t ignores q (exp(-q_i)·exp(q_i) cancel); q = 0 reproduces it with the correct formula
        ours[f"encoder.convs.{i}.q"] = torch.zeros_like(layer["q"])
    for j, layer in enumerate(lins):
        for n in ("weight", "bias", "q"):
            ours[f"encoder.linears.{j}.{n}"] = layer[n]
    # built by class name through the hub (metrics/lipsim.py imports this module to read official files)
    metric = build_metric(LIPSIM_CLASS, cfg, {kk: v.float() for kk, v in ours.items()}, what)
    return metric.eval()


def convert_lipsim(src, dst, embed_dim: Optional[int] = None) -> Path:
    """Read an official checkpoint file and write robustsim's safetensors (``robustsim.load(dst)`` rebuilds it)."""
    from ..hub import load_state_dict, save

    src = Path(src)
    metric = convert_official_state(load_state_dict(src), embed_dim=embed_dim, what=str(src))
    metric.name = Path(dst).stem
    return save(metric, dst, source=src.name)
