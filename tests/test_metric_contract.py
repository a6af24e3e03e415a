"""The Metric contract, checked once for every registered model whose weights are available offline.

Every name in ``robustsim.list_models()`` is a case: ``metric(x, y)`` returns N distances (and
broadcasts 1 vs N), gradients reach both inputs, bad input is an InputError, and save -> load gives
the same metric back. A model whose weights are not on this machine is skipped with the reason
(``robustsim weights fetch`` puts them in the cache), so a fresh clone passes.
"""
from __future__ import annotations

import pytest
import torch

import robustsim
from robustsim import hub
from robustsim.errors import InputError
from robustsim.metrics.base import Metric

from conftest import real_photo

MAX_WEIGHT_MB = 80  # larger models (ViT teachers) are checked by their own slow tests


def _weight_mb(name: str) -> float:
    total = 0
    for wf in hub.model_spec(name).weights.values():
        p = hub.locate(wf)
        total += p.stat().st_size if p is not None else 0
    return total / 1e6


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name: str) -> Metric:
        if name not in cache:
            if not hub.weights_present(name):
                pytest.skip(f"{name}: weights not available offline (robustsim weights fetch {name})")
            if _weight_mb(name) > MAX_WEIGHT_MB:
                pytest.skip(f"{name}: {_weight_mb(name):.0f} MB of weights, beyond the fast suite's {MAX_WEIGHT_MB} MB")
            cache[name] = robustsim.load(name).eval()
        return cache[name]

    return get


def _images(metric: Metric, n: int = 2) -> torch.Tensor:
    side = max(64, int(getattr(metric, "min_size", 1)))
    return torch.cat([real_photo(p, side) for p in ("astronaut", "chelsea", "coffee")[:n]])


@pytest.fixture(params=robustsim.list_models())
def metric(request, loaded):
    return loaded(request.param)


def test_distances_have_one_value_per_pair_and_broadcast(metric):
    x = _images(metric)
    y = x.flip(-1)
    with torch.no_grad():
        d = metric(x, y)
        one = metric(x[:1], y)
    assert d.shape == (2,) and torch.isfinite(d).all() and bool((d >= -1e-6).all())
    assert one.shape == (2,)
    torch.testing.assert_close(one[0], d[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        self_d = metric(x, x)
    assert float(self_d.abs().max()) <= 1e-4


def test_gradients_reach_both_inputs(metric):
    x = _images(metric).requires_grad_(True)
    y = _images(metric).flip(-1).requires_grad_(True)
    metric(x, y).sum().backward()
    for g in (x.grad, y.grad):
        assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0


def test_bad_input_is_an_input_error(metric):
    x = _images(metric)
    with pytest.raises(InputError):
        metric(x * 2, x)
    with pytest.raises(InputError):
        metric(x[:, :1], x[:, :1])
    with pytest.raises(InputError):
        metric(x[0], x[0])
    with pytest.raises(InputError):
        metric(torch.full_like(x, float("nan")), x)


def test_save_and_load_round_trip(metric, tmp_path):
    path = robustsim.save(metric, tmp_path / "m.safetensors")
    back = robustsim.load(path)
    assert type(back) is type(metric) and back.config() == metric.config() and not back.training
    x = _images(metric)
    with torch.no_grad():
        torch.testing.assert_close(back(x, x.flip(-1)), metric(x, x.flip(-1)), rtol=0, atol=1e-6)
    assert back.device == metric.device
