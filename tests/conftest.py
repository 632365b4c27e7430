"""Shared fixtures: a tiny CIFAR-10-shaped image folder written by the tests, and config composition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from cifar.data import CLASSES

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The real data set, as CI has it beside the clone; tests that need it skip cleanly without it.
REAL_TARBALL = Path(os.environ.get("CIFAR10_JPEG_TAR", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def write_image_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """A folder copy laid out like the real one (`<part>/<class>/NNNN.jpg`), 32x32 JPEGs.

    Each class has its own colour (plus noise), so a model can learn it in a few steps:
    accuracy above chance shows the labels reached the model in the right order.
    """
    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 256, (len(CLASSES), 3, 1, 1), generator=g)
    for part, n in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = torch.randint(-15, 16, (3, 32, 32), generator=g)
                img = (palette[label] + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(img).save(folder / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """100 training and 10 test images per class: 1,000 + 100 images."""
    return write_image_folder(tmp_path_factory.mktemp("tiny_cifar"), {"train": 100, "test": 10})


@pytest.fixture
def compose_cfg():
    """Compose `conf/<config_name>.yaml` with overrides, as `@hydra.main` would (without running it)."""

    def _compose(overrides=(), config_name="config"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return compose(config_name=config_name, overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


def tiny_overrides(folder: Path, out: Path, *extra: str) -> list[str]:
    """A run on the tiny folder that takes seconds: small batches, W&B off (add wandb.mode=offline where a test reads W&B back)."""
    # device=cpu: the same numbers on a machine with a GPU (tests of the CUDA paths pass device=cuda after it).
    return [
        f"data.root={folder}",
        f"output_dir={out}",
        "epochs=2",
        "batch_size=8",
        "optim.lr=0.01",
        "wandb.mode=disabled",
        "device=cpu",
        *extra,
    ]


def run_script(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python <repo>/<script> args...` as a user would, from `cwd`."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def wandb_inspect(run_dir: Path, summary: bool = True) -> str:
    """`wandb leet inspect` on an offline run folder: how a user reads a run back with no server."""
    # This interpreter's own wandb, not whichever `wandb` is first on PATH (a venv that is not activated has none there)
    args = [sys.executable, "-m", "wandb", "leet", "inspect", *(["--summary"] if summary else []), "--json", str(run_dir)]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
