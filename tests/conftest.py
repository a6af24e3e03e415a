"""Shared test set-up: offline, deterministic, small; fixtures for real photos and shared data."""
from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ROBUSTSIM_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tests run in 2 xdist workers on 2 cores

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if not SHARED.is_dir():  # a worktree elsewhere: the shared folder beside the main checkout
    SHARED = Path("/work/shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty weight cache: nothing leaks between tests or from the user's home."""
    monkeypatch.setenv("ROBUSTSIM_HOME", str(tmp_path_factory.mktemp("robustsim_home")))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared fixtures folder beside the checkout (official LipSim checkpoints); not part of the
    repository, so a fresh clone skips the tests that need it instead of failing them."""
    if not (SHARED / "fixtures").is_dir():
        pytest.skip(f"needs the shared fixtures folder {SHARED / 'fixtures'} (outside the repository)")
    return SHARED


def real_photo(name: str = "astronaut", size: int = 64) -> torch.Tensor:
    """A real photo from scikit-image's bundled data as 1×3×size×size in [0, 1] (centre crop, area resize)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3]
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(t, size=(size, size), mode="area").clamp(0, 1)


@pytest.fixture
def photo():
    return real_photo
