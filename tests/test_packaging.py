"""The environment `make` builds and the package as published.

* `import robustsim` then a user's own `import lpips` / `import torchvision` works in the built
  environment (a fresh interpreter: the check must not depend on what this test process imported);
* the package builds as sdist and wheel, both pass `twine check`, and the wheel carries what
  `robustsim.load()` needs offline (the shipped model) and the console script.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ROBUSTSIM_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("lpips") is None, reason="lpips is a test dependency")
def test_user_script_imports_lpips_and_torchvision_after_robustsim():
    """In a fresh interpreter of the built environment: `import robustsim`, then the user's own imports."""
    r = _python(
        "import sys, robustsim\n"
        "from robustsim import _compat\n"
        "# the hook costs nothing until torchvision is imported: installed, nothing imported or declared yet\n"
        "assert sum(isinstance(f, _compat._TorchvisionImportHook) for f in sys.meta_path) == 1\n"
        "assert 'torchvision' not in sys.modules and not _compat._LIBS\n"
        "import lpips, torchvision, torchvision.models as tvm\n"
        "assert not any(isinstance(f, _compat._TorchvisionImportHook) for f in sys.meta_path)  # one-shot\n"
        "assert tvm.alexnet(weights=None).features[0].out_channels == 64\n"
        "import torch\n"
        "x = torch.rand(1, 3, 64, 64)\n"
        "d = lpips.LPIPS(net='alex', pretrained=True, pnet_rand=True, verbose=False)(x, x)\n"
        "print('imports ok', float(d), 'declared' if _compat._LIBS else 'native')"
    )
    assert r.returncode == 0 and "imports ok 0.0" in r.stdout, r.stderr[-2000:]
    plain = _python("import torchvision")
    # the schemas were declared exactly where a plain import of torchvision fails (this machine: it does)
    assert ("declared" in r.stdout) == (plain.returncode != 0), (r.stdout, plain.stderr[-500:])
    if plain.returncode != 0:
        assert "torchvision::nms" in plain.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("twine", path=str(Path(sys.executable).parent)) is None
                    and __import__("importlib").util.find_spec("twine") is None,
                    reason="twine is not installed (pip install build twine)")
def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path):
    pytest.importorskip("build")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path / "dist"
    b = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, (b.stdout + b.stderr)[-3000:]
    wheels, sdists = sorted(out.glob("robustsim-*.whl")), sorted(out.glob("robustsim-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    t = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
                       capture_output=True, text=True, timeout=120)
    assert t.returncode == 0 and t.stdout.count("PASSED") == 2, t.stdout + t.stderr
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "robustsim/assets/lipsim_default.safetensors" in names  # robustsim.load() works offline from the wheel
    assert "robustsim/assets/lipsim_effnet.safetensors" in names  # and the previous default, by name
    assert "robustsim/adapters/torchmetrics.py" in names and "robustsim/io.py" in names
    assert "Name: robustsim" in meta and "Description-Content-Type: text/markdown" in meta
    assert "pip install ." in meta  # the README's minimal install line is on the package page
    assert "robustsim = robustsim.cli:main" in entry


def test_readme_quick_start_shows_the_file_path_route_and_the_adapters():
    text = (REPO / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("## Certificates")]
    assert "make demo" in text and "make test" in text  # the two set-up commands
    assert "pip install .  " in text or "pip install .\n" in text
    assert 'preprocess(["examples/ref.png"' in quick and "preprocess_for(m" in quick
    assert "from robustsim.adapters.torchmetrics import LearnedPerceptualImagePatchSimilarity" in quick
    assert "--all-pairs" in quick and "--map" in quick
    assert "python scripts/distance_table.py" in quick and (REPO / "scripts" / "distance_table.py").is_file()
