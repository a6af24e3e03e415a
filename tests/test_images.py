"""Image files -> tensors: every format and conversion rule, and every bad file, each a one-line InputError."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_photo
from PIL import Image, ImageOps

from robustsim import images as io
from robustsim.errors import InputError


def photo_u8(size=24, name="astronaut") -> np.ndarray:
    return np.round(real_photo(name, size)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def as_tensor(a: np.ndarray, scale: float) -> torch.Tensor:
    a = a.astype(np.float64) / scale
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]


def raw_png(path: Path, w: int, h: int, bitdepth: int, color_type: int, rows: bytes = b"", idat: bool = True) -> Path:
    """A PNG written byte by byte (for headers Pillow refuses to write: 0×0, huge, 16-bit colour)."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bitdepth, color_type, 0, 0, 0))
    if idat:
        data += chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def png16(path: Path, a: np.ndarray) -> Path:
    h, w = a.shape[:2]
    planes = 1 if a.ndim == 2 else a.shape[2]
    rows = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))
    return raw_png(path, w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[planes], rows)


def one_line_error(fn, match: str) -> str:
    with pytest.raises(InputError, match=match) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_are_exact(tmp_path, suffix):
    a = photo_u8()
    p = tmp_path / f"img{suffix}"
    Image.fromarray(a).save(p, **({"lossless": True} if suffix == ".webp" else {}))
    x = io.load_image(p)
    assert x.shape == (1, 3, 24, 24) and x.dtype == torch.float32
    assert torch.equal(x, as_tensor(a, 255))


def test_jpeg_matches_pillows_decoder(tmp_path):
    a = photo_u8(32, "coffee")
    p = tmp_path / "img.jpg"
    Image.fromarray(a).save(p, quality=80)
    assert torch.equal(io.load_image(p), as_tensor(np.asarray(Image.open(p)), 255))


def test_grayscale_and_bilevel_are_replicated(tmp_path):
    g = photo_u8()[..., 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    x = io.load_image(tmp_path / "g.png")
    assert torch.equal(x, as_tensor(g, 255))
    Image.fromarray(g > 128).save(tmp_path / "b.png")
    assert torch.equal(io.load_image(tmp_path / "b.png"), as_tensor((g > 128).astype(np.uint8), 1))


def test_palette_png_with_and_without_transparency(tmp_path):
    a = photo_u8()
    pal = Image.fromarray(a).quantize(16)
    pal.save(tmp_path / "p.png")
    assert torch.equal(io.load_image(tmp_path / "p.png"), as_tensor(np.asarray(pal.convert("RGB")), 255))
    idx = np.asarray(pal)
    clear = int(idx[0, 0])
    pal.save(tmp_path / "pt.png", transparency=clear)
    x = io.load_image(tmp_path / "pt.png")
    expected = as_tensor(np.asarray(pal.convert("RGB")), 255)
    expected[:, :, torch.from_numpy(idx == clear)] = 1.0  # transparent palette entry -> white
    assert torch.equal(x, expected)


def test_rgba_and_la_composite_on_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = np.arange(20).reshape(4, 5) * 13
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = io.load_image(tmp_path / "a.png")
    alpha = torch.from_numpy(rgba[..., 3].astype(np.float64) / 255)
    torch.testing.assert_close(x[0, 0], torch.ones(4, 5), rtol=0, atol=0)
    torch.testing.assert_close(x[0, 1], (1 - alpha).float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(x[0, 2], (1 - alpha).float(), rtol=0, atol=1e-7)
    black = io.load_image(tmp_path / "a.png", background=(0, 0, 0))
    torch.testing.assert_close(black[0, 0], alpha.float(), rtol=0, atol=1e-7)
    la = np.stack([np.full((4, 5), 100, np.uint8), rgba[..., 3]], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    expected = (100 / 255 * alpha + (1 - alpha)).float()
    for c in range(3):
        torch.testing.assert_close(io.load_image(tmp_path / "la.png")[0, c], expected, rtol=0, atol=1e-7)


def test_16bit_png_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)
    rgb[0, 0] = [0, 65535, 257]
    x = io.load_image(png16(tmp_path / "rgb16.png", rgb))
    assert torch.equal(x, as_tensor(rgb, 65535))  # Pillow alone would drop the low byte
    assert float(x[0, 1, 0, 0]) == 1.0 and float(x[0, 0, 0, 0]) == 0.0
    gray = rng.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    assert torch.equal(io.load_image(png16(tmp_path / "g16.png", gray)), as_tensor(gray, 65535))
    Image.fromarray(gray).save(tmp_path / "g16pil.png")  # Pillow's own I;16 writer
    assert torch.equal(io.load_image(tmp_path / "g16pil.png"), as_tensor(gray, 65535))
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 65535, np.uint16)], -1)
    assert torch.equal(io.load_image(png16(tmp_path / "rgba16.png", rgba)), as_tensor(rgb, 65535))


def test_16bit_rgb_tiff_is_exact(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(1).integers(0, 65536, size=(6, 4, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "t16.tif", rgb)
    assert torch.equal(io.load_image(tmp_path / "t16.tif"), as_tensor(rgb, 65535))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    a = photo_u8(16)
    cmyk = Image.fromarray(a).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    x = io.load_image(tmp_path / "c.jpg")
    assert x.shape == (1, 3, 16, 16)
    assert torch.equal(x, as_tensor(np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")), 255))
    assert (x - as_tensor(a, 255)).abs().mean() < 0.05  # and it is the photo, not inverted colours


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    a = photo_u8()[:, :15]  # not square: rotations change the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "o.png"
    Image.fromarray(a).save(p, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    x = io.load_image(p)
    assert torch.equal(x, as_tensor(expected, 255))
    if orientation >= 5:
        assert x.shape[-2:] == (15, 24)


def test_animated_gif_uses_first_frame_with_a_warning(tmp_path):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with pytest.warns(UserWarning, match="3 frames.*first frame"):
        x = io.load_image(tmp_path / "a.gif")
    torch.testing.assert_close(x, torch.full((1, 3, 8, 8), 10 / 255), rtol=0, atol=1e-7)
    frames[0].save(tmp_path / "still.gif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.load_image(tmp_path / "still.gif")


def test_luminance_mode(tmp_path):
    a = photo_u8()
    Image.fromarray(a).save(tmp_path / "c.png")
    y = io.load_image(tmp_path / "c.png", mode="L")
    assert y.shape == (1, 1, 24, 24)
    ref = (a.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    torch.testing.assert_close(y[0, 0], torch.from_numpy(ref).float(), rtol=0, atol=1e-6)
    one_line_error(lambda: io.load_image(tmp_path / "c.png", mode="CMYK"), "unknown mode")


# --------------------------------------------------------------------------- bad files


def test_missing_directory_and_unreadable(tmp_path, monkeypatch):
    one_line_error(lambda: io.load_image(tmp_path / "nope.png"), "no such file")
    one_line_error(lambda: io.load_image(tmp_path), "is a directory")
    p = tmp_path / "locked.png"
    Image.fromarray(photo_u8()).save(p)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io, "open", denied, raising=False)
    one_line_error(lambda: io.load_image(p), "cannot read .*Permission denied")


def test_non_image_and_empty_files(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture\n" * 10)
    one_line_error(lambda: io.load_image(tmp_path / "notes.png"), "not an image file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    one_line_error(lambda: io.load_image(tmp_path / "empty.jpg"), "not an image file")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files(tmp_path, suffix):
    p = tmp_path / f"full{suffix}"
    Image.fromarray(photo_u8(64)).save(p)
    data = p.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    one_line_error(lambda: io.load_image(cut), "cannot decode|unreadable")


def test_zero_and_one_pixel_images(tmp_path):
    zero = raw_png(tmp_path / "zero.png", 0, 0, 8, 2)
    one_line_error(lambda: io.load_image(zero), r"zero.png: empty image \(0×0\)")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "one.png")
    one_line_error(lambda: io.load_image(tmp_path / "one.png"), r"1×1 is smaller than the minimum size 2×2")
    assert torch.equal(io.load_image(tmp_path / "one.png", min_size=1), torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1))
    Image.new("RGB", (40, 20)).save(tmp_path / "small.png")
    one_line_error(lambda: io.load_image(tmp_path / "small.png", min_size=32), r"40×20 is smaller than the minimum size 32×32")


def test_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    # 10000×8000: only a header; decoding would fail differently (no IDAT), so the limit fired first
    big = raw_png(tmp_path / "big.png", 10000, 8000, 8, 2, idat=False)
    one_line_error(lambda: io.load_image(big), r"80,000,000 pixels exceeds the limit of 50,000,000 pixels \(set ROBUSTSIM_MAX_PIXELS")
    huge = raw_png(tmp_path / "huge.png", 100000, 100000, 8, 2, idat=False)
    one_line_error(lambda: io.load_image(huge), r"50,000,000 pixels.*ROBUSTSIM_MAX_PIXELS")
    Image.fromarray(photo_u8(20)).save(tmp_path / "ok.png")
    monkeypatch.setenv("ROBUSTSIM_MAX_PIXELS", "399")
    one_line_error(lambda: io.load_image(tmp_path / "ok.png"), "400 pixels exceeds the limit of 399")
    monkeypatch.setenv("ROBUSTSIM_MAX_PIXELS", "400")
    assert io.load_image(tmp_path / "ok.png").shape == (1, 3, 20, 20)
    monkeypatch.setenv("ROBUSTSIM_MAX_PIXELS", "lots")
    one_line_error(lambda: io.load_image(tmp_path / "ok.png"), "ROBUSTSIM_MAX_PIXELS must be a number")


def test_32bit_images_are_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    one_line_error(lambda: io.load_image(tmp_path / "f.tif"), "32-bit float images are not supported")


# --------------------------------------------------------------------------- batches, folders, writing


def test_load_images_and_list_images(tmp_path):
    for name, n in [("b.png", 24), ("a.jpg", 24), ("c.bmp", 30), (".hidden.png", 24)]:
        Image.fromarray(photo_u8(n)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    files = io.list_images(tmp_path)
    assert [p.name for p in files] == ["a.jpg", "b.png", "c.bmp"]
    assert io.load_images(files[:2]).shape == (2, 3, 24, 24)
    one_line_error(lambda: io.load_images(files), r"c.bmp: size \(30, 30\) differs")
    assert io.load_images(files, size=(16, 16)).shape == (3, 3, 16, 16)
    one_line_error(lambda: io.load_images([]), "no image files")
    one_line_error(lambda: io.list_images(tmp_path / "b.png"), "not a directory")


def test_save_image_roundtrip(tmp_path):
    x = real_photo("coffee", 20)
    q8 = torch.round(x.double() * 255).float() / 255
    for suffix in (".png", ".bmp", ".tif"):
        p = io.save_image(x, tmp_path / f"o{suffix}")
        torch.testing.assert_close(io.load_image(p), q8, rtol=0, atol=1e-7)
    p16 = io.save_image(x[0], tmp_path / "o16.png", bits=16)  # 3×H×W accepted too
    assert (io.load_image(p16) - x).abs().max() <= 0.5 / 65535 + 1e-7
    jpg = io.save_image(x, tmp_path / "o.jpg")
    assert Image.open(jpg).format == "JPEG" and (io.load_image(jpg) - x).abs().mean() < 0.05
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_save_image_refuses_bad_input_and_writes_nothing_on_failure(tmp_path, monkeypatch):
    one_line_error(lambda: io.save_image(torch.full((1, 3, 4, 4), 2.0), tmp_path / "a.png"), r"values must lie in \[0, 1\]")
    one_line_error(lambda: io.save_image(torch.rand(2, 3, 4, 4), tmp_path / "a.png"), "one image")
    one_line_error(lambda: io.save_image(torch.rand(1, 3, 4, 4), tmp_path / "a.xyz"), "unknown image suffix")
    one_line_error(lambda: io.save_image(torch.rand(1, 3, 4, 4), tmp_path / "a.jpg", bits=16), "PNG only")
    one_line_error(lambda: io.save_image(torch.rand(1, 3, 4, 4), tmp_path / "no" / "a.png"), "no such directory")
    target = tmp_path / "keep.png"
    io.save_image(torch.zeros(1, 3, 4, 4), target)
    before = target.read_bytes()
    real_save = Image.Image.save

    def failing_save(self, fp, *a, **k):
        real_save(self, fp, *a, **k)  # bytes hit the disk, then the "disk fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError):
        io.save_image(torch.ones(1, 3, 4, 4), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


# --------------------------------------------------------------------------- preprocess: what users hold


def test_preprocess_accepts_every_form_users_hold_and_agrees_with_files(tmp_path):
    a = photo_u8(24)
    Image.fromarray(a).save(tmp_path / "p.png")
    want = io.load_image(tmp_path / "p.png")
    rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 128, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    forms = {
        "path str": str(tmp_path / "p.png"),
        "Path": tmp_path / "p.png",
        "PIL RGB": Image.fromarray(a),
        "numpy uint8 HWC": a,
        "numpy float64 HWC": a.astype(np.float64) / 255,
        "numpy float32 HWC": a.astype(np.float32) / 255,
        "torch CHW float": want[0],
        "torch CHW uint8": torch.from_numpy(a).permute(2, 0, 1).contiguous(),
        "torch NCHW": want,
    }
    for what, form in forms.items():
        got = io.preprocess(form)
        assert got.shape == (1, 3, 24, 24) and got.dtype == torch.float32, what
        assert torch.allclose(got, want, atol=1e-6), what
    # grayscale in every form: replicated to three equal channels
    gray = a.mean(2).round().astype(np.uint8)
    for form in (gray, gray[..., None], Image.fromarray(gray, "L"), torch.from_numpy(gray)[None]):
        got = io.preprocess(form)
        assert got.shape == (1, 3, 24, 24) and torch.equal(got[:, 0], got[:, 2])
        assert torch.allclose(got[0, 0], torch.from_numpy(gray).float() / 255, atol=1e-6)
    # alpha: composited on white exactly as for files
    assert torch.allclose(io.preprocess(rgba), io.load_image(tmp_path / "rgba.png"), atol=1e-6)
    assert torch.allclose(io.preprocess(Image.fromarray(rgba, "RGBA")), io.load_image(tmp_path / "rgba.png"), atol=1e-6)
    u16 = (a.astype(np.uint16) * 257)
    assert torch.allclose(io.preprocess(u16), want, atol=1e-6)
    assert io.preprocess(a, dtype=torch.float64).dtype == torch.float64


def test_preprocess_lists_of_mixed_sizes_need_a_size(tmp_path):
    big, small = photo_u8(32, "chelsea"), photo_u8(20, "coffee")
    Image.fromarray(small).save(tmp_path / "s.png")
    with pytest.raises(InputError, match=r"2 different sizes \(20×20, 32×32\); pass size=\(H, W\)"):
        io.preprocess([big, tmp_path / "s.png"])
    x = io.preprocess([big, tmp_path / "s.png", Image.fromarray(big)], size=(16, 24))
    assert x.shape == (3, 3, 16, 24) and float(x.min()) >= 0 and float(x.max()) <= 1
    resized = torch.nn.functional.interpolate(io.preprocess(big), size=(16, 24), mode="bicubic", antialias=True,
                                              align_corners=False).clamp(0, 1)
    assert torch.allclose(x[0:1], resized) and torch.allclose(x[2:3], resized)
    assert io.preprocess([big, big]).shape == (2, 3, 32, 32)  # same sizes: kept as they are


def test_preprocess_for_a_metric_uses_its_input_size_device_and_dtype():
    from robustsim.metrics.lipsim import LipSim

    m = LipSim(input_size=16, stem="unshuffle2", channels=12, conv_depth=1, conv_inner=4, pool=(2,), linear_depth=1,
               linear_inner=8, embed_dim=10).eval().double()
    x = io.preprocess_for(m, [photo_u8(32), photo_u8(20, "coffee")])
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float64
    assert m(x[:1], x[1:]).shape == (1,)
    same = io.preprocess_for(m, [photo_u8(20), photo_u8(20, "coffee")])
    assert same.shape == (2, 3, 20, 20)  # equal sizes are left to the metric's own resize


def test_preprocess_errors_name_the_problem():
    a = photo_u8(8)
    cases = [
        (a.transpose(2, 0, 1), r"numpy images are H×W×C .*a.transpose\(1, 2, 0\)"),
        (torch.from_numpy(a), r"torch images are channels first .*t.permute\(2, 0, 1\)"),
        (a.astype(np.float32), r"float values must lie in \[0, 1\], found \[\d+, 2\d\d\].*pass uint8"),
        (a.astype(np.int32), "integer dtype int32 is ambiguous"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (np.zeros((1, 1, 3), np.uint8), r"1×1 is smaller than the minimum size 2×2"),
        (torch.zeros(2, 5, 4, 4), r"C in \(1, 3, 4\)"),
        ([], "no images given"),
        (3.5, "cannot use a float as an image"),
    ]
    for bad, match in cases:
        with pytest.raises(InputError, match=match):
            io.preprocess(bad)


def test_check_images_refuses_one_pixel_tensors_like_the_cli(tmp_path):
    with pytest.raises(InputError, match=r"1×1 is smaller than the metric's minimum size 2×2"):
        io.check_images(torch.rand(1, 3, 1, 1), min_size=1)
    assert io.check_images(torch.rand(1, 3, 2, 2)).shape == (1, 3, 2, 2)
    assert io.save_image(torch.rand(1, 3, 1, 1), tmp_path / "one.png").is_file()  # writing any size is fine
