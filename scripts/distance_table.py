#!/usr/bin/env python
"""What the default metric's numbers mean: distances for common distortions of one real photo.

    python scripts/distance_table.py [--image examples/ref.png] [--metric lipsim-default] \
        [--compare lpips-alex] [--json out.json]

Prints a Markdown table (the one in the README, next to the quick start): for each distortion of the
photo, its distance to the original under ``--metric`` (default: the shipped default model) and, for
scale, under each ``--compare`` metric that loads offline (LPIPS-alex by default, whose numbers many
users know; a metric whose weights are absent is left out with a note on stderr). Rerun it whenever
the default model changes -- the README's table is this script's output, unedited.

Distortions are deterministic (fixed seeds) and applied at the photo's own size, in [0, 1]:
JPEG (Pillow, quality 90 / 50 / 20), Gaussian blur (sigma 1 / 2 px), Gaussian noise (sigma 0.02 / 0.05),
brightness +10 %, contrast -20 %, a shift by 4 px (edge replicated), a 2× down- and up-sampling,
a 3° rotation, a horizontal flip, and a different photo (scikit-image's ``coffee`` when scikit-image is
installed, else the colour-inverted photo).
"""
from __future__ import annotations

import argparse
import io as stdio
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _jpeg(q: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        a = (x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        buf = stdio.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=q)
        b = np.asarray(Image.open(stdio.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(b).permute(2, 0, 1)[None]

    return f


def _blur(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        r = int(math.ceil(3 * sigma))
        t = torch.arange(-r, r + 1, dtype=x.dtype)
        k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
        k = k / k.sum()
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
        return F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)

    return f


def _noise(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)

    return f


def _shift(px: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.pad(x, (px, 0, px, 0), mode="replicate")[..., : x.shape[-2], : x.shape[-1]]


def _rotate(deg: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        a = math.radians(deg)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)[None]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return f


def _resample(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(h // 2, w // 2), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def distortions(other: torch.Tensor) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "JPEG quality 90": _jpeg(90),
        "JPEG quality 50": _jpeg(50),
        "JPEG quality 20": _jpeg(20),
        "Gaussian blur σ = 1 px": _blur(1.0),
        "Gaussian blur σ = 2 px": _blur(2.0),
        "Gaussian noise σ = 0.02": _noise(0.02),
        "Gaussian noise σ = 0.05": _noise(0.05),
        "brightness +10 %": lambda x: (x * 1.1).clamp(0, 1),
        "contrast −20 %": lambda x: ((x - x.mean()) * 0.8 + x.mean()).clamp(0, 1),
        "shift by 4 px": _shift(4),
        "2× down- and up-sampling": _resample,
        "rotation 3°": _rotate(3.0),
        "horizontal flip": lambda x: x.flip(-1),
        "a different photo": lambda x: F.interpolate(other, size=tuple(x.shape[-2:]), mode="bicubic", antialias=True,
                                                     align_corners=False).clamp(0, 1),
    }


def _other_photo(size: int) -> torch.Tensor:
    try:
        import numpy as np
        import skimage.data

        a = skimage.data.coffee()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255
        return F.interpolate(t, size=(size, size), mode="area")
    except ImportError:
        return None


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(REPO / "examples" / "ref.png"), help="the real photo (default examples/ref.png)")
    ap.add_argument("--metric", default=None, help="metric of the first column (default: the shipped default)")
    ap.add_argument("--compare", nargs="*", default=["lpips-alex"], help="metrics for scale (default lpips-alex)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    import robustsim
    from robustsim import hub, io

    x = io.load_image(args.image)
    names = [args.metric or hub.DEFAULT_MODEL]
    metrics = {names[0]: robustsim.load(names[0])}
    for name in args.compare:
        try:
            metrics[name] = robustsim.load(name)
        except robustsim.RobustsimError as e:
            print(f"distance_table: {name} left out ({e})", file=sys.stderr)
    other = _other_photo(x.shape[-1])
    table = distortions(other if other is not None else 1 - x)
    rows = []
    with torch.no_grad():
        for label, f in table.items():
            y = f(x.clone()).clamp(0, 1).float()
            rows.append({"distortion": label, **{n: float(m(x, y)) for n, m in metrics.items()}})
    cols = list(metrics)
    print(f"| distortion of `{Path(args.image).name}` ({x.shape[-1]}×{x.shape[-2]}) | " + " | ".join(f"`{c}`" for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r['distortion']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"image": args.image, "metrics": cols, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
