"""Colour augmentation in plain torch, with torchvision's exact formulas (no torchvision needed).

LipSim distils on a plain view and a ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` (p = 0.8) + ``RandomGrayscale``
(p = 0.2) view. torchvision is not importable with every torch build, so the four adjustments are
re-implemented here to the same definitions: brightness/contrast/saturation are blends with black,
the mean grey level and the per-pixel grey image; hue is a shift in HSV space. The four are applied
in a random order, as torchvision does.
"""
from __future__ import annotations

from typing import Optional

import torch

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(…,3,H,W) -> (…,1,H,W) luma with torchvision's weights."""
    r, g, b = x.unbind(-3)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(-3)


def _blend(a: torch.Tensor, b: torch.Tensor, f: float) -> torch.Tensor:
    return (f * a + (1.0 - f) * b).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, f: float) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def adjust_contrast(x: torch.Tensor, f: float) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, f)


def adjust_saturation(x: torch.Tensor, f: float) -> torch.Tensor:
    return _blend(x, grayscale(x), f)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(…,3,H,W) RGB in [0,1] -> HSV with h in [0,1)."""
    r, g, b = x.unbind(-3)
    v, _ = x.max(dim=-3)
    mn, _ = x.min(dim=-3)
    chroma = v - mn
    flat = chroma == 0
    s = chroma / torch.where(flat, torch.ones_like(v), v)
    c = torch.where(flat, torch.ones_like(chroma), chroma)
    # hue sector by which channel is the max (r first, then g, then b, as the reference breaks ties)
    h_r = (g - b) / c
    h_g = 2.0 + (b - r) / c
    h_b = 4.0 + (r - g) / c
    is_r = v == r
    is_g = (v == g) & ~is_r
    h = torch.where(is_r, h_r, torch.where(is_g, h_g, h_b))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, v], dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    # (r, g, b) per sector: 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q)
    table = torch.stack([
        torch.stack([v, q, p, p, t, v]),
        torch.stack([t, v, v, q, p, p]),
        torch.stack([p, p, t, v, v, q]),
    ])  # 3 × 6 × …
    idx = i.unsqueeze(0).unsqueeze(0).expand(3, 1, *i.shape)
    out = table.gather(1, idx).squeeze(1)  # 3 × …
    return out.movedim(0, -3)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(x)
    h, s, v = hsv.unbind(-3)
    h = torch.remainder(h + shift, 1.0)
    return hsv_to_rgb(torch.stack([h, s, v], dim=-3))


def color_jitter(x: torch.Tensor, generator: Optional[torch.Generator] = None, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1, p: float = 0.8,
                 gray_p: float = 0.2) -> torch.Tensor:
    """LipSim's jittered view of a batch N×3×H×W: per-sample RandomApply(ColorJitter, p) then RandomGrayscale(gray_p)."""
    out = []
    for img in x:
        if float(torch.rand((), generator=generator)) < p:
            order = torch.randperm(4, generator=generator).tolist()
            fb = float(torch.empty(()).uniform_(1 - brightness, 1 + brightness, generator=generator))
            fc = float(torch.empty(()).uniform_(1 - contrast, 1 + contrast, generator=generator))
            fs = float(torch.empty(()).uniform_(1 - saturation, 1 + saturation, generator=generator))
            fh = float(torch.empty(()).uniform_(-hue, hue, generator=generator))
            for op in order:
                if op == 0:
                    img = adjust_brightness(img, fb)
                elif op == 1:
                    img = adjust_contrast(img, fc)
                elif op == 2:
                    img = adjust_saturation(img, fs)
                else:
                    img = adjust_hue(img, fh)
        if float(torch.rand((), generator=generator)) < gray_p:
            img = grayscale(img).expand_as(img)
        out.append(img)
    return torch.stack(out).contiguous()
