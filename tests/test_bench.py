"""The benchmark runs end to end and reports every figure it promises (speed targets live in RESULTS.md, not here),
and on a CPU without native bf16 it measures only what is native there."""

import json
import os
import subprocess
import sys
import tomllib
import types

import pytest
import torch

from cifar.core import hardware
from cifar.tools import bench
from tests.conftest import REPO, SCRIPT_ENV

# The tutorial loop keeps its 2 DataLoader workers, as written there, also where a test worker has one core.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create 2 worker processes:UserWarning")


def test_bench_reports_throughput_memory_and_roofline(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--cases", "net4", "--windows", "1", "--warmup", "1", "--steps", "20", "--images", "256", "--json", str(out)])
    result = json.loads(out.read_text())
    (net,) = result["cases"]
    assert result["roofline_gflop_s"]["fp32"] > 0
    assert (result["roofline_gflop_s"]["bf16"] is not None) == hardware.cpu_has_native_bf16()
    assert net["tutorial_img_s"] > 0 and net["ours_img_s"] > 0 and net["gflop_s"] > 0
    assert net["tutorial_peak_rss_mb"] > 100 and net["ours_peak_rss_mb"] > 100  # torch alone is more than that
    # forward + backward, 2 FLOP per multiply-add: under 3x the forward pass, as the input needs no gradient
    assert 3.0e-3 < net["train_gflop_per_image"] < 3.5e-3
    assert net["precision"] == "fp32"  # amp=auto keeps the tiny Net at batch 4 in fp32


def test_bench_counts_the_flops_of_the_batches_as_data_augment_resizes_them(tmp_path, capsys):
    """experiment=cpu_speedrun's Resize at 16x16: the steps are timed on 16x16 batches, and their FLOPs counted so."""
    out = tmp_path / "bench.json"
    narrow = ["--override", "experiment=cpu_speedrun", "model.widths=[16,32,32]", "batch_size=64"]
    for sizes in ("[16]", "[32]"):
        bench.main(["--cases", "fastnet512", "--windows", "1", "--warmup", "0", "--steps", "1", "--images", "512", "--json",
                    str(out.with_suffix(f".{sizes[1:3]}.json")), *narrow, f"data.augment.resize.sizes={sizes}"])  # fmt: skip
    (small,), (full,) = (json.loads(out.with_suffix(f".{n}.json").read_text())["cases"] for n in ("16", "32"))
    assert (small["train_side"], full["train_side"]) == (16, 32)
    assert 0.2 < small["train_gflop_per_image"] / full["train_gflop_per_image"] < 0.3  # (15/31)^2 of the convolutions' pixels
    with pytest.raises(SystemExit) as refused:  # its sizes change by epoch: one line, exit 2, before anything is timed
        bench.main(["--cases", "fastnet512", "--override", "experiment=cpu_speedrun"])
    assert refused.value.code == 2
    assert "data.augment.resize.sizes=[16, 16, 20, 24, 32]: a case is timed at one size" in capsys.readouterr().out


def test_an_overridden_batch_size_is_the_one_counted_and_named(tmp_path, monkeypatch):
    """`--override batch_size=64` on a batch-512 case: each timed step takes 64 images, so img/s counts 64 a step. A clock
    that moves one second a reading makes every timed window last exactly 1 s: the rate is then images a window."""
    clock = iter(range(10**6))
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    out = tmp_path / "bench.json"
    bench.main(["--cases", "fastnet512", "--windows", "1", "--warmup", "0", "--steps", "2", "--images", "128", "--json", str(out),
                "--override", "model.widths=[16,32,32]", "batch_size=64"])  # fmt: skip
    (case,) = json.loads(out.read_text())["cases"]
    assert (case["case"], case["batch_size"]) == ("FastNet, batch 64", 64)
    assert case["ours_img_s"] == case["tutorial_img_s"] == 64 * 2


def console_script(name: str) -> str:
    """The program pip writes for pyproject.toml's console script `name`: it imports the named function and exits with
    what it returns (a list there is printed to stderr as the exit message, and exits 1)."""
    module, function = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][name].split(":")
    return f"import sys\nfrom {module} import {function}\nsys.exit({function}())\n"


def test_cifar_bench_exits_0_with_its_results_on_stdout(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--cases", "net4", "--windows", "1", "--warmup", "0", "--steps", "2", "--images", "64", "--json", str(out)]
    env = {**os.environ, **SCRIPT_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", console_script("cifar-bench"), *args], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Training throughput" in proc.stdout and "img/s" in proc.stdout
    assert "tutorial_img_s" not in proc.stderr  # the result list is not an exit message
    assert json.loads(out.read_text())["cases"][0]["case"]


def test_without_native_bf16_the_bench_times_no_bf16_and_trains_in_fp32(tmp_path, monkeypatch, capsys):
    """An AVX2-only CPU, as `cpu_has_native_bf16` (the one function that decides it) reports one: bf16 is emulated there,
    ~15x slower than fp32, so the bench must neither time a bf16 matmul nor train in bf16, even when asked to."""
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    timed = []
    monkeypatch.setattr(bench, "matmul_gflops", lambda dtype, device: timed.append(dtype) or 100.0)
    out = tmp_path / "bench.json"
    bench.main(["--cases", "net512", "--windows", "1", "--warmup", "0", "--steps", "1", "--images", "512", "--override", "amp=true",
                "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert timed == [torch.float32] and result["roofline_gflop_s"]["bf16"] is None
    assert result["cases"][0]["precision"] == "fp32"
    assert "bf16 not measured (not native here" in capsys.readouterr().out


def test_vgg16_training_flop_count():
    from cifar.core.models import VGG16
    from cifar.tools.bench import train_gflop_per_image

    assert 1.8 < train_gflop_per_image(VGG16(), torch.device("cpu"), channels_last=True) < 2.0


def test_a_memory_window_shorter_than_the_sampling_period_still_has_a_peak():
    # A few steps on a busy machine can end before the 10 ms sampler wakes: the window's figure must not be missing.
    from cifar.tools.bench import RssPeak

    rss = RssPeak()
    try:
        rss.measure("a window of no time at all")
        assert rss.peaks["a window of no time at all"] > 0
    finally:
        rss.stop()
