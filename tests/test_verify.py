"""Empirical Lipschitz verification: accurate estimates, passes on LipSim, fails on a broken layer."""
from __future__ import annotations

import pytest
import torch

import robustsim
from robustsim.cli import main as cli_main
from robustsim.errors import InputError
from robustsim.lipschitz import SLLConv2d, SLLLinear
from robustsim.lipschitz import sll as sll_mod
from robustsim.lipschitz.verify import pair_search, spectral_norm_power, verify, verify_module
from robustsim.metrics.lipsim import LipSim

TINY = dict(input_size=16, stem="unshuffle2", channels=12, conv_depth=2, conv_inner=4, pool=(2,), linear_depth=2,
            linear_inner=8, embed_dim=20)
FAST = dict(iters=15, restarts=1, steps=8)


def _exact_norm(f, x):
    J = torch.autograd.functional.jacobian(f, x)
    return float(torch.linalg.matrix_norm(J.reshape(f(x).numel(), x.numel()), ord=2))


@pytest.mark.parametrize("kind", ["sll-conv", "sll-linear", "scaled-linear"])
def test_power_iteration_matches_exact_spectral_norm(kind):
    torch.manual_seed(3)
    if kind == "sll-conv":
        f, x = SLLConv2d(3, 2).double().eval(), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    elif kind == "sll-linear":
        f, x = SLLLinear(6, 6).double().eval(), torch.randn(1, 6, dtype=torch.float64)
    else:  # a map whose norm is not 1: the estimate must find it, not just report "1"
        lin = torch.nn.Linear(7, 5).double()
        f, x = (lambda z: 2.5 * torch.tanh(lin(z))), torch.randn(1, 7, dtype=torch.float64)
    for p in getattr(f, "parameters", lambda: [])():
        p.requires_grad_(False)
    est = float(spectral_norm_power(f, x, iters=200)[0])
    exact = _exact_norm(f, x)
    assert est <= exact * (1 + 1e-9)
    assert abs(est - exact) <= 1e-6 * exact


def test_pair_search_finds_a_known_constant():
    x0 = torch.rand(2, 5, dtype=torch.float64)
    best = pair_search(lambda z: 3 * torch.sin(z), x0, steps=30, restarts=1)
    assert 2.9 < best <= 3 + 1e-9


def test_verify_passes_for_random_lipsim_models():
    for seed in range(2):
        torch.manual_seed(seed)
        rep = verify(LipSim(**TINY).eval(), seed=seed, **FAST)
        assert rep.ok, rep.table()
        names = [e.name for e in rep.estimates]
        assert "convs.0" in names and "linears.1" in names and "network" in names
        # the dense SLL layers are the identity off W's row space: their measured norm is 1
        assert all(abs(e.value - 1) < 1e-3 for e in rep.estimates if e.name.startswith("linears"))


def test_verify_fails_for_broken_layer(monkeypatch):
    torch.manual_seed(0)
    m = LipSim(**TINY).eval()
    orig = sll_mod.linear_t
    monkeypatch.setattr(sll_mod, "linear_t", lambda w, q: 2 * orig(w, q))  # t doubled
    rep = verify(m, **FAST)
    assert not rep.ok
    assert rep.worst.name.startswith("linears") and rep.worst.value > 1.1


def test_cli_verify_exit_codes(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = robustsim.save(LipSim(**TINY).eval(), tmp_path / "m.safetensors")
    args = ["verify", str(path), "--iters", "15", "--restarts", "1", "--steps", "8"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "convs.0" in out and "OK" in out
    orig = sll_mod.conv_t
    monkeypatch.setattr(sll_mod, "conv_t", lambda k, q: 3 * orig(k, q))
    assert cli_main(args) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_refuses_uncertified_metrics():
    class Plain(robustsim.Metric):
        certified = False

    with pytest.raises(InputError, match="not a certified"):
        verify(Plain())


def test_verify_module_detects_nonexpansive_violation_in_plain_module():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4) * 1.5)
        net[0].bias.zero_()
    rep = verify_module(net, torch.zeros(1, 4), iters=20, restarts=1, steps=5)
    assert not rep.ok and abs(rep.worst.value - 1.5) < 1e-6


def test_cli_verify_is_quick_by_default_and_thorough_on_request(tmp_path, capsys):
    from robustsim.lipschitz.verify import QUICK, THOROUGH

    # the quick check's cost: one sample, few iterations, float32, no pair search (minutes on 2 busy cores)
    assert QUICK["n_samples"] == 1 and QUICK["iters"] <= 10 and QUICK["restarts"] == 0
    assert QUICK["dtype"] == torch.float32 and THOROUGH["dtype"] == torch.float64 and THOROUGH["restarts"] > 0
    torch.manual_seed(0)
    path = robustsim.save(LipSim(**TINY).eval(), tmp_path / "m.safetensors")
    assert cli_main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quick check" in out and "float32" in out and "no pair search (--thorough adds it)" in out
    assert "pair search" not in out.split("quick check")[0]  # no pair-search row in the table
    assert cli_main(["verify", str(path), "--thorough", "--iters", "5", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "thorough check" in out and "float64" in out and "pair search 2×3 steps" in out
    assert "pair search" in out.split("thorough check")[0]


def test_quick_verify_still_catches_a_broken_layer(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = robustsim.save(LipSim(**TINY).eval(), tmp_path / "m.safetensors")
    orig = sll_mod.conv_t
    monkeypatch.setattr(sll_mod, "conv_t", lambda k, q: 3 * orig(k, q))  # as in test_cli_verify_exit_codes
    assert cli_main(["verify", str(path)]) == 1
    assert "FAIL: convs." in capsys.readouterr().out
