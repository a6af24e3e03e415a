"""Official LipSim checkpoint conversion: exact reproduction of the official network, and refusals."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustsim
from robustsim.cli import main as cli_main
from robustsim.errors import WeightsError
from robustsim.lipschitz.convert import convert_lipsim, convert_official_state

FIX = "fixtures/lipsim_official/lipsim_tiny_a"


@pytest.fixture(scope="module")
def official(shared_dir):
    ckpt = shared_dir / f"{FIX}.ckpt-1234.pth"
    io = torch.load(shared_dir / f"{FIX}.io.pt", weights_only=True)
    return ckpt, io


def official_forward(state, x, n_classes):
    """The official L2LipschitzNetwork forward, written from its published formulas (conv t ignores q)."""
    s = {k.replace("module.model.", ""): v for k, v in state.items()}
    C = s["convs.0.kernel"].shape[1]
    h = F.pad(x, (0, 0, 0, 0, 0, C - 3))
    i = 0
    while f"convs.{i}.kernel" in s:
        K, b, q = s[f"convs.{i}.kernel"], s[f"convs.{i}.bias"], s[f"convs.{i}.q"]
        kk = F.conv2d(K, K, padding=K.shape[-1] - 1).abs()
        t = 1 / (torch.exp(-q).view(-1, 1, 1, 1) * kk * torch.exp(q).view(-1, 1, 1, 1)).sum((1, 2, 3))
        r = t.view(1, -1, 1, 1) * torch.relu(F.conv2d(h, K, padding=1) + b)
        h = h - 2 * F.conv_transpose2d(r, K, padding=1)
        i += 1
    h = F.avg_pool2d(F.avg_pool2d(h, 4, divisor_override=4), 4, divisor_override=4).flatten(1)
    j = 1
    while f"linear.{j}.weight" in s:
        W, b, q = s[f"linear.{j}.weight"], s[f"linear.{j}.bias"], s[f"linear.{j}.q"]
        t = torch.einsum("i,ik,kj,j->ij", torch.exp(-q), W, W.T, torch.exp(q)).abs().sum(1)
        h = h - 2 * F.linear((1 / t) * torch.relu(F.linear(h, W) + b), W.T)
        j += 1
    return h[:, :n_classes]


def test_fixture_embeddings_reproduced(official, tmp_path):
    ckpt, io = official
    out = tmp_path / "tiny.safetensors"
    assert cli_main(["convert", "lipsim", str(ckpt), str(out), "--embed-dim", "32"]) == 0
    m = robustsim.load(str(out))
    x = io["images_uint8"].float() / 255
    with torch.no_grad():
        g = m.features(x)
        e = m.embed(x)
    # the fixture holds the raw network output g(x) (norms ~38), before the projection onto the sphere
    assert io["embedding"].norm(dim=1).min() > 2
    assert (g - io["embedding"]).abs().max() <= 1e-5
    assert torch.allclose(e, F.normalize(io["embedding"], dim=1), atol=1e-6)
    assert m.certified and m.cfg.conv_depth == 2 and m.cfg.channels == 6 and m.cfg.linear_inner == 64


def test_converter_conv_q_zero_is_what_keeps_it_exact(official):
    """With the official q kept, our (correct) conv formula would compute something else."""
    ckpt, io = official
    m = convert_official_state(torch.load(ckpt, weights_only=True), embed_dim=32)
    assert all(float(c.q.detach().abs().max()) == 0 for c in m.encoder.convs)
    raw = torch.load(ckpt, weights_only=True)["model_state_dict"]
    with torch.no_grad():
        for i, c in enumerate(m.encoder.convs):
            c.q.copy_(raw[f"module.model.convs.{i}.q"])
        g = m.features(io["images_uint8"].float() / 255)
    assert (g - io["embedding"]).abs().max() > 1e-3


def _synthetic_official(depth=3, C=9, inner=4, lin_depth=2, F_=16, seed=0):
    """A checkpoint in the official key layout with other dimensions (and a non-zero conv q)."""
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(depth):
        s[f"convs.{i}.kernel"] = torch.randn(inner, C, 3, 3, generator=g) * 0.3
        s[f"convs.{i}.bias"] = torch.randn(1, inner, 1, 1, generator=g) * 0.1
        s[f"convs.{i}.q"] = torch.randn(inner, generator=g)
    for j in range(1, lin_depth + 1):
        s[f"linear.{j}.weight"] = torch.randn(F_, C * 196, generator=g) * 0.03
        s[f"linear.{j}.bias"] = torch.randn(1, F_, generator=g) * 0.1
        s[f"linear.{j}.q"] = torch.randn(F_, generator=g)
    dup = {}
    for k, v in s.items():
        kind, idx, name = k.split(".")
        dup[f"base.{1 if kind == 'convs' else 2}.{idx}.{name}"] = v.clone()
    state = {f"module.model.{k}": v for k, v in {**s, **dup}.items()}
    return {"model_state_dict": state, "global_step": 7}


def test_architecture_inferred_from_shapes():
    obj = _synthetic_official()
    m = convert_official_state(obj, embed_dim=20)
    c = m.cfg
    assert (c.conv_depth, c.channels, c.conv_inner, c.linear_depth, c.linear_inner, c.embed_dim) == (3, 9, 4, 2, 16, 20)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(m.features(x), official_forward(obj["model_state_dict"], x, 20), atol=1e-5)


def test_default_embed_dim_is_1792():
    obj = _synthetic_official(depth=1, C=12, inner=2, lin_depth=1, F_=8)
    assert convert_official_state(obj).cfg.embed_dim == 1792


@pytest.mark.parametrize(
    "breakage,match",
    [
        ("dup_differs", "differs"),
        ("dup_missing", "duplicated base"),
        ("unexpected", "unexpected keys"),
        ("linear_shape", "linear.1.weight"),
        ("gap", "not consecutive"),
        ("bias_shape", "convs.1.bias"),
        ("no_tensors", "no tensors"),
    ],
)
def test_inconsistent_checkpoints_refused(breakage, match, tmp_path, capsys):
    obj = _synthetic_official()
    s = obj["model_state_dict"]
    if breakage == "dup_differs":
        s["module.model.base.2.1.q"] = s["module.model.base.2.1.q"] + 1e-3
    elif breakage == "dup_missing":
        del s["module.model.base.1.2.kernel"]
    elif breakage == "unexpected":
        s["module.model.fc.weight"] = torch.zeros(3)
    elif breakage == "linear_shape":
        for k in ("linear.1.weight", "base.2.1.weight"):
            s[f"module.model.{k}"] = torch.zeros(16, 100)
    elif breakage == "gap":
        for k in list(s):
            if ".convs.1." in k or ".base.1.1." in k:
                del s[k]
    elif breakage == "bias_shape":
        for k in ("convs.1.bias", "base.1.1.bias"):
            s[f"module.model.{k}"] = torch.zeros(4)
    elif breakage == "no_tensors":
        obj = {"model_state_dict": {}, "global_step": 1}
    with pytest.raises(WeightsError, match=match):
        convert_official_state(obj, embed_dim=16)
    # the CLI turns it into exit 2 with one line on stderr
    src = tmp_path / "bad.pth"
    torch.save(obj, src)
    assert cli_main(["convert", "lipsim", str(src), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("robustsim: error:")


def test_refuses_pickled_objects(tmp_path):
    src = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": torch.nn.Linear(2, 2)}}, src)
    with pytest.raises(WeightsError, match="weights_only"):
        convert_lipsim(src, tmp_path / "o.safetensors")
