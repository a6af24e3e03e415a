"""Training throughput on CPU: LipSim distillation steps and the R-LPIPS adversarial step.

    python benchmarks/bench_train.py            # full (batch 64 distillation, batch 50 R-LPIPS)
    python benchmarks/bench_train.py --quick    # smaller batches, fewer repeats

Prints samples/s and ratios measured in the same run:
* distillation of the shipped-model architecture (metrics.lipsim.CPU_DEFAULT, 128×128, both views per
  crop) with teacher targets read from the memory-mapped cache (ours) vs the same step running the
  EfficientNet-Lite0 teacher on both views every step (what a cache-less loop does);
* the R-LPIPS step (LPIPS-AlexNet, 64×64, batch 50): natural vs adversarial (PGD on x0, k steps), and our
  natural LPIPS step vs the reference ``lpips`` package's network on the same weights.
Weights are random (only speed is measured); the AlexNet trunk has no offline ImageNet weights.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from timing import median_of


def bench_distill(batch: int, repeats: int) -> dict:
    import robustsim
    from robustsim.metrics.lipsim import CPU_DEFAULT, LipSim

    torch.manual_seed(0)
    student = LipSim(config=CPU_DEFAULT).train()
    opt = torch.optim.Adam(student.parameters(), lr=0.01, betas=(0.5, 0.9))
    views = torch.rand(batch, 2, 3, 128, 128)
    cached = torch.randn(batch, 2, 1280)
    teacher = robustsim.load("effnet-lite0-cosine")

    def step(targets):
        x = views.flatten(0, 1)
        g = student.features(x)
        loss = ((g - targets.flatten(0, 1)).pow(2).mean(1) + 1e-12).sqrt().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def with_cache():
        step(cached)

    def with_teacher():
        with torch.no_grad():
            t = teacher.features(views.flatten(0, 1)).view(batch, 2, -1)
        step(t)

    t_cache = median_of(with_cache, repeats)
    t_teacher = median_of(with_teacher, max(1, repeats // 2))
    return {"batch": batch, "crops_per_s_cached": batch / t_cache, "images_per_s_cached": 2 * batch / t_cache,
            "crops_per_s_teacher_in_loop": batch / t_teacher, "speedup": t_teacher / t_cache,
            "params_M": sum(p.numel() for p in student.parameters()) / 1e6}


def bench_rlpips(batch: int, repeats: int, pgd_steps: int) -> dict:
    import robustsim
    from robustsim.metrics.lpips import Dist2Logit
    from robustsim.train.common import StepContext
    from robustsim.train.distributed import Dist
    from robustsim.train.config import from_dict
    from robustsim.train.rlpips import RankedLPIPS, RLPIPSRecipe

    metric = robustsim.load("lpips-alex", pretrained_trunk=False)
    for lin in metric.lins:
        lin.weight.requires_grad_(True)
    model = RankedLPIPS(metric, Dist2Logit(), False).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(batch, 3, 64, 64, generator=g)
    x0 = (ref + 0.1 * torch.randn(batch, 3, 64, 64, generator=g)).clamp(0, 1)
    x1 = (ref + 0.2 * torch.randn(batch, 3, 64, 64, generator=g)).clamp(0, 1)
    judge = torch.rand(batch, generator=g)
    cfg = from_dict({"recipe": "rlpips", "train": {"steps": 1}, "data": {"kind": "photos-ordering"},
                     "attack": {"enabled": True, "target": "x0", "eps": 4 / 255, "steps": pgd_steps}}, check_paths=False)
    recipe = RLPIPSRecipe(cfg)
    state = {"step": 0}

    def natural(b=(ref, x0, x1, judge)):
        loss, _ = recipe.loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metric.clamp_lin_()

    def adversarial():
        state["step"] += 1
        natural(recipe.prepare(model, (ref, x0, x1, judge), StepContext(state["step"], 0, Dist())))

    t_nat = median_of(natural, repeats)
    t_adv = median_of(adversarial, repeats)
    out = {"batch": batch, "pgd_steps": pgd_steps, "natural_per_s": batch / t_nat, "adversarial_per_s": batch / t_adv,
           "adv_cost_x": t_adv / t_nat}
    try:  # the reference network (lpips package) on the same weights, natural step
        from robustsim._compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        import lpips

        ref_net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        rank = lpips.BCERankingLoss()
        ropt = torch.optim.Adam(list(ref_net.parameters()) + list(rank.parameters()), lr=1e-4, betas=(0.5, 0.999))

        def ref_step():
            d0 = ref_net(2 * ref - 1, 2 * x0 - 1)
            d1 = ref_net(2 * ref - 1, 2 * x1 - 1)
            loss = rank(d0, d1, judge.view(-1, 1, 1, 1) * 2 - 1)
            ropt.zero_grad(set_to_none=True)
            loss.backward()
            ropt.step()

        t_ref = median_of(ref_step, repeats)
        out["reference_natural_per_s"] = batch / t_ref
        out["natural_speedup_vs_reference"] = t_ref / t_nat
    except Exception as e:  # pragma: no cover - reference unavailable
        out["reference_error"] = f"{type(e).__name__}: {e}"
    return out


# --------------------------------------------------------------------------- small-scale experiments (docs/TRAINING.md)


def _accuracy(metric, data, attack_steps: int = 0, eps: float = 4 / 255, target: str = "x0", norm: str = "linf",
              batch: int = 32) -> float:
    """2AFC accuracy on (ref, x0, x1, label) tensors, clean or under PGD on ``target``."""
    from robustsim.attacks.twoafc import run_2afc

    ref, x0, x1, label = data
    correct = 0
    for i in range(0, ref.shape[0], batch):
        r, a, b, y = ref[i:i + batch], x0[i:i + batch], x1[i:i + batch], label[i:i + batch]
        if attack_steps:
            res = run_2afc(metric, r, a, b, y, norm=norm, eps=eps, method="pgd", target=target, steps=attack_steps, seed=i)
            correct += int((~res.flipped).sum())
        else:
            with torch.no_grad():
                d0, d1 = metric(r, a), metric(r, b)
            correct += int(((d1 < d0).long() == y).sum())
    return correct / ref.shape[0]


def _suite(kind: str, n: int, size: int, split: str, teacher=None):
    from robustsim.data.photos import OrderingSuite, TeacherSuite

    s = OrderingSuite(n=n, size=size, split=split, seed=1) if kind == "ordering" else \
        TeacherSuite(teacher, n=n, size=size, split=split, seed=2, progress=False)
    ref, x0, x1, label, _ = s.tensors()
    return ref, x0, x1, label


def experiment_rlpips(out: str, steps: int = 120) -> None:
    """Natural vs adversarial (x0, l-inf 4/255) training of LPIPS-AlexNet lin heads on the ordering suite."""
    import robustsim
    from robustsim.train import from_dict, train

    test = _suite("ordering", 128, 64, "heldout")
    rows = []
    for mode in ("natural", "adversarial"):
        cfg = from_dict({
            "recipe": "rlpips", "seed": 0, "out_dir": f"{out}/rlpips_{mode}",
            "train": {"steps": steps, "batch_size": 16, "checkpoint_every": 50, "log_every": 10, "tensorboard": False},
            "model": {"name": "lpips-alex", "arch": {"pretrained_trunk": False}, "init_lin": "random"},
            "data": {"kind": "photos-ordering", "split": "train", "size": 64, "limit": 512},
            "attack": {"enabled": mode == "adversarial", "target": "x0", "norm": "linf", "eps": 4 / 255, "steps": 3},
            "optim": {"lr": 1e-3, "betas": [0.5, 0.999], "schedule": "linear-decay", "decay_start": 0.5},
        })
        res = train(cfg, resume="never")
        m = robustsim.load(str(res.model_path))
        rows.append((mode, _accuracy(m, test), _accuracy(m, test, attack_steps=20), res.seconds))
        print(f"rlpips {mode}: clean {rows[-1][1]:.3f} pgd-20 x0 linf 4/255 {rows[-1][2]:.3f} ({res.seconds:.0f} s)", flush=True)


def experiment_lipsim(out: str, distill_steps: int = 200, finetune_steps: int = 60) -> None:
    """LipSim distillation from EfficientNet-Lite0, fidelity to the teacher before/after hinge fine-tuning."""
    import robustsim
    from robustsim.train import from_dict, train

    teacher = robustsim.load("effnet-lite0-cosine")
    arch = {"input_size": 64, "stem": "unshuffle4", "channels": 48, "conv_depth": 4, "conv_inner": 16,
            "pool": [2], "linear_depth": 2, "linear_inner": 256}
    d = train(from_dict({
        "recipe": "distill", "seed": 0, "out_dir": f"{out}/lipsim_distill",
        "train": {"steps": distill_steps, "batch_size": 32, "checkpoint_every": 100, "log_every": 10, "tensorboard": False},
        "model": {"arch": arch}, "teacher": {"name": "effnet-lite0-cosine", "batch_size": 64},
        "data": {"num_crops": 192, "view_size": 64},
        "optim": {"lr": 0.01, "betas": [0.5, 0.9], "schedule": "cosine", "warmup_steps": 20},
    }), resume="never")
    f = train(from_dict({
        "recipe": "finetune", "seed": 0, "out_dir": f"{out}/lipsim_finetune",
        "train": {"steps": finetune_steps, "batch_size": 32, "checkpoint_every": 50, "log_every": 10, "tensorboard": False},
        "model": {"name": str(d.model_path)},
        "data": {"kind": "photos-ordering", "split": "train", "size": 64, "limit": 512},
        "loss": {"margin": 0.5}, "optim": {"lr": 1e-4, "betas": [0.5, 0.9], "schedule": "cosine", "warmup_steps": 10},
    }), resume="never")
    order = _suite("ordering", 96, 64, "heldout")
    tsuite = _suite("teacher", 96, 64, "heldout", teacher)
    from robustsim.data.photos import RandomCrops

    crops = torch.stack([RandomCrops(n=96, size=64, split="heldout", seed=3)[i] for i in range(96)])
    with torch.no_grad():
        t_feat = teacher.features(crops)
    for name, path in (("teacher", None), ("distilled", d.model_path), ("fine-tuned", f.model_path)):
        m = teacher if path is None else robustsim.load(str(path))
        with torch.no_grad():
            cos = float(torch.nn.functional.cosine_similarity(m.features(crops), t_feat, dim=1).mean())
        agree = _accuracy(m, tsuite)  # agreement with the teacher's decisions on held-out photos
        acc = _accuracy(m, order)
        rob = _accuracy(m, order, attack_steps=20, eps=0.5, target="ref", norm="l2") if path else float("nan")
        print(f"lipsim {name}: cos-to-teacher {cos:.3f}, agreement with teacher {agree:.3f}, ordering acc {acc:.3f}, "
              f"pgd-20 ref l2 0.5 {rob:.3f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--experiment", choices=["rlpips", "lipsim"], help="run a small-scale training experiment instead")
    ap.add_argument("--out", default="runs/experiments")
    ap.add_argument("--steps", type=int, default=None, help="experiment training steps (rlpips: 120; lipsim distillation: 200)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.experiment == "rlpips":
        experiment_rlpips(args.out, **({"steps": args.steps} if args.steps else {}))
        return 0
    if args.experiment == "lipsim":
        experiment_lipsim(args.out, **({"distill_steps": args.steps} if args.steps else {}))
        return 0
    os.environ.setdefault("ROBUSTSIM_OFFLINE", "1")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load:.1f}, cpus {os.cpu_count()}")
    d = bench_distill(16 if args.quick else 64, 2 if args.quick else 3)
    print(f"distill CPU_DEFAULT ({d['params_M']:.2f} M params) batch {d['batch']} crops x 2 views @128: "
          f"{d['crops_per_s_cached']:.2f} crops/s ({d['images_per_s_cached']:.2f} student images/s) with cached targets; "
          f"{d['crops_per_s_teacher_in_loop']:.2f} crops/s with the teacher in the loop -> cache speed-up {d['speedup']:.2f}x")
    r = bench_rlpips(10 if args.quick else 50, 2 if args.quick else 3, 5)
    line = (f"rlpips alex batch {r['batch']} @64: natural {r['natural_per_s']:.1f} triplets/s, adversarial "
            f"(PGD {r['pgd_steps']} steps on x0) {r['adversarial_per_s']:.1f} triplets/s -> adversarial costs {r['adv_cost_x']:.2f}x")
    if "reference_natural_per_s" in r:
        line += (f"; reference lpips natural {r['reference_natural_per_s']:.1f} triplets/s -> ours "
                 f"{r['natural_speedup_vs_reference']:.2f}x")
    else:
        line += f"; reference unavailable ({r['reference_error']})"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
