"""CONTRIBUTING.md's three recipes, followed literally: its code blocks become package files, its
registration lines run against the real registries, and the new dataset, optimiser and metric are
then used through the public API and the command line. Nothing is left behind in the package.
"""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

import robustsim
from robustsim import hub
from robustsim.cli import main

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def blocks() -> Tuple[Dict[str, str], Dict[str, str]]:
    """(new files: package path -> text, registration lines: registry module path -> text)."""
    files, lines = {}, {}
    for body in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        first, _, rest = body.partition("\n")
        m = re.match(r"# (file|registry line): (src/robustsim/\S+\.py)", first)
        assert m, f"a CONTRIBUTING.md code block must start with '# file: PATH' or '# registry line: PATH': {first!r}"
        (files if m.group(1) == "file" else lines)[m.group(2)] = rest
    return files, lines


def module_name(path: str) -> str:
    return path[len("src/"):-len(".py")].replace("/", ".")


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """Write the recipe's new files into a folder added to their packages' __path__; undo it all after."""
    files, lines = blocks()
    added: List[str] = []
    for path, text in files.items():
        name = module_name(path)
        pkg = importlib.import_module(name.rsplit(".", 1)[0])
        folder = tmp_path / name.rsplit(".", 1)[0].replace(".", "_")
        folder.mkdir(exist_ok=True)
        (folder / (name.rsplit(".", 1)[1] + ".py")).write_text(text)
        monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(folder)])
        added.append(name)
    yield files, lines
    for name in added:
        sys.modules.pop(name, None)


def run_registry_line(path: str, text: str) -> None:
    """Execute a registration line in its registry module (like appending it to that file)."""
    exec(compile(text, path, "exec"), vars(importlib.import_module(module_name(path))))


def test_the_doc_has_the_three_recipes():
    files, lines = blocks()
    assert {module_name(p).split(".")[1] for p in files} == {"data", "attacks", "metrics"}
    assert set(lines) == {"src/robustsim/data/registry.py", "src/robustsim/attacks/optimisers.py", "src/robustsim/hub.py"}
    for text in lines.values():  # a registration is one line (plus, for an optimiser, its import)
        assert len([t for t in text.splitlines() if t.strip()]) <= 2


def test_new_dataset_recipe(recipe, monkeypatch, capsys):
    from robustsim.data import registry

    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    run_registry_line("src/robustsim/data/registry.py", recipe[1]["src/robustsim/data/registry.py"])
    ds = registry.build_dataset("squares", n=8)
    ref, x0, x1, label, judge = ds[3]
    assert len(ds) == 8 and ref.shape == (3, 32, 32) and label == 0
    assert main(["eval", "--metric", "pixel-l2", "--dataset", "squares", "--n", "16", "--no-progress"]) == 0
    assert "100.0" in capsys.readouterr().out  # pixel distance orders these triplets perfectly
    from robustsim.train.config import triplet_kinds

    assert "squares" in triplet_kinds()


def test_new_attack_optimiser_recipe(recipe, monkeypatch, tmp_path, capsys):
    from robustsim import attacks, images
    from robustsim.attacks import optimisers

    monkeypatch.setattr(optimisers, "_OPTIMISERS", dict(optimisers._OPTIMISERS))
    run_registry_line("src/robustsim/attacks/optimisers.py", recipe[1]["src/robustsim/attacks/optimisers.py"])
    assert "random-search" in attacks.list_optimisers()
    metric = robustsim.load("pixel-l2")
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 16, 16, generator=g)
    x0, x1 = (ref + 0.02 * torch.randn(ref.shape, generator=g)).clamp(0, 1), torch.rand(2, 3, 16, 16, generator=g)
    res = attacks.run_2afc(metric, ref, x0, x1, norm="l2", eps=0.5, method="random-search", steps=5)
    delta = (res.ref - ref).flatten(1).norm(dim=1)
    assert bool((delta <= 0.5 + 1e-5).all())
    for name, x in (("ref", ref), ("x0", x0), ("x1", x1)):
        images.save_image(x[:1], tmp_path / f"{name}.png")
    out = tmp_path / "adv"
    argv = ["attack", "2afc", *(str(tmp_path / f"{n}.png") for n in ("ref", "x0", "x1")), "--metric", "pixel-l2",
            "--method", "random-search", "--steps", "3", "--eps", "0.5", "--out", str(out), "--json"]
    assert main(argv) == 0
    assert '"method": "random-search"' in capsys.readouterr().out


def test_new_metric_recipe(recipe, monkeypatch, tmp_path, capsys):
    line = recipe[1]["src/robustsim/hub.py"].strip().rstrip(",")
    monkeypatch.setattr(hub, "FAMILIES", [*hub.FAMILIES, eval(line)])
    monkeypatch.setattr(hub, "_REGISTRY", {})
    monkeypatch.setattr(hub, "_LOADED_FAMILIES", False)
    assert "pixel-l1" in robustsim.list_models()
    m = robustsim.load("pixel-l1")
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(m(x, y), (x - y).abs().flatten(1).mean(1))
    back = robustsim.load(robustsim.save(m, tmp_path / "l1.safetensors"))
    torch.testing.assert_close(back(x, y), m(x, y))
    assert main(["models", "--json"]) == 0
    assert '"pixel-l1"' in capsys.readouterr().out
