"""DreamSim and plain ViT metrics: release-format loading, LoRA merging, preprocessing, bad input.

No weights can be downloaded, so every test writes random weights in the official release formats
(DINO-layout state dicts, ``{"state_dict": ..., "proj"}`` CLIP files, SynCLR's ``{"model":
{"module.visual.*"}}``, PEFT adapter folders) and compares our loader with an independent reference:
a plain-torch ViT forward written from DreamSim's code (``feature_extraction/vision_transformer.py``,
``load_clip_as_dino.py``, ``extractor.py``) on weights merged here as W + (alpha/r) B A.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustsim
from robustsim import hub
from robustsim.errors import InputError, WeightsError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# backbone -> (patch, grid in the released weights, is CLIP, activation, LN eps, mean/std, file name)
SPECS = {
    "dino_vitb16": (16, 14, False, "gelu", 1e-6, IMAGENET, "dino_vitbase16_pretrain.pth"),
    "dinov2_vitb14": (14, 37, False, "gelu", 1e-6, IMAGENET, "dinov2_vitb14_pretrain.pth"),
    "synclr_vitb16": (16, 14, False, "gelu", 1e-6, IMAGENET, "synclr_vit_b_16.pth"),
    "clip_vitb16": (16, 14, True, "quick_gelu", 1e-5, CLIP, "clip_vitb16_pretrain.pth.tar"),
    "clip_vitb32": (32, 7, True, "quick_gelu", 1e-5, CLIP, "clip_vitb32_pretrain.pth.tar"),
    "open_clip_vitb16": (16, 14, True, "gelu", 1e-5, CLIP, "open_clip_vitb16_pretrain.pth.tar"),
    "open_clip_vitb32": (32, 7, True, "gelu", 1e-5, CLIP, "open_clip_vitb32_pretrain.pth.tar"),
}
SMALL = {"depth": 2, "width": 64, "heads": 2}


# --------------------------------------------------------------------------- official-format writers


def rand_state(backbone, depth, width, proj_dim=None, seed=0):
    """Random DINO-layout weights of a backbone, with magnitudes that keep activations O(1)."""
    patch, grid, clip, _, _, _, _ = SPECS[backbone]
    g = torch.Generator().manual_seed(seed)

    def t(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    d = width
    s = {"cls_token": t(1, 1, d, std=0.5), "pos_embed": t(1, grid * grid + 1, d, std=0.5),
         "patch_embed.proj.weight": t(d, 3, patch, patch, std=1.0 / patch), "patch_embed.proj.bias": t(d, std=0.2)}
    if clip:
        s["pos_drop.weight"], s["pos_drop.bias"] = t(d, std=0.1, mean=1.0), t(d, std=0.1)
    for i in range(depth):
        p = f"blocks.{i}."
        s[p + "norm1.weight"], s[p + "norm1.bias"] = t(d, std=0.1, mean=1.0), t(d, std=0.1)
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = t(3 * d, d, std=d ** -0.5), t(3 * d, std=0.1)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = t(d, d, std=d ** -0.5), t(d, std=0.1)
        s[p + "norm2.weight"], s[p + "norm2.bias"] = t(d, std=0.1, mean=1.0), t(d, std=0.1)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = t(4 * d, d, std=d ** -0.5), t(4 * d, std=0.1)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = t(d, 4 * d, std=(4 * d) ** -0.5), t(d, std=0.1)
        if backbone == "dinov2_vitb14":
            s[p + "ls1.gamma"], s[p + "ls2.gamma"] = t(d, std=0.3, mean=1.0), t(d, std=0.3, mean=1.0)
    s["norm.weight"], s["norm.bias"] = t(d, std=0.1, mean=1.0), t(d, std=0.1)
    if clip:
        s["proj"] = t(d, proj_dim, std=d ** -0.5)
    if backbone == "dinov2_vitb14":
        s["mask_token"] = t(1, d)
    return s


def write_backbone(folder: Path, backbone: str, state):
    """Save in the release's own container format."""
    name = SPECS[backbone][6]
    if backbone.startswith(("clip", "open_clip")):
        obj = {"state_dict": dict(state)}
    elif backbone == "synclr_vitb16":
        obj = {"model": {"module.visual." + k: v for k, v in state.items()}}
    else:
        obj = dict(state)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def rand_lora(depth, width, r, seed, std=0.5):
    g = torch.Generator().manual_seed(seed)
    return {j: (torch.randn(r, width, generator=g) * std, torch.randn(3 * width, r, generator=g) * std) for j in range(depth)}


def write_adapter(folder: Path, tensors, r, alpha, targets=("qkv",), fmt="safetensors", **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.3, "bias": "none",
              "target_modules": list(targets), "fan_in_fan_out": False, "inference_mode": True,
              "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "task_type": None, **cfg}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(folder / "adapter_model.safetensors"))
    else:
        torch.save(tensors, folder / "adapter_model.bin")


def ensemble_lora_keys(loras):
    """DreamSim 0.2: one PEFT model over the whole PerceptualModel."""
    out = {}
    for i, lora in enumerate(loras):
        for j, (a, b) in lora.items():
            p = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv"
            out[p + ".lora_A.weight"], out[p + ".lora_B.weight"] = a, b
    return out


def single_lora_keys(lora):
    """DreamSim 0.1 style: PEFT over ViTModel(model), whose blocks are registered twice."""
    out = {}
    for j, (a, b) in lora.items():
        for p in (f"base_model.model.model.blocks.{j}.attn.qkv", f"base_model.model.blocks.{j}.attn.qkv"):
            out[p + ".lora_A.weight"], out[p + ".lora_B.weight"] = a, b
    return out


def merged(state, lora, r, alpha):
    s = dict(state)
    for j, (a, b) in lora.items():
        s[f"blocks.{j}.attn.qkv.weight"] = s[f"blocks.{j}.attn.qkv.weight"] + (alpha / r) * (b @ a)
    return s


def zip_dir(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return dest


# --------------------------------------------------------------------------- the reference forward


def reference_features(backbone, state, x, heads):
    """DreamSim's feature of a backbone, written out in plain torch from its reference code."""
    patch, grid, clip, act, eps, (mean, std), _ = SPECS[backbone]
    if x.shape[-2:] != (224, 224):
        x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    n, d = x.shape[0], state["cls_token"].shape[-1]
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    t = torch.cat([state["cls_token"].expand(n, -1, -1), t.flatten(2).transpose(1, 2)], dim=1)
    pos = state["pos_embed"]
    if backbone == "dinov2_vitb14":  # DINOv2 interpolate_pos_encoding: scale (new + 0.1) / M, bicubic
        m, new = grid, 224 // patch
        pp = pos[:, 1:].reshape(1, m, m, d).permute(0, 3, 1, 2)
        pp = F.interpolate(pp, scale_factor=((new + 0.1) / m, (new + 0.1) / m), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], pp.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)
    t = t + pos
    if clip:  # DreamSim replaces pos_drop with CLIP's ln_pre
        t = F.layer_norm(t, (d,), state["pos_drop.weight"], state["pos_drop.bias"], eps)
    gelu = (lambda z: z * torch.sigmoid(1.702 * z)) if act == "quick_gelu" else F.gelu
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps)
        qkv = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
        o = F.linear((att @ v).transpose(1, 2).reshape(n, -1, d), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        t = t + o * state.get(p + "ls1.gamma", 1.0)
        h = F.layer_norm(t, (d,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps)
        h = F.linear(gelu(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                     state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        t = t + h * state.get(p + "ls2.gamma", 1.0)
    if clip:  # model(x) = norm(x)[:, 0], then @ proj
        return F.layer_norm(t[:, 0], (d,), state["norm.weight"], state["norm.bias"], eps) @ state["proj"]
    return t[:, 0]  # the hook on blocks[11]: CLS before the final norm


def reference_embedding(feats):
    """DreamSim >= 0.2 normalize_embedding: subtract the mean, divide by the norm."""
    f = torch.cat(feats, dim=1)
    f = f - f.mean(dim=1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True)


def photos(size=96):
    from conftest import real_photo

    return torch.cat([real_photo("astronaut", size), real_photo("coffee", size)])


# --------------------------------------------------------------------------- fixtures


SMALL_ENSEMBLE = {"dino_vitb16": SMALL, "clip_vitb16": {**SMALL, "out_dim": 32},
                  "open_clip_vitb16": {"depth": 2, "width": 64, "heads": 4, "out_dim": 16}}


@pytest.fixture(scope="module")
def small_ensemble(tmp_path_factory):
    """A DreamSim 0.2 ensemble release (reduced widths) as a folder and as a zip, with its reference weights."""
    root = tmp_path_factory.mktemp("ds_small")
    rel = root / "release"
    states, loras = [], []
    r, alpha = 4, 8.0
    for i, b in enumerate(("dino_vitb16", "clip_vitb16", "open_clip_vitb16")):
        o = SMALL_ENSEMBLE[b]
        s = rand_state(b, o["depth"], o["width"], o.get("out_dim"), seed=10 + i)
        # DreamSim gets the DINO backbone from torch.hub: it sits in the hub cache's checkpoints/ folder
        write_backbone(rel / "checkpoints" if b == "dino_vitb16" else rel, b, s)
        states.append(s)
        loras.append(rand_lora(o["depth"], o["width"], r, seed=20 + i))
    torch.save({"student": {"module.head.last_layer.weight": torch.zeros(1)}}, rel / "dino_vitb16_pretrain.pth")
    write_adapter(rel / "ensemble_lora", ensemble_lora_keys(loras), r, alpha)
    z = zip_dir(rel, root / "dreamsim_ensemble_checkpoint.zip")
    return {"dir": rel, "zip": z, "states": states, "loras": loras, "r": r, "alpha": alpha,
            "heads": [SMALL_ENSEMBLE[b]["heads"] for b in SMALL_ENSEMBLE]}


@pytest.fixture(scope="module")
def small_metric(small_ensemble):
    return robustsim.load("dreamsim-ensemble", weights=small_ensemble["zip"], arch=SMALL_ENSEMBLE)


# --------------------------------------------------------------------------- loading matches the reference


def test_small_ensemble_zip_matches_reference_forward(small_ensemble, small_metric):
    x = photos(96)
    e = small_metric.embed(x)
    r, alpha = small_ensemble["r"], small_ensemble["alpha"]
    feats = [reference_features(b, merged(s, lo, r, alpha), x, h) for b, s, lo, h in
             zip(SMALL_ENSEMBLE, small_ensemble["states"], small_ensemble["loras"], small_ensemble["heads"])]
    ref = reference_embedding(feats)
    assert small_metric.dims == [64, 32, 16] and e.shape == (2, 112)
    torch.testing.assert_close(small_metric.features(x), torch.cat(feats, 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(e, ref, rtol=0, atol=1e-5)
    d_ref = 1 - F.cosine_similarity(ref[:1], ref[1:])
    torch.testing.assert_close(small_metric(x[:1], x[1:]), d_ref, rtol=0, atol=1e-5)
    # the LoRA update matters: the un-merged backbones give a clearly different embedding
    plain = reference_embedding([reference_features(b, s, x, h) for b, s, h in
                                 zip(SMALL_ENSEMBLE, small_ensemble["states"], small_ensemble["heads"])])
    assert (plain - ref).abs().max() > 1e-2


def test_folder_and_zip_load_the_same(small_ensemble, small_metric):
    m = robustsim.load("dreamsim-ensemble", weights=small_ensemble["dir"], arch=SMALL_ENSEMBLE)
    x = photos(64)
    torch.testing.assert_close(m.embed(x), small_metric.embed(x), rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["dinov2_vitb14", "synclr_vitb16", "clip_vitb32", "open_clip_vitb32", "dino_vitb16"])
def test_single_branch_releases_match_reference(tmp_path, backbone):
    o = {**SMALL, "out_dim": 24} if SPECS[backbone][2] else dict(SMALL)
    s = rand_state(backbone, o["depth"], o["width"], o.get("out_dim"), seed=3)
    lora = rand_lora(o["depth"], o["width"], 4, seed=4)
    write_backbone(tmp_path, backbone, s)
    # DreamSim 0.1-style keys (blocks registered twice) in a .bin for half of them, 0.2 safetensors otherwise
    v01 = backbone in ("clip_vitb32", "dino_vitb16")
    write_adapter(tmp_path / f"{backbone}_single_lora", single_lora_keys(lora) if v01 else
                  {k.replace("extractor_list.0.", ""): v for k, v in ensemble_lora_keys([lora]).items()},
                  4, 2.0, fmt="bin" if v01 else "safetensors")
    m = robustsim.load(f"dreamsim-{backbone.replace('_', '-')}", weights=tmp_path, arch={backbone: o})
    x = photos(64)
    ref = reference_embedding([reference_features(backbone, merged(s, lora, 4, 2.0), x, o["heads"])])
    torch.testing.assert_close(m.embed(x), ref, rtol=0, atol=1e-5)
    assert m.embed_dim == (24 if SPECS[backbone][2] else 64)


def test_plain_cosine_metric_from_a_single_file(tmp_path):
    o = {**SMALL, "out_dim": 24}
    s = rand_state("clip_vitb32", 2, 64, 24, seed=5)
    path = write_backbone(tmp_path, "clip_vitb32", s)
    m = robustsim.load("clip-vitb32-cosine", weights=path, arch={"clip_vitb32": o})
    x = photos(64)
    f = reference_features("clip_vitb32", s, x, 2)
    assert not m.center
    torch.testing.assert_close(m(x[:1], x[1:]), 1 - F.cosine_similarity(f[:1], f[1:]), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_full_vitb16_ensemble_end_to_end(tmp_path):
    """The real architecture: three ViT-B/16 (12 blocks, 768 wide, 12 heads), 768 + 512 + 512 = 1792."""
    rel = tmp_path / "release"
    states, loras = [], []
    for i, b in enumerate(("dino_vitb16", "clip_vitb16", "open_clip_vitb16")):
        states.append(rand_state(b, 12, 768, 512, seed=30 + i))
        write_backbone(rel, b, states[-1])
        loras.append(rand_lora(12, 768, 16, seed=40 + i, std=0.6))
    write_adapter(rel / "ensemble_lora", ensemble_lora_keys(loras), 16, 0.5)  # DreamSim's r and alpha
    m = robustsim.load("dreamsim-ensemble", weights=rel)
    assert m.dims == [768, 512, 512] and m.embed_dim == 1792 and m.input_size == (224, 224)
    assert not any(p.requires_grad for p in m.parameters())
    x = photos(112)[:1]
    with torch.no_grad():
        e = m.embed(x)
        ref = reference_embedding([reference_features(b, merged(s, lo, 16, 0.5), x, 12)
                                   for b, s, lo in zip(("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), states, loras)])
    assert e.shape == (1, 1792)
    torch.testing.assert_close(e, ref, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- preprocessing and normalisation


def test_preprocessing_matches_dreamsim_pil_resize(small_metric):
    """DreamSim resizes PIL images (bicubic, antialiased) to 224; our tensor resize must agree."""
    import skimage.data
    from PIL import Image

    img = skimage.data.astronaut()  # 512×512 real photo
    pil = torch.from_numpy(np.array(Image.fromarray(img).resize((224, 224), Image.BICUBIC))).permute(2, 0, 1).float() / 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ours = small_metric.resize(x)[0].clamp(0, 1)
    plain = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    assert ours.shape == (3, 224, 224)
    assert (ours - pil).abs().mean() < 0.5 / 255  # only PIL's uint8 rounding apart
    assert (plain - pil).abs().mean() > 5 * (ours - pil).abs().mean()
    for b, (mean, std) in zip(small_metric.encoder.branches, (IMAGENET, CLIP, CLIP)):
        torch.testing.assert_close(b.mean.flatten(), torch.tensor(mean))
        torch.testing.assert_close(b.std.flatten(), torch.tensor(std))


def test_embedding_is_centred_and_unit(small_metric):
    x = photos(64)
    f = small_metric.features(x)
    e = small_metric.embed(x)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(e.mean(dim=1), torch.zeros(2), rtol=0, atol=1e-7)
    # DreamSim 0.1's order (normalise, then subtract the mean) gives the same cosine distance
    u = f / f.norm(dim=1, keepdim=True)
    u = u - u.mean(dim=1, keepdim=True)
    d01 = 1 - F.cosine_similarity(u[:1], u[1:])
    torch.testing.assert_close(small_metric(x[:1], x[1:]), d01, rtol=0, atol=1e-6)


def test_attack_gradients_and_teacher_batches(small_metric):
    x = photos(64).requires_grad_(True)
    y = photos(64).flip(0)
    small_metric(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    from robustsim.metrics.dreamsim import teacher_embeddings

    imgs = torch.cat([photos(64), photos(64).flip(-1), photos(64).flip(-2)])
    t = teacher_embeddings(small_metric, imgs, batch_size=4, progress=False)
    assert not t.requires_grad and t.shape == (6, 112)
    torch.testing.assert_close(t, small_metric.embed(imgs).detach(), rtol=0, atol=1e-6)


def test_save_and_reload_as_robustsim_file(small_metric, tmp_path):
    path = hub.save(small_metric, tmp_path / "ds.safetensors")
    again = robustsim.load(path)
    x = photos(64)
    assert type(again).__name__ == "DreamSim" and again.dims == small_metric.dims
    torch.testing.assert_close(again(x[:1], x[1:]), small_metric(x[:1], x[1:]), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- bad input


def _copy_without(src: Path, dest: Path, skip: str) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for n in zin.namelist():
            if skip not in n:
                zout.writestr(n, zin.read(n))
    return dest


def test_zip_missing_the_adapter(small_ensemble, tmp_path):
    bad = _copy_without(small_ensemble["zip"], tmp_path / "no_adapter.zip", "ensemble_lora/")
    with pytest.raises(WeightsError, match=r"no LoRA adapter ensemble_lora/"):
        robustsim.load("dreamsim-ensemble", weights=bad, arch=SMALL_ENSEMBLE)


def test_unknown_lora_target_in_config(small_ensemble, tmp_path):
    rel = tmp_path / "rel"
    with zipfile.ZipFile(small_ensemble["zip"]) as z:
        z.extractall(rel)
    cfg = json.loads((rel / "ensemble_lora" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["qkv", "q_proj"]
    (rel / "ensemble_lora" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"unknown LoRA target 'q_proj'"):
        robustsim.load("dreamsim-ensemble", weights=rel, arch=SMALL_ENSEMBLE)


def test_unknown_lora_target_in_tensors(tmp_path):
    s = rand_state("dino_vitb16", 2, 64, seed=1)
    write_backbone(tmp_path, "dino_vitb16", s)
    a, b = torch.randn(4, 64), torch.randn(64, 4)
    write_adapter(tmp_path / "dino_vitb16_single_lora",
                  {"base_model.model.blocks.0.attn.q_proj.lora_A.weight": a,
                   "base_model.model.blocks.0.attn.q_proj.lora_B.weight": b}, 4, 1.0)
    with pytest.raises(WeightsError, match=r"unknown LoRA target 'blocks\.0\.attn\.q_proj'"):
        robustsim.load("dreamsim-dino-vitb16", weights=tmp_path, arch={"dino_vitb16": SMALL})


def test_checkpoint_of_another_type(tmp_path):
    o = {**SMALL, "out_dim": 24}
    s = rand_state("clip_vitb32", 2, 64, 24, seed=2)
    write_backbone(tmp_path / "rel", "clip_vitb32", s)
    write_adapter(tmp_path / "rel" / "clip_vitb32_single_lora", single_lora_keys(rand_lora(2, 64, 4, 5)), 4, 1.0, fmt="bin")
    z = zip_dir(tmp_path / "rel", tmp_path / "dreamsim_clip_vitb32_checkpoint.zip")
    with pytest.raises(WeightsError, match=r"'clip_vitb32' checkpoint.*dreamsim-clip-vitb32"):
        robustsim.load("dreamsim-ensemble", weights=z)
    # the right name loads it
    m = robustsim.load("dreamsim-clip-vitb32", weights=z, arch={"clip_vitb32": o})
    assert m.embed_dim == 24


def test_wrong_architecture_is_named(tmp_path):
    s = rand_state("clip_vitb32", 2, 64, 24, seed=2)  # patch-32 weights offered to a patch-16 model
    (tmp_path / "x").mkdir()
    torch.save({"state_dict": s}, tmp_path / "x" / "clip_vitb16_pretrain.pth.tar")
    with pytest.raises(WeightsError, match=r"wrong shapes: conv1\.weight"):
        robustsim.load("clip-vitb16-cosine", weights=tmp_path / "x", arch={"clip_vitb16": {**SMALL, "out_dim": 24}})


def test_extra_not_installed(monkeypatch, small_ensemble):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(InputError, match=r"pip install 'robustsim\[dreamsim\]'"):
        robustsim.load("dreamsim-ensemble", weights=small_ensemble["zip"], arch=SMALL_ENSEMBLE)


def test_unpublished_checksum_is_recorded_then_enforced(tmp_path):
    from robustsim.metrics.dreamsim import _fetch

    wf = hub.WeightFile(filename="dreamsim_test.zip")
    cached = hub.cache_dir() / wf.filename
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"release bytes")
    with pytest.warns(UserWarning, match="no published checksum"):
        assert _fetch(wf) == cached
    assert (cached.parent / "dreamsim_test.zip.sha256").is_file()
    assert _fetch(wf) == cached  # unchanged: accepted silently
    cached.write_bytes(b"tampered bytes")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        _fetch(wf)


# --------------------------------------------------------------------------- torchvision compatibility


def test_compat_step_lets_timm_and_open_clip_import():
    from robustsim import _compat

    _compat.ensure_torchvision_importable()
    import open_clip  # noqa: F401
    import timm  # noqa: F401

    plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    # the schemas were declared exactly when a plain import of torchvision fails on this machine
    assert bool(_compat._LIBS) == (plain.returncode != 0), plain.stderr[-500:]
    if plain.returncode != 0:
        assert "torchvision::" in plain.stderr


def test_compat_step_does_nothing_where_torchvision_imports(monkeypatch, tmp_path):
    from robustsim import _compat

    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("WORKS = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(_compat, "_LIBS", [])

    def no_library(*a, **k):
        raise AssertionError("declared torchvision schemas although torchvision imports normally")

    monkeypatch.setattr(torch.library, "Library", no_library)
    assert _compat.ensure_torchvision_importable() is False
    assert sys.modules["torchvision"].WORKS and _compat._LIBS == []


def test_offline_without_weights_names_the_release(monkeypatch):
    from robustsim.errors import OfflineError

    with pytest.raises(OfflineError, match=r"dreamsim_ensemble_checkpoint\.zip.*releases/download/v0\.2\.0-checkpoints"):
        robustsim.load("dreamsim-ensemble", arch=SMALL_ENSEMBLE)
    with pytest.raises(OfflineError, match=r"dino_vitbase16_pretrain\.pth"):
        robustsim.load("dino-vitb16-cosine", arch={"dino_vitb16": SMALL})
