"""Regenerate ref.png, x0.png, x1.png (deterministic): a real photo and two distortions of it.

ref: scikit-image's ``chelsea`` (CC0, photo by Stefan van der Walt), centre crop, 256×256.
x0:  mild Gaussian blur (radius 1) -- the closer one.
x1:  strong JPEG (quality 8) plus Gaussian noise (sigma 0.08, seed 0) -- the farther one.

Run:  python examples/make_examples.py   (needs scikit-image; the PNGs are committed, so the demo does not)
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def main() -> None:
    import io

    import skimage.data

    here = Path(__file__).resolve().parent
    img = skimage.data.chelsea()
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    ref = Image.fromarray(crop).resize((256, 256), Image.LANCZOS)
    ref.save(here / "ref.png")
    ref.filter(ImageFilter.GaussianBlur(radius=1)).save(here / "x0.png")
    buf = io.BytesIO()
    ref.save(buf, format="JPEG", quality=8)
    jpeg = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255
    noisy = jpeg + np.random.default_rng(0).normal(0.0, 0.08, jpeg.shape)
    Image.fromarray(np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)).save(here / "x1.png")


if __name__ == "__main__":
    main()
