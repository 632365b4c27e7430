"""The benchmark runs end to end and reports every figure it promises (speed targets live in RESULTS.md, not here)."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_reports_throughput_memory_and_roofline(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--cases", "net4", "net512", "--windows", "1", "--warmup", "1", "--images", "256", "--json", str(out)]
    proc = subprocess.run([sys.executable, "-m", "cifar.bench", *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Training throughput" in proc.stdout and "matmul roofline" in proc.stdout
    result = json.loads(out.read_text())
    assert result["roofline_gflop_s"]["fp32"] > 0 and result["roofline_gflop_s"]["bf16"] > 0
    net, big = result["cases"]
    for case in (net, big):
        assert case["tutorial_img_s"] > 0 and case["ours_img_s"] > 0
        assert case["speedup"] == case["ours_img_s"] / case["tutorial_img_s"]
        assert case["tutorial_peak_rss_mb"] > 100 and case["ours_peak_rss_mb"] > 100  # torch alone is more than that
    # forward + backward, 2 FLOP per multiply-add: under 3x the forward pass, as the input needs no gradient
    assert 3.0e-3 < net["train_gflop_per_image"] < 3.5e-3
    assert net["precision"] == "fp32"  # amp=auto keeps the tiny Net at batch 4 in fp32


def test_vgg16_training_flop_count():
    import torch

    from cifar.bench import train_gflop_per_image
    from cifar.models import VGG16

    assert 1.8 < train_gflop_per_image(VGG16(), torch.device("cpu"), channels_last=True) < 2.0
