"""Time to accuracy: our runs against airbench94's reference, test accuracy against seconds of training, as one picture.

    python scripts/time_to_accuracy.py --ours RUN [RUN ...] --reference LOG [LOG ...] --data /tmp/cifar10 \
        --out docs/cpu-speedrun/time-to-accuracy.png

Ours: train.py run folders kept with `callbacks=checkpoint_every` (an epoch_<n>.pt after each epoch; written after the
epoch's clock stops, so train_seconds does not count them). Each is tested by evaluate.py, plain (no TTA, as the
reference's per-epoch figure), and placed at the sum of the first n epochs' seconds (metrics.jsonl); the last epoch also
with TTA (summary.json's test_acc_tta). The reference: the table airbench_ref.py prints (its stdout saved to a file),
val_acc (on the test set) at total_time_seconds each epoch, and tta_val_acc at its last epoch's time (the TTA's own seconds
left out, as ours are). The points go beside the picture as JSON (<out>.json). Costs one evaluate.py (~15 s) per epoch.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cifar.files import atomic_write_json, atomic_write_with

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|\s*\d*\s*\|\s*(\d+|eval)\s*\|.*?\|.*?\|\s*([\d.]+)\s*\|\s*([\d.]*)\s*\|\s*([\d.]+)\s*\|$")


def our_points(run: Path, data: Path) -> dict:
    """(seconds, plain test accuracy) after each epoch of `run`, and the TTA figure at its end."""
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds, points = 0.0, []
    for record in epochs:
        seconds += float(record["time/epoch_seconds"])
        ckpt = run / f"epoch_{int(record['epoch'])}.pt"  # numbers only: a run folder's file names no other path
        if not ckpt.is_file():
            raise SystemExit(f"error: {ckpt} is missing: train with callbacks=checkpoint_every to keep every epoch's checkpoint")
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, str(REPO / "evaluate.py"), f"ckpt={ckpt}", f"data.root={data}", "samples=0", f"hydra.run.dir={out}"]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"error: evaluate.py failed on {ckpt}: {(done.stdout + done.stderr).strip().splitlines()[-1:]}")
            points.append((seconds, json.loads((Path(out) / "evaluation.json").read_text())["acc"]))
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("test_acc_tta") is None:
        raise SystemExit(f"error: {run} was tested without TTA: its end has no TTA figure (train with test_tta=flip_translate)")
    return {"label": f"ours ({run.name})", "points": points, "tta": (seconds, summary["test_acc_tta"])}


def reference_points(log: Path) -> dict:
    """(seconds, val_acc) of each epoch row of an airbench_ref.py table, and (the last epoch's seconds, tta_val_acc)."""
    points, tta = [], None
    for line in log.read_text().splitlines():
        if m := ROW.match(line.strip()):
            epoch, val_acc, tta_acc, seconds = m.groups()
            if epoch == "eval" and points:
                tta = (points[-1][0], float(tta_acc))
            else:
                points.append((float(seconds), float(val_acc)))
    if not points or tta is None:
        raise SystemExit(f"error: {log}: no airbench_ref.py table with an eval row in it (save the runner's stdout to a file)")
    return {"label": f"airbench94 reference ({log.stem})", "points": points, "tta": tta}


def plot(curves: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for curve in curves:
        seconds, accs = zip(*curve["points"], strict=True)
        style = "-" if curve["label"].startswith("ours") else "--"
        (line,) = ax.plot(seconds, [100 * a for a in accs], style, marker="o", markersize=3, label=curve["label"])
        ax.plot(curve["tta"][0], 100 * curve["tta"][1], marker="*", markersize=11, color=line.get_color())
    ax.axhline(90, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="training seconds (data decoded beforehand)", ylabel="test accuracy (%)", ylim=(30, 93))
    ax.set_title("CIFAR-10 on a 2-core CPU: test accuracy after each epoch (star: the end, with TTA)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    atomic_write_with(path, lambda f: fig.savefig(f, dpi=150, format="png"))  # no half-written picture
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", nargs="+", type=Path, required=True, help="train.py run folders with epoch_<n>.pt")
    parser.add_argument("--reference", nargs="+", type=Path, required=True, help="airbench_ref.py's stdout, saved")
    parser.add_argument("--data", type=Path, required=True, help="the dataset's root, as data.root")
    parser.add_argument("--out", type=Path, required=True, help="the picture (.png); the points go to <out>.json")
    args = parser.parse_args()
    curves = [our_points(run, args.data) for run in args.ours] + [reference_points(log) for log in args.reference]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out)
    atomic_write_json({"curves": curves}, args.out.with_suffix(".json"))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
