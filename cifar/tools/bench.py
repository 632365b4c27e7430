"""Training throughput of this project against PyTorch's tutorial loop, measured in one process.

    cifar-bench                                      # all cases, on the device train.py would pick
    cifar-bench --cases net4 vgg128 --windows 7 --json bench.json

For each case the tutorial loop (a torchvision-style dataset of PIL images, ToTensor +
Normalize per image, DataLoader with 2 workers, fp32, default memory format) and this
project's path (train.py's defaults: uint8 batches on the device, amp=auto, channels_last)
train the same model with the same optimizer and batch size. Timed windows of the two
alternate, so drift of a shared machine hits both; each figure is the median window.
The matmul roofline (fp32, and bf16 where the hardware has it natively) is measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from cifar.config.compose import compose_config
from cifar.console import console, user_errors_as_one_line
from cifar.core import hardware
from cifar.core.data import Split
from cifar.core.hardware import Precision, configure_backends, cpu_threads, device_name, forward_gflop, pick_device, pick_precision
from cifar.core.steps import CapturedStep, EagerStep
from cifar.errors import UserError, first_line, refuse_broken
from cifar.files import atomic_write_json, check_writable
from cifar.run import plugins
from cifar.run.build import build_loss, build_model, build_optimizer, build_train_step, make_batches
from cifar.run.checks import check
from cifar.run.targets import build


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    batch_size: int
    steps: int  # optimizer steps per timed window: long enough to time, short enough to alternate often


CASES = {
    "net4": Case("Net, batch 4 (the study's)", "net", 4, 300),
    "net512": Case("Net, batch 512", "net", 512, 6),
    "vgg4": Case("VGG16, batch 4 (the study's baseline)", "vgg16", 4, 8),
    "vgg16": Case("VGG16, batch 16 (the study's)", "vgg16", 16, 8),
    "vgg128": Case("VGG16, batch 128", "vgg16", 128, 2),
    "fastnet512": Case("FastNet, batch 512", "fastnet", 512, 1),
    "resnet128": Case("ResNet-18, batch 128", "resnet18", 128, 1),
}
DEFAULT_CASES = ["net4", "net512", "vgg16", "vgg128"]  # the study's models; vgg4, fastnet512 and resnet128 on request


class TutorialDataset(Dataset):
    """What torchvision's CIFAR10 does per item: a PIL image from the uint8 array, then the transform."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images_nhwc, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class RssPeak:
    """Peak resident memory (this process, plus its children while `with_children`), sampled every 10 ms.

    Finding the children scans every process of the machine (psutil: ~2.6 ms on the 2-core VM, while the sampler holds
    the GIL the training loop needs), so they are looked up once a second and only their memory read every sample
    (~0.04 ms each): looked up at each sample, they cost the tutorial path a quarter of a core and its loop the GIL."""

    CHILDREN_EVERY = 100  # samples between two lookups of the children (the DataLoader's workers, which persist)

    def __init__(self):
        self.me = psutil.Process()
        self.peaks: dict[str, int] = {}
        self.label, self.with_children = None, False
        self.children: list[psutil.Process] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.01):
            if self.label is not None:
                self._sample(self.label)

    def _sample(self, label: str) -> None:
        try:
            rss = self.me.memory_info().rss
            if self.with_children:
                if not self.children or self.samples % self.CHILDREN_EVERY == 0:  # none yet: the workers may start any moment
                    self.children = self.me.children(recursive=True)
                rss += sum(c.memory_info().rss for c in self.children)
        except psutil.Error:  # a child that has ended: look them up again at the next sample
            self.children = []
            return
        finally:
            self.samples += 1
        self.peaks[label] = max(self.peaks.get(label, 0), rss)

    def measure(self, label: str, with_children: bool = False):
        """From now on, samples count for `label`; one is taken at once (with the children looked up again), so a window
        shorter than the sampling period (a few steps on a busy machine) still has a figure."""
        self.label, self.with_children, self.samples = label, with_children, 0
        self._sample(label)

    def stop(self):
        self._stop.set()
        self._thread.join()


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 4 * 2 * n**3 / statistics.median(times) / 1e9


def measure_roofline(device: torch.device) -> dict[str, float | None]:
    """GFLOP/s of a large fp32 matmul, and of a bf16 one where the hardware has bf16 (None elsewhere: on a CPU without
    AVX-512 BF16 or AMX, bf16 is emulated, ~15x slower than fp32, and its timing would take minutes to say only that)."""
    native_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else hardware.cpu_has_native_bf16()
    return {"fp32": matmul_gflops(torch.float32, device), "bf16": matmul_gflops(torch.bfloat16, device) if native_bf16 else None}


def train_gflop_per_image(model: torch.nn.Module, device: torch.device, channels_last: bool, side: int = 32) -> float:
    """Forward + backward FLOPs of one training image of `side` x `side` pixels (2 per multiply-add), counted by torch."""
    x = torch.zeros(2, 3, side, side, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long, device=device)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def forever(make_epoch):
    """The batches of epochs 1, 2, 3, ... without end (`make_epoch(epoch)` gives one epoch's): a timed window never
    waits for an epoch boundary."""
    epoch = 0
    while True:
        epoch += 1
        yield from make_epoch(epoch)


def case_config(case: Case, overrides: list[str], compile_model: bool) -> DictConfig:
    """The training config of our path for `case`, with the user's `--override`s, checked as train.py checks its own."""
    try:
        cfg = compose_config(
            [f"model={case.model}", f"batch_size={case.batch_size}", f"compile={compile_model}", "output_dir=.", *overrides]
        )
    except (HydraException, OmegaConfBaseException) as e:  # a key, group or value Hydra cannot take
        raise UserError(f"--override {' '.join(overrides)}: {first_line(e)}") from None
    plugins.load(cfg.plugins)  # `--override plugins=[my_models.py] --override model._target_=...` times your own model
    check(cfg)
    for name, entry in (cfg.data.augment or {}).items():  # one size a case: its FLOPs are counted at the first batch's
        if entry is not None and len(set(entry.get("sizes") or [])) > 1:
            raise UserError(
                f"data.augment.{name}.sizes={list(entry.sizes)}: a case is timed at one size; bench each alone, e.g. "
                f"--override 'data.augment.{name}.sizes=[{entry.sizes[0]}]'"
            )
    return cfg


def check_arguments(args: argparse.Namespace) -> None:
    """What argparse's types cannot say, and every case's config: refused before the minutes of measuring, not after."""
    refuse_broken(
        [
            (args.windows >= 1, f"--windows {args.windows}: time 1 window or more (5 is the default; the median is reported)"),
            (args.steps >= 0, f"--steps {args.steps}: use 0 (each case's own) or a number of steps"),
            (args.warmup >= 0, f"--warmup {args.warmup}: use 0 or more untimed windows"),
        ]
    )  # fmt: skip
    if args.json:
        check_writable(Path(args.json).resolve().parent, "give --json a path in a writable folder")
    for key in args.cases:
        batch = case_config(CASES[key], args.override, compile_model=False).batch_size  # an --override's, if it sets one
        if args.images < batch:
            raise UserError(f"--images {args.images}: fewer than one batch of {key} ({batch}); give --images {batch} or more")


def bench_case(case: Case, split: Split, device: torch.device, args: argparse.Namespace, rss: RssPeak, compile_model: bool) -> dict:
    cfg = case_config(case, args.override, compile_model)
    steps = args.steps or case.steps
    batch = cfg.batch_size  # the case's, or `--override batch_size=...`'s: the images each timed step takes
    ours = our_windows(cfg, split, device, steps)
    windows = {"tutorial": tutorial_window(cfg, split, device, steps), **ours.windows}

    rates = {label: [] for label in windows}
    for i in range(args.warmup + args.windows):  # alternate, so slow spells of the machine hit each path alike
        for label, window in windows.items():
            rss.measure(f"{case.name}/{label}", with_children=label == "tutorial")
            t0 = time.perf_counter()
            window()
            if i >= args.warmup:
                rates[label].append(batch * steps / (time.perf_counter() - t0))
    rss.measure(None)
    if args.profile:  # where our path's time goes, op by op
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            windows["ours"]()
        console.print(Text.assemble((case.name, "bold"), f": our path, {steps} steps"))
        console.print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), soft_wrap=True)
    median = {label: statistics.median(r) for label, r in rates.items()}
    return {
        "case": case.name if batch == case.batch_size else f"{case.name.split(', batch')[0]}, batch {batch}",
        "batch_size": batch,
        "precision": ours.precision.name,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "cuda_graph": "ours_eager" in windows,
        "tutorial_img_s": median["tutorial"],
        "ours_img_s": median["ours"],
        "ours_eager_img_s": median.get("ours_eager"),
        "speedup": median["ours"] / median["tutorial"],
        "tutorial_peak_rss_mb": rss.peaks[f"{case.name}/tutorial"] / 2**20,
        "ours_peak_rss_mb": rss.peaks[f"{case.name}/ours"] / 2**20,
        "train_side": ours.side,
        "train_gflop_per_image": train_gflop_per_image(ours.model, device, cfg.channels_last, ours.side),
    }


@dataclass
class OurPath:
    windows: dict  # "ours" (train.py's step, replayed from a CUDA graph where it would be) and, then, "ours_eager"
    model: torch.nn.Module
    precision: Precision
    side: int  # pixels a side of the training batches (data.augment's Resize may make them smaller than the images)


def our_windows(cfg, split: Split, device: torch.device, steps: int) -> OurPath:
    """This project's path, built by the same functions train() uses: a timed window is `steps` optimizer steps."""
    torch.manual_seed(0)
    model = build_model(cfg, device, len(cfg.data.classes))
    optimizer = build_optimizer(cfg, model)
    precision = pick_precision(device, cfg.amp, cfg.amp_dtype, lambda: forward_gflop(model, cfg.batch_size, device))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    batches = forever(make_batches(cfg, split, device, train=True, num_classes=len(cfg.data.classes)).epoch)
    side = next(batches)[0].shape[-1]  # as the steps see them: one batch drawn ahead
    step = build_train_step(cfg, precision, device, False, torch.compile(model) if cfg.compile else model, optimizer, scaler)

    def window_of(train_step):
        def window():
            for _ in range(steps):
                train_step(*next(batches))
            _sync(device)

        return window

    windows = {"ours": window_of(step)}
    if isinstance(step, CapturedStep) and device.type == "cuda":
        # The same path launched kernel by kernel, on its own copy of the model: what the graph saves.
        eager_model = build_model(cfg, device, len(cfg.data.classes))
        eager_step = EagerStep(eager_model, build_optimizer(cfg, eager_model), scaler, precision, build_loss(cfg, device))
        windows["ours_eager"] = window_of(eager_step)
    return OurPath(windows, model, precision, side)


def tutorial_window(cfg, split: Split, device: torch.device, steps: int):
    """The tutorial's loop, as written there: PIL images through ToTensor + Normalize, a DataLoader, loss.item() every step."""
    torch.manual_seed(0)
    net = build(cfg.model, "model", num_classes=len(cfg.data.classes)).to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    dataset = TutorialDataset(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy())
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=2, persistent_workers=True)
    batches = forever(lambda _: iter(loader))
    running_loss = 0.0

    def window():
        nonlocal running_loss
        for _ in range(steps):
            inputs, labels = next(batches)
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        _sync(device)

    return window


def main(argv=None) -> None:
    """`cifar-bench`: its console script exits with what this returns, so it returns nothing (exit 0): the results go to
    the terminal (stdout) and to --json, never to the exit status."""
    parser = argparse.ArgumentParser(prog="cifar-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES), help="which cases to run")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per path and case (the median is reported)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per timed window (0: each case's own, sized for a CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed windows per path and case first")
    parser.add_argument("--images", type=int, default=10_000, help="random uint8 images to train on (speed does not depend on content)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--compile", action="store_true", help="also torch.compile our path (slow to start)")
    parser.add_argument(
        "--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for our path, e.g. amp=true channels_last=false"
    )
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one window of our path per case")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    with user_errors_as_one_line():
        run_bench(args)


def run_bench(args: argparse.Namespace) -> list[dict]:
    check_arguments(args)
    device = pick_device(args.device)
    configure_backends(device, cpu_threads(None))
    g = torch.Generator().manual_seed(0)
    split = Split(
        torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (args.images,), generator=g)
    )
    machine = device_name(device)
    console.print(Text.assemble((machine, "bold"), f", {torch.get_num_threads()} threads, torch {torch.__version__}, device {device}"))
    roofline = measure_roofline(device)
    console.print(f"matmul roofline (2048x2048): fp32 {roofline['fp32']:.0f} GFLOP/s, " + (
        f"bf16 {roofline['bf16']:.0f} GFLOP/s" if roofline["bf16"] else "bf16 not measured (not native here: emulated, and far slower than fp32)"
    ), soft_wrap=True)  # fmt: skip

    rss = RssPeak()
    results = []
    for key in args.cases:
        for compile_model in (False, True) if args.compile else (False,):
            r = bench_case(CASES[key], split, device, args, rss, compile_model)
            roof = roofline["bf16" if r["precision"] == "bf16" else "fp32"]  # a run is bf16 only where bf16 is native
            r["gflop_s"] = r["ours_img_s"] * r["train_gflop_per_image"]
            r["roofline_fraction"] = r["gflop_s"] / roof
            results.append(r)
            console.print(
                f"{r['case']}{' (compiled)' if compile_model else ''}: {r['tutorial_img_s']:,.0f} -> {r['ours_img_s']:,.0f} img/s ({r['speedup']:.1f}x)"
                + (
                    f"; eager {r['ours_eager_img_s']:,.0f} img/s, so the CUDA graph gives {r['ours_img_s'] / r['ours_eager_img_s']:.2f}x"
                    if r["ours_eager_img_s"]
                    else ""
                )
            )
    rss.stop()
    _print_table(results)
    if args.json:
        record = {"hardware": machine, "torch": torch.__version__, "device": str(device), "roofline_gflop_s": roofline, "cases": results}
        atomic_write_json(record, args.json)
    return results


def _print_table(results: list[dict]) -> None:
    table = Table(title="Training throughput: tutorial loop vs this project (median of timed windows)")
    for col in (
        "case",
        "our path",
        "tutorial img/s",
        "ours img/s",
        "ours eager",
        "speedup",
        "tutorial RSS",
        "ours RSS",
        "GFLOP/img",
        "GFLOP/s",
        "roofline",
    ):
        table.add_column(col, justify="left" if col in ("case", "our path") else "right", no_wrap=True)
    for r in results:
        table.add_row(
            r["case"],
            f"{r['precision']}{', channels_last' if r['channels_last'] else ''}{', compiled' if r['compile'] else ''}{', CUDA graph' if r['cuda_graph'] else ''}"
            f", {r['train_side']}x{r['train_side']}",
            f"{r['tutorial_img_s']:,.0f}",
            f"{r['ours_img_s']:,.0f}",
            f"{r['ours_eager_img_s']:,.0f}" if r["ours_eager_img_s"] else "-",
            f"{r['speedup']:.1f}x",
            f"{r['tutorial_peak_rss_mb']:,.0f} MB",
            f"{r['ours_peak_rss_mb']:,.0f} MB",
            f"{r['train_gflop_per_image']:.4f}",
            f"{r['gflop_s']:.0f}",
            f"{r['roofline_fraction']:.0%}",
        )
    # A table, not prose: one line per case even when the output goes to a log file (rich assumes 80 columns there).
    Console(width=max(console.width, 170), markup=False).print(table)


if __name__ == "__main__":
    main()
