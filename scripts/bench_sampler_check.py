"""What cifar-bench's memory sampler costs the tutorial path it measures (RESULTS.md, "Speed", issue 34):
`python scripts/bench_sampler_check.py`.

The bench's tutorial window (the Net at batch 4, 300 steps) with no sampler, with the sampler as it was before c0827cc
(the process's children looked up at every 10 ms sample) and with today's, alternating ten times in one process; the
median of each in images per second.
"""

import statistics
import time

import psutil
import torch

from cifar.core.data import Split
from cifar.core.hardware import configure_backends, cpu_threads, pick_device
from cifar.tools.bench import CASES, RssPeak, case_config, tutorial_window


class OldRssPeak(RssPeak):
    """The sampler before c0827cc: psutil's children() (a scan of every process) at every sample."""

    def _sample(self, label):
        try:
            rss = self.me.memory_info().rss
            if self.with_children:
                rss += sum(c.memory_info().rss for c in self.me.children(recursive=True))
        except psutil.Error:
            return
        self.peaks[label] = max(self.peaks.get(label, 0), rss)


def main() -> None:
    device = pick_device("cpu")
    configure_backends(device, cpu_threads(None))
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (10000,), generator=g))
    cfg = case_config(CASES["net4"], [], False)
    window = tutorial_window(cfg, split, device, 300)
    window()
    window()
    rates = {"none": [], "old": [], "new": []}
    for _round in range(10):
        for label, cls in (("none", None), ("old", OldRssPeak), ("new", RssPeak)):
            rss = cls() if cls else None
            if rss:
                rss.measure("t", with_children=True)
            t0 = time.perf_counter()
            window()
            rates[label].append(1200 / (time.perf_counter() - t0))  # 300 steps of 4 images
            if rss:
                rss.stop()
    for label, r in rates.items():
        print(label, f"median {statistics.median(r):.0f}", " ".join(f"{x:.0f}" for x in r))


if __name__ == "__main__":
    main()
