"""Write a LipSim with a wider output truncation, initialised from an existing one (a warm start).

The truncation of a LipSim keeps the first E coordinates of its last dense layer; every parameter has
the same shape whatever E is. So a model distilled toward a 1280-d teacher can start the distillation
toward a 2048-d teacher with all its layers, only the kept coordinates change (lipsim-default v2 starts
from the effnet-distilled model this way; docs/MODELS.md).

    python scripts/widen_student.py runs/effnet_distill/model.safetensors runs/v2_init/model.safetensors --embed-dim 2048
"""
from __future__ import annotations

import argparse

import robustsim
from robustsim.metrics.lipsim import LipSim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="hub name or .safetensors file of a LipSim")
    p.add_argument("out", help="where to write the widened model (.safetensors)")
    p.add_argument("--embed-dim", type=int, required=True, help="the new number of output coordinates")
    a = p.parse_args()
    old = robustsim.load(a.source)
    if not isinstance(old, LipSim):
        raise SystemExit(f"{a.source} is not a LipSim ({type(old).__name__})")
    new = LipSim(**{**old.cfg.to_dict(), "embed_dim": a.embed_dim})
    new.load_state_dict(old.state_dict(), strict=True)
    new.name = f"{old.name or 'lipsim'}-{a.embed_dim}"
    robustsim.save(new, a.out)
    print(f"wrote {a.out}: {new.cfg}")


if __name__ == "__main__":
    main()
