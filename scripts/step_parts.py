"""What each part of a training step costs, on train.py's own path: `python scripts/step_parts.py [overrides]`.

The run's parts are built as train.py builds them (experiment=net_baseline unless overridden: the study's Net at batch 4,
fp32, channels_last, on the CPU), on random uint8 images (speed does not depend on the pixels). Each part of
`--steps` steps is timed on its own, in the order train_epoch runs them; its mean and median are printed in
microseconds:

    batch      the next batch: gathered from the uint8 tensor, normalised (train_epoch's `batches.epoch`)
    forward    the model and the loss, under the run's precision
    backward   zero_grad(set_to_none=True) and the backward pass
    optimizer  the optimizer's step (and the GradScaler's, a no-op outside fp16)
    count      the correct predictions of the batch, on the device (what train/acc is made of)
    record     the loss and count added to the epoch's sums, the schedule stepped

Then the same steps untimed, part by part, as EagerStep runs them: the step's whole cost, per step and in images/s.
On a CPU every call returns when its work is done, so a part's time is its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cifar.config.compose import compose_config
from cifar.core.data import Split
from cifar.core.hardware import configure_backends, cpu_threads, forward_gflop, pick_device, pick_precision
from cifar.run.build import build_loss, build_model, build_optimizer, build_train_step, make_batches
from cifar.run.targets import build
from cifar.tools.bench import forever

PARTS = ("batch", "forward", "backward", "optimizer", "count", "record")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. batch_size=16 model=vgg16")
    parser.add_argument("--steps", type=int, default=3000, help="timed steps (after 200 untimed)")
    parser.add_argument("--no-onednn", action="store_true", help="torch's own CPU convolutions instead of oneDNN's (a try, not a setting)")
    args = parser.parse_args()
    torch.backends.mkldnn.enabled = not args.no_onednn
    cfg = compose_config(["experiment=net_baseline", "output_dir=.", "device=cpu", *args.overrides])
    device = pick_device(cfg.device)
    configure_backends(device, cpu_threads(cfg.threads))
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (10_000,), generator=g))
    torch.manual_seed(0)
    model = build_model(cfg, device, len(cfg.data.classes))
    optimizer = build_optimizer(cfg, model)
    scheduler = build(cfg.sched, "sched")(optimizer, total_steps=10**9)
    precision = pick_precision(device, cfg.amp, cfg.amp_dtype, lambda: forward_gflop(model, cfg.batch_size, device))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    batches = make_batches(cfg, split, device, train=True, num_classes=len(cfg.data.classes))

    loss_fn = build_loss(cfg, device)
    stream = forever(batches.epoch)
    loss_sum, correct_sum = torch.zeros(()), torch.zeros((), dtype=torch.int64)
    times = {part: [] for part in PARTS}
    for step in range(200 + args.steps):
        t = [time.perf_counter()]
        x, y = next(stream)
        t.append(time.perf_counter())
        with precision.autocast():
            logits = model(x)
            loss = loss_fn(logits, y)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        t.append(time.perf_counter())
        scaler.step(optimizer)
        scaler.update()
        t.append(time.perf_counter())
        correct = (logits.detach().argmax(1) == y).sum()
        t.append(time.perf_counter())
        loss_sum += loss.detach()
        correct_sum += correct
        scheduler.step()
        t.append(time.perf_counter())
        if step >= 200:
            for part, start, end in zip(PARTS, t[:-1], t[1:], strict=True):
                times[part].append(end - start)

    train_step = build_train_step(cfg, precision, device, False, model, optimizer, scaler)
    for _ in range(200):
        train_step(*next(stream))
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, correct = train_step(*next(stream))
        loss_sum += loss
        correct_sum += correct
        scheduler.step()
    whole = (time.perf_counter() - start) / args.steps

    print(f"{type(model).__name__}, batch {cfg.batch_size}, {precision.name}, channels_last={cfg.channels_last}, "
          f"{torch.get_num_threads()} threads, oneDNN {'off' if args.no_onednn else 'on'}, {args.steps} steps")  # fmt: skip
    means = {part: 1e6 * statistics.fmean(times[part]) for part in PARTS}
    print(f"  {'part':10s} {'mean':>8s}     {'median':>8s}     share of the mean")
    for part, us in means.items():
        print(f"  {part:10s} {us:8.1f} us  {1e6 * statistics.median(times[part]):8.1f} us  {us / sum(means.values()):5.1%}")
    print(f"  {'sum':10s} {sum(means.values()):8.1f} us")
    print(f"  the whole step, untimed parts: {1e6 * whole:.1f} us, {cfg.batch_size / whole:,.0f} img/s")


if __name__ == "__main__":
    main()
