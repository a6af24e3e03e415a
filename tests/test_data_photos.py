"""Offline real-photo suites: catalogue, split, distortions, ordering/teacher suites, random crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustsim.errors import InputError
from robustsim.data import photos as P


def test_catalogue_loads_real_photos_with_licences():
    srcs = P.photo_sources()
    assert len(srcs) >= 15
    for s in srcs:
        assert s.licence
        img = s.load()
        assert img.dim() == 3 and img.shape[0] == 3 and min(img.shape[1:]) >= 200
        assert 0 <= float(img.min()) and float(img.max()) <= 1
        assert float(img.std()) > 0.02  # a real photo, not a blank placeholder
        if s.gray:
            assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    names = {s.name for s in srcs}
    assert P.HELDOUT <= names
    import skimage.data  # the direct file read gives exactly scikit-image's arrays

    ref = skimage.data.stereo_motorcycle()[0]
    got = next(s for s in srcs if s.name == "motorcycle_left").load()
    assert np.array_equal((got * 255).round().byte().permute(1, 2, 0).numpy(), ref)


def test_split_is_disjoint_and_documented():
    train = {s.name for s in P.train_photos()}
    held = {s.name for s in P.heldout_photos()}
    assert held == set(P.HELDOUT) and not train & held
    assert {"coffee", "rocket", "flower"} <= held
    assert any(not s.gray for s in P.heldout_photos()) and any(not s.gray for s in P.train_photos())


def test_extra_folder_split_by_name_hash(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"img{i:02d}.png")
    a = P.photo_sources(extra_dirs=[tmp_path], builtin=False)
    assert len(a) == 30 and all(s.origin == "folder" for s in a)
    splits = [s.split for s in a]
    assert 0 < splits.count("heldout") < 30  # ~20 % held out
    # same decision from the environment variable, and independent of the folder
    monkeypatch.setenv(P.PHOTOS_ENV, str(tmp_path))
    b = P.photo_sources(builtin=False)
    assert [s.split for s in b] == splits
    assert b[3].load().shape == (3, 40, 50)


def test_photos_module_reexports_the_split_modules():
    """photos.py is the compatibility front of catalogue / distortions / suites: same objects, not copies."""
    from robustsim.data import catalogue, distortions, suites

    assert P.PhotoSource is catalogue.PhotoSource and P.split_of is catalogue.split_of
    assert P.DISTORTIONS is distortions.DISTORTIONS and P.distort is distortions.distort
    assert P.OrderingSuite is suites.OrderingSuite and P.TeacherSuite is suites.TeacherSuite
    assert P.RandomCrops is suites.RandomCrops and P.item_rng is catalogue.item_rng


def test_bad_photo_inputs(tmp_path):
    with pytest.raises(InputError, match="split"):
        P.OrderingSuite(n=4, split="validation")
    with pytest.raises(InputError, match="positive"):
        P.OrderingSuite(n=0)
    with pytest.raises(InputError, match="unknown distortion"):
        P.OrderingSuite(n=4, kinds=["blur"])
    with pytest.raises(InputError, match="no image files"):
        P.photo_sources(extra_dirs=[tmp_path])
    with pytest.raises(InputError, match="not found"):
        P.photo_sources(extra_dirs=[tmp_path / "nope"])
    with pytest.raises(InputError, match="strength"):
        P.distort(torch.rand(3, 16, 16), "jpeg", 1.5)


@pytest.fixture(scope="module")
def crop():
    return P.crop_resize(P.BUILTIN[2].load(), 100, 200, 192, 64)  # coffee


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(set(P.DISTORTIONS) - {"jpeg", "webp", "posterize", "translate", "rotate", "rescale",
                                                            "elastic", "pixelate"})),
       s1=st.floats(0.0, 1.0), d=st.floats(0.05, 1.0), seed=st.integers(0, 2**31))
def test_distortions_grow_with_strength(crop, kind, s1, d, seed):
    """Same seed, larger strength -> at least as far from the original (pixel l2). Codecs and geometric
    warps are excluded: their pixel change need not grow monotonically (a 2-px shift of a periodic texture).
    So is pixelate, whose fractional block grid can fit the image better at a slightly larger block (on this
    crop: 13.96 at s 0.5, 13.88 at s 0.5625); its coarse growth is checked below."""
    s2 = min(1.0, s1 + d)
    a = (P.distort(crop, kind, s1, seed) - crop).norm()
    b = (P.distort(crop, kind, s2, seed) - crop).norm()
    assert float(b) >= float(a) - 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixelate_grows_over_the_strength_range(crop, seed):
    """Pixelate is not monotone step by step (see above), but quarter steps of strength do grow."""
    d = [float((P.distort(crop, "pixelate", s, seed) - crop).norm()) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert d[0] < 1e-6 and all(a < b for a, b in zip(d, d[1:])), d


@pytest.mark.parametrize("kind", list(P.DISTORTIONS))
def test_each_distortion_changes_image_and_stays_in_range(crop, kind):
    out = P.distort(crop, kind, 0.8, seed=3)
    assert out.shape == crop.shape and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert float((out - crop).abs().mean()) > 1e-3
    assert torch.equal(out, P.distort(crop, kind, 0.8, seed=3))


def test_ordering_suite_labels_match_pixel_ordering_and_are_deterministic():
    ds = P.OrderingSuite(n=33, size=48, seed=5)
    assert len(P.DISTORTIONS) >= 15 and ds.kinds == list(P.ORDERING_KINDS)  # default unchanged by the new kinds
    ref, x0, x1, lab, judge = ds.tensors()
    assert ref.shape == (33, 3, 48, 48) and lab.dtype == torch.long
    assert torch.equal(judge, lab.float())
    assert 0.2 < lab.float().mean() < 0.8
    d0 = (ref - x0).flatten(1).norm(dim=1)
    d1 = (ref - x1).flatten(1).norm(dim=1)
    # the weaker distortion (same kind, same realisation) is closer in pixel space too
    assert torch.equal((d1 < d0).long(), lab)
    # order/instance independence
    again = P.OrderingSuite(n=33, size=48, seed=5)
    for i in (32, 0, 17):
        assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(again[i], ds[i]))
    other = P.OrderingSuite(n=33, size=48, seed=6)
    assert not torch.equal(other[0][0], ds[0][0])
    photos = {ds.info(i)["photo"] for i in range(33)}
    assert photos <= set(P.HELDOUT)


class _PixelMSE(torch.nn.Module):
    name = "pixel-mse"

    def forward(self, x, y):
        return (x - y).pow(2).flatten(1).mean(1)


def test_teacher_suite_labels_follow_the_teacher():
    t = _PixelMSE()
    ds = P.TeacherSuite(t, n=10, size=32, seed=1, batch_size=4, progress=False, min_gap=1e-3)
    ref, x0, x1, lab, judge = ds.tensors()
    d0, d1 = t(ref, x0), t(ref, x1)
    assert torch.allclose(d0, ds.d0, atol=1e-7) and torch.allclose(d1, ds.d1, atol=1e-7)
    assert torch.equal(lab, (d1 < d0).long())
    for i in range(10):
        info = ds.info(i)
        assert info["kind0"] != info["kind1"] and info["judge"] == "pixel-mse"
    assert ds.ambiguous.dtype == torch.bool


class _WeightedMSE(torch.nn.Module):
    """A teacher with weights (so the cache key must see them) that counts its calls."""

    name = "weighted-mse"

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([w, 1.0, 1.0]).view(1, 3, 1, 1))
        self.calls = 0

    def forward(self, x, y):
        self.calls += 1
        return ((x - y).pow(2) * self.w).flatten(1).mean(1)


def test_teacher_labels_are_cached_by_items_and_teacher_weights(tmp_path):
    kw = dict(n=6, size=32, seed=3, batch_size=4, progress=False, cache_dir=tmp_path)
    first = P.TeacherSuite(_WeightedMSE(5.0), **kw)
    assert len(list(tmp_path.glob("teacher-labels-*.pt"))) == 1
    again_teacher = _WeightedMSE(5.0)
    again = P.TeacherSuite(again_teacher, **kw)
    assert again_teacher.calls == 0  # read back, not recomputed
    assert torch.equal(again.d0, first.d0) and torch.equal(again.d1, first.d1)
    assert torch.equal(again.labels, first.labels)
    other_teacher = _WeightedMSE(0.01)  # other weights: other labels, another cache file
    other = P.TeacherSuite(other_teacher, **kw)
    assert other_teacher.calls > 0 and not torch.equal(other.d0, first.d0)
    other_items = P.TeacherSuite(_WeightedMSE(5.0), **{**kw, "seed": 4})
    assert not torch.equal(other_items.d0, first.d0)
    assert len(list(tmp_path.glob("teacher-labels-*.pt"))) == 3
    cache_file = next(f for f in tmp_path.glob("teacher-labels-*.pt") if torch.equal(torch.load(f)["d0"], first.d0))
    cache_file.write_bytes(b"truncated")  # a broken cache is recomputed (with a warning) and rewritten
    relabel = _WeightedMSE(5.0)
    with pytest.warns(UserWarning, match="unreadable teacher-label cache"):
        fixed = P.TeacherSuite(relabel, **kw)
    assert relabel.calls > 0 and torch.equal(fixed.d0, first.d0)
    assert torch.equal(torch.load(cache_file, weights_only=True)["d1"], first.d1)


def test_random_crops_use_train_photos_only_and_jitter():
    rc = P.RandomCrops(n=12, size=40, jitter_view=True, seed=2)
    assert not {s.name for s in rc.sources} & set(P.HELDOUT)
    plain, jit = rc[3]
    assert plain.shape == jit.shape == (3, 40, 40)
    assert torch.equal(rc[3][0], plain)
    diffs = [float((a - b).abs().mean()) for a, b in (rc[i] for i in range(12))]
    assert max(diffs) > 0.01  # colour jitter is applied (with probability 0.8)
    x = P.RandomCrops(n=5, size=40, seed=2)[0]
    assert x.shape == (3, 40, 40) and 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(InputError):
        P.RandomCrops(n=5, scales=(0.0,))
