"""How fast VGG16's convolutions alone run on this machine: the ceiling for a VGG16 training step (issue 34, item 2).

    python scripts/conv_ceiling.py [--batch 128] [--reps 5]

Each of VGG16's 13 convolutions (cifar.core.models.VGG16 at 32x32) is timed alone, as a training step runs it: an fp32
layer under bf16 autocast (fp32 where the machine has no native bf16), channels_last input, forward then backward
(the gradients of the input, except for the first layer, and of the weights). A layer's FLOPs are 2 per multiply-add
(forward 2*B*H*W*Cin*Cout*9, backward twice that, once for the first layer), the convention of cifar-bench's roofline,
which is measured in the same run (a 2048x2048 matmul). The median of `--reps` timings after two untimed ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifar.core.hardware import configure_backends, cpu_has_native_bf16, cpu_threads, pick_device
from cifar.core.models import VGG16_LAYOUT
from cifar.tools.bench import matmul_gflops


def vgg16_convolutions() -> list[tuple[int, int, int]]:
    """(in channels, out channels, side) of each convolution, in order."""
    shapes, channels, side = [], 3, 32
    for v in VGG16_LAYOUT:
        if v == "M":
            side //= 2
        else:
            shapes.append((channels, v, side))
            channels = v
    return shapes


def timed(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_layer(cin: int, cout: int, side: int, batch: int, first: bool, bf16: bool, reps: int) -> tuple[float, float]:
    """Seconds of one convolution's forward, and of its backward alone."""
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, side, side, dtype=torch.bfloat16 if bf16 else torch.float32)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(not first)  # the first layer's input: the images

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return conv(x)

    grad = torch.randn_like(forward())

    def forward_and_backward() -> None:
        conv.zero_grad(set_to_none=True)
        x.grad = None
        forward().backward(grad)

    fwd = timed(forward, reps)
    return fwd, timed(forward_and_backward, reps) - fwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    device = pick_device("cpu")
    configure_backends(device, cpu_threads(None))
    bf16 = cpu_has_native_bf16()
    roof = matmul_gflops(torch.bfloat16 if bf16 else torch.float32, device)
    print(f"{torch.get_num_threads()} threads, {'bf16' if bf16 else 'fp32'}; matmul 2048x2048: {roof:.0f} GFLOP/s")
    print(f"{'layer':>14s} {'fwd ms':>8s} {'bwd ms':>8s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    total_flop = total_s = 0.0
    for i, (cin, cout, side) in enumerate(vgg16_convolutions()):
        fwd, bwd = time_layer(cin, cout, side, args.batch, i == 0, bf16, args.reps)
        flop = 2 * args.batch * side * side * cin * cout * 9 * (1 + (2 if i > 0 else 1))
        total_flop, total_s = total_flop + flop, total_s + fwd + bwd
        rate = flop / (fwd + bwd) / 1e9
        print(f"{cin:>4d}->{cout:<4d}@{side:<2d}  {1e3 * fwd:8.1f} {1e3 * bwd:8.1f} {flop / 1e9:7.1f} {rate:8.0f} {rate / roof:9.0%}")
    rate = total_flop / total_s / 1e9
    print(
        f"all 13: {1e3 * total_s:.0f} ms for {total_flop / 1e9:.0f} GFLOP a step of {args.batch}: {rate:.0f} GFLOP/s, {rate / roof:.0%} of the matmul"
    )


if __name__ == "__main__":
    main()
