"""What the tests share: a tiny CIFAR-10-shaped image folder, config composition, one trained run, and the ways
a test starts, holds, signals and reads a real `python train.py` / `evaluate.py` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifar.config.compose import compose_config
from cifar.core.data import CIFAR10_CLASSES
from cifar.hold import FILE as HOLD_FILE
from cifar.hold import POINT as HOLD_POINT

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The real data set, as CI has it beside the clone; tests that need it skip cleanly without it.
REAL_TARBALL = Path(os.environ.get("CIFAR10_JPEG_TAR", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
# cuBLAS repeats its sums to the bit only with a fixed workspace, read when its first handle is made: before any test
# touches CUDA, so that tests asking for deterministic kernels get them whatever ran before (tests/test_cuda.py).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# Output wide enough that no path or status is cut where a test reads it.
SCRIPT_ENV = {"COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
PIPED = {"COLUMNS": ""}  # as under `| tee` or a batch scheduler: no terminal, and no width given


def pytest_configure(config):
    """Under pytest-xdist (`-n`, on by default in pyproject.toml), each worker takes its own share of this process's cores,
    so that runs in two workers do not fight over the same ones: a run's threads (`threads=null`) and every process it
    starts follow its worker's share. Serially, every test has all the cores."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    if worker and 1 < workers <= len(cores):
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) :: workers])


# Fixtures that start real processes, made once a worker: the tests using one run in the same worker (pytest-xdist's
# loadgroup), so that it is made once, not once in each worker (~11 s of CPU each).
SHARED_RUNS = ("lr_sweep", "finished_run")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in SHARED_RUNS:
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(fixture))


# ---- data


def write_image_folder(
    root: Path, per_class: dict[str, int], seed: int = 0, classes=CIFAR10_CLASSES, size: int = 32, suffix: str = ".jpg"
) -> Path:
    """A folder copy laid out like the real one (`<part>/<class>/NNNN.jpg`), 32x32 JPEGs of CIFAR-10's classes unless
    told other `classes`, `size` or `suffix`.

    Each class has its own colour (plus noise), so a model can learn it in a few steps:
    accuracy above chance shows the labels reached the model in the right order.
    """
    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 256, (len(classes), 3, 1, 1), generator=g)
    for part, n in per_class.items():
        for label, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = torch.randint(-15, 16, (3, size, size), generator=g)
                img = (palette[label] + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(img).save(folder / f"{i:04d}{suffix}", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """100 training and 10 test images per class: 1,000 + 100 images."""
    return write_image_folder(tmp_path_factory.mktemp("tiny_cifar"), {"train": 100, "test": 10})


# ---- configs


@pytest.fixture
def compose_cfg():
    return compose_config


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_folder) -> tuple[Path, dict]:
    """One tiny Net run (2 epochs) for the tests that only read a run: its folder and summary. Its W&B run is offline,
    with the best checkpoint logged as a model artifact. Tests must not write into its folder."""
    from cifar.run.training import train

    out = tmp_path_factory.mktemp("trained") / "run"
    summary = train(compose_config(tiny_overrides(tiny_folder, out, "wandb.mode=offline", "wandb.log_model=true")))
    return out, summary


@pytest.fixture(scope="session")
def lr_sweep(tiny_folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real sweep, `python train.py -m optim.lr=0.01,0.001,1000` (3 epochs, W&B offline as by default): jobs 0 and 1
    finish, job 2 diverges. Run as under `| tee` or a batch scheduler (no terminal, no COLUMNS), in a folder whose path
    80 columns would cut. The sweep folder and the finished process; tests must not write into the folder."""
    launch = tmp_path_factory.mktemp("lr_sweep")
    sweep = launch / "a-sweep-folder-with-a-name-long-enough-that-eighty-columns-would-cut-its-jobs-paths"
    proc = run_script("train.py", "-m", "optim.lr=0.01,0.001,1000", f"data.root={tiny_folder}", "epochs=3", "batch_size=8",
                      f"hydra.sweep.dir={sweep}", cwd=launch, check=False, env=PIPED)  # fmt: skip
    return sweep, proc


# ---- processes, as a user starts them


def run_script(script: str, *args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <repo>/<script> args...` (or `-m module` for script `-m`) as a user would, from `cwd`."""
    cmd = [sys.executable, *(["-m"] if script == "-m" else [str(REPO / script)]), *args]
    env = {**os.environ, **SCRIPT_ENV, "PYTHONPATH": str(REPO), **(env or {})}  # `-m cifar.results.report` from any folder
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def start_script(script: str, *args: str, cwd: Path, hold: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start `python <repo>/<script> args...` in its own process group; with `hold`, it waits at that point (cifar/hold.py)
    until signalled or released, and `wait_held` returns once it is there."""
    env = {**os.environ, **SCRIPT_ENV, **(env or {})}
    if hold:
        env |= {HOLD_POINT: hold, HOLD_FILE: str(cwd / f".held-{time.monotonic_ns()}")}
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A test runner started in the background has SIGINT ignored, and so would its children, which then never see
        # Ctrl-C; a handled (not ignored) SIGINT here reaches the child as a terminal's Ctrl-C does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # killpg reaches the run and whatever it started
    )  # fmt: skip
    proc.hold_file = Path(env[HOLD_FILE]) if hold else None
    return proc


def wait_held(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the run started with `hold` waits at its point: then a signal lands exactly there."""
    wait_for(proc.hold_file, proc, timeout)


def release(proc: subprocess.Popen) -> None:
    """Let a held run go on from its point."""
    proc.hold_file.unlink()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {path} appeared:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a started process to end; its output. A process still running at `timeout` is killed and fails the test."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running after {timeout:g} s:\n{proc.communicate()[0][-3000:]}") from None


def one_clear_line(proc, rc: int, *needles: str) -> str:
    """A user's mistake: exit status `rc`, no traceback, and the message holding every needle. Our own messages (exit 2)
    are one line starting `error:`, which is returned; Hydra's (exit 1) are its own, and its whole output is returned."""
    out = proc.stdout + (proc.stderr or "")
    assert proc.returncode == rc, f"exit {proc.returncode}, not {rc}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    if rc == 2:
        (out,) = [line for line in out.splitlines() if line.startswith("error:")]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"
    return out


# ---- what a run leaves


def read_metrics(folder: Path, times: bool = False) -> list[dict]:
    """metrics.jsonl's rows; without the `time/` keys (which differ from run to run) unless `times`."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return rows if times else [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def read_summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def wandb_inspect(run_dir: Path, summary: bool = True) -> str:
    """`wandb leet inspect` on an offline run folder: how a user reads a run back with no server."""
    # This interpreter's own wandb, not whichever `wandb` is first on PATH (a venv that is not activated has none there)
    args = [sys.executable, "-m", "wandb", "leet", "inspect", *(["--summary"] if summary else []), "--json", str(run_dir)]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout


def wandb_run_of(folder: Path, summary: bool = True):
    """The one offline W&B run in a run folder, read back: the summary's JSON, or (summary=False) every record."""
    (run_dir,) = (folder / "wandb").glob("offline-run-*")
    text = wandb_inspect(run_dir, summary)
    return json.loads(text) if summary else [json.loads(line) for line in text.splitlines() if line.strip()]
