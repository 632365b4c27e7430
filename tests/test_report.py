"""Comparing runs with no server: `python -m cifar.results.report` on real sweeps, evaluate.py's pictures, W&B's tables."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats as scipy_stats

from cifar.core.batches import seeded_draw
from cifar.core.data import CIFAR10_CLASSES, load_dataset
from cifar.core.hardware import Precision
from cifar.core.scoring import class_probabilities
from cifar.errors import UserError
from cifar.predictions import read_predictions
from cifar.results.report import shown_epochs
from cifar.results.runs import differing_keys, find_runs
from cifar.results.stats import spread
from cifar.run.build import build_model, eval_batches
from cifar.run.checkpoint import load_checkpoint
from cifar.run.evaluation import evaluate
from tests.conftest import compose_config, read_summary, run_script, wandb_inspect, wandb_run_of


def run_report(*args, cwd):
    """`python -m cifar.results.report args...`, as a user runs it."""
    return run_script("-m", "cifar.results.report", *map(str, args), cwd=cwd, check=False)


def assert_picture(path, min_size=(400, 300)):
    """A real PNG of plausible size that is not one flat colour."""
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1], (path, img.size)
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100, f"{path} looks blank"


def test_report_tables_markdown_and_pictures_from_a_real_sweep(lr_sweep, tmp_path):
    sweep, _ = lr_sweep
    # A fourth job that is still running: Hydra wrote its folder, one epoch is logged and the next line is half-written.
    running = tmp_path / "sweep_running"
    shutil.copytree(sweep, running)
    shutil.copytree(running / "1", running / "3")
    (running / "3" / "summary.json").unlink()
    first_epoch = (running / "3" / "metrics.jsonl").read_text().splitlines()[0]
    (running / "3" / "metrics.jsonl").write_text(first_epoch + '\n{"epoch": 2, "train/lo')

    proc = run_report(running, "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    summaries = {i: read_summary(sweep / str(i)) for i in range(3)}
    assert "optim.lr" in out and "test acc" in out and "Training loss per epoch" in out
    assert "diverged" in out and "running or killed" in out and out.count("finished") == 3  # 2 statuses, "one finished seed"
    assert f"{summaries[0]['test_acc']:.2%}" in out  # the figures are the runs' own

    md = (tmp_path / "out" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 0.001") or line.startswith("| 0.01") or line.startswith("| 1000")]
    assert len(rows) == 4  # one row per run in the runs table (the running copy of job 1 has lr 0.001 too)
    assert rows[0].startswith("| 0.001") and rows[-1].startswith("| 1000")  # sorted by the swept value
    assert "| run | epoch 1 | epoch 2 | epoch 3 |" in md
    assert "optim.lr=0.01 |" in md and "1/3" in md and "running or killed" in md
    for name in ("curves.png", "test_acc_vs_optim.lr.png"):
        assert f"]({name})" in md
        assert_picture(tmp_path / "out" / name)


def test_report_of_several_folders_names_what_differs(lr_sweep, tmp_path):
    sweep, _ = lr_sweep
    runs = find_runs([sweep / "0", sweep / "1"])
    assert differing_keys(runs) == ["optim.lr"]  # not the output folder, W&B name or anything else bookkeeping
    proc = run_report(sweep / "0", sweep / "1", "--out", tmp_path, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "report.md").is_file()


def test_report_on_a_folder_without_runs_says_so_in_one_line(tmp_path):
    proc = run_report(tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path}: holds no training runs" in proc.stdout
    proc = run_report(tmp_path / "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and "no such folder" in proc.stdout


def test_long_runs_get_a_short_loss_table():
    assert shown_epochs(3) == [1, 2, 3]
    cols = shown_epochs(100)
    assert cols[0] == 1 and cols[-1] == 100 and len(cols) == 10 and cols == sorted(set(cols))


@pytest.mark.slow
def test_seeds_are_summarised_as_mean_std_and_interval(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", "seed=0,1", f"data.root={tiny_folder}", "epochs=1", "batch_size=8", "wandb.mode=disabled",
               f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    proc = run_report(sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    accs = [read_summary(sweep / str(i))["test_acc"] for i in (0, 1)]
    md = (sweep / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| all | 0, 1 |"))
    assert "Each setting over its seeds" in proc.stdout and row.endswith(f"| {spread(accs).text()} |")
    assert_picture(sweep / "report" / "curves.png")


def test_report_gives_the_tta_figure_beside_the_plain_one(tmp_path):
    for seed, acc in enumerate([0.90, 0.92]):  # two seeds of a recipe tested with six-view TTA, as fastnet94
        run = tmp_path / f"s{seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"epochs: 1\nseed: {seed}\ntest_tta: flip_translate\n")
        summary = {"status": "finished", "test_acc": acc, "test_acc_tta": acc + 0.01, "test_tta": "flip_translate", "train_seconds": 1.0}
        (run / "summary.json").write_text(json.dumps(summary))
    proc = run_report(tmp_path / "s0", tmp_path / "s1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| test acc | TTA acc |" in md
    assert "| 90.00% | 91.00% |" in md and f"| {spread([0.90, 0.92]).text()} | {spread([0.91, 0.93]).text()} |" in md


def test_nan_or_infinity_in_a_runs_files_is_read_as_broken_in_one_warning_never_a_crash(tmp_path):
    # Python's json reads NaN and Infinity (this project writes a missing figure as null): a summary.json edited or cut so
    # made the report's statistics fail with a traceback; a metrics.jsonl line so is an epoch's record no more.
    for seed, acc in enumerate(["NaN", 0.61, 0.62]):
        run = tmp_path / "sweep" / str(seed)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"epochs: 2\nseed: {seed}\n")
        (run / "summary.json").write_text(f'{{"status": "finished", "test_acc": {acc}, "train_seconds": 1.0}}')
        epoch = '"lr": 0.01, "time/epoch_seconds": 1.0, "time/images_per_sec": 50.0'
        epochs = [f'{{"epoch": 1, "train/loss": 2.0, "val/acc": 0.5, {epoch}}}', f'{{"epoch": 2, "train/loss": Infinity, {epoch}}}']
        (run / "metrics.jsonl").write_text("\n".join(epochs) + "\n")
    proc = run_report(tmp_path / "sweep", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert out.count("is not a readable summary") == 1 and "0/summary.json is not a readable summary (test_acc is nan)" in out
    assert out.count("is not an epoch's record (train/loss is inf): reading the 1 epochs before it") == 3
    md = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert f"| all | 1, 2 | - | {spread([0.61, 0.62]).text()} |" in md  # the two whole runs
    assert "nan" not in md.replace(str(tmp_path), "").lower()


def test_an_epoch_record_without_its_seconds_ends_the_history_in_one_warning(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("epochs: 2\nseed: 0\n")
    epoch = '"train/loss": 2.0, "lr": 0.01, "time/images_per_sec": 50.0'
    (run / "metrics.jsonl").write_text(f'{{"epoch": 1, {epoch}, "time/epoch_seconds": 1.0}}\n{{"epoch": 2, {epoch}}}\n')
    proc = run_report(run, cwd=tmp_path)  # summed the seconds of every epoch: a TypeError on None
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "line 2, is not an epoch's record (it has no time/epoch_seconds): reading the 1 epochs before it" in proc.stdout + proc.stderr


def test_evaluate_shows_two_checkpoints_side_by_side(lr_sweep, tmp_path):
    sweep, _ = lr_sweep
    after, before = sweep / "0" / "ckpt.pt", sweep / "1" / "ckpt.pt"
    proc = run_script("evaluate.py", f"ckpt={after}", f"baseline={before}", f"data.root={read_summary(sweep / '0')['config']['data']['root']}", "samples=12", "sample_seed=null", "tta=true",
                      "wandb.mode=offline", f"output_dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "evaluation.json").read_text())
    names = [read_summary(sweep / i)["name"] for i in ("0", "1")]
    assert report["ckpt"] == str(after) and report["baseline"]["ckpt"] == str(before)
    assert {"acc", "tta_acc"} <= report.keys() and {"acc", "tta_acc"} <= report["baseline"].keys()
    # both models are Nets, so each column is named by its run, with its accuracy
    for name, r in zip(names, (report, report["baseline"]), strict=True):
        assert f"Net {name} ({r['acc']:.1%})" in proc.stdout
    assert "ground truth" in proc.stdout and "Test accuracy, checkpoint by checkpoint" in proc.stdout
    # image by image: each checkpoint's predictions kept (the run's own, as training tested it), McNemar's test by hand
    ours, theirs = read_predictions(tmp_path / "test_predictions.npz"), read_predictions(tmp_path / "baseline_test_predictions.npz")
    assert (ours.plain.predicted == read_predictions(sweep / "0" / "test_predictions.npz").plain.predicted).all()
    assert ours.plain.acc == pytest.approx(report["acc"]) and theirs.tta.acc == pytest.approx(report["baseline"]["tta_acc"])
    only_ours, only_theirs = int((ours.plain.right & ~theirs.plain.right).sum()), int((theirs.plain.right & ~ours.plain.right).sum())
    p = scipy_stats.binomtest(only_theirs, only_ours + only_theirs, 0.5).pvalue if only_ours + only_theirs else 1.0
    assert report["image_by_image"] == {
        "only_ckpt_right": only_ours, "only_baseline_right": only_theirs, "mcnemar_p": pytest.approx(p), "differ": p < 0.05,
        "acc_interval": pytest.approx(list(scipy_stats.binomtest(int(ours.plain.right.sum()), 100).proportion_ci(method="exact"))),
        "baseline_acc_interval": pytest.approx(list(scipy_stats.binomtest(int(theirs.plain.right.sum()), 100).proportion_ci(method="exact"))),
    }  # fmt: skip
    assert f"only {names[1]}" not in proc.stdout and f"on {only_theirs}: McNemar's exact p={p:.3g}" in " ".join(proc.stdout.split())
    assert_picture(tmp_path / "predictions.png", (800, 300))
    assert_picture(tmp_path / "confusion.png", (1000, 400))
    # and the same, with wandb.mode=offline, as a W&B run of its own in the checkpoints' project and sweep group
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    record = json.loads(wandb_inspect(run_dir))
    summary, config = record["summary"], record["config"]
    assert summary["test/acc"] == pytest.approx(report["acc"]) and summary["baseline/test/acc"] == pytest.approx(report["baseline"]["acc"])
    assert summary["test/run"] == names[0] and summary["baseline/test/run"] == names[1]
    for picture in ("predictions", "confusion"):
        ref = summary[f"evaluation/{picture}"]
        with Image.open(tmp_path / f"{picture}.png") as ours, Image.open(run_dir / "files" / ref["path"]) as theirs:
            assert ref["_type"] == "image-file" and ours.size == theirs.size and ours.tobytes() == theirs.tobytes()
    assert config["ckpt"] == str(after) and config["baseline"] == str(before)
    (run,) = [r["run"] for r in wandb_run_of(tmp_path, summary=False) if r.get("type") == "run"]
    assert run["job_type"] == "evaluation" and run["run_group"] == read_summary(sweep / "0")["group"] == str(sweep)
    assert run["display_name"] == " vs ".join(f"Net {n} ({r['acc']:.1%})" for n, r in zip(names, (report, report["baseline"]), strict=True))


def test_each_run_logs_per_class_accuracy_and_confusion_matrix_to_wandb(lr_sweep):
    job = lr_sweep[0] / "0"
    (run_dir,) = (job / "wandb").glob("offline-run-*")
    summary = json.loads(wandb_inspect(run_dir))["summary"]
    table_ref, confusion_ref = summary["test/per_class_acc"], summary["test/confusion_matrix_table"]
    assert table_ref["_type"] == "table-file" and table_ref["nrows"] == 10
    assert confusion_ref["nrows"] == 100  # every (true, predicted) pair of the 10 classes
    table = json.loads((run_dir / "files" / table_ref["path"]).read_text())
    ours = json.loads((job / "summary.json").read_text())["test_per_class_acc"]
    assert table["columns"] == ["class", "accuracy"] and {c: a for c, a in table["data"]} == pytest.approx(ours)
    assert summary["val/acc"]["max"] == pytest.approx(json.loads((job / "summary.json").read_text())["best_val_acc"])


def test_each_run_logs_the_same_test_images_with_its_predictions_to_wandb(lr_sweep, tiny_folder):
    """test/predictions: `samples=16` test images drawn with sample_seed 0 (evaluate.py's default picture draws the same),
    each with its pixels and a caption giving its true class and the class the run's ckpt.pt gives it, in every finished
    job of the sweep; test/predictions_table the same as a table."""
    sweep, _ = lr_sweep
    data = load_dataset(tiny_folder, "folder", False, None)  # the cache the sweep decoded
    index = seeded_draw(len(data.test), 16, 0)  # the draw evaluate.py's sample_seed=0 shows
    sample = data.test.subset(index)
    captions = {}
    for job in ("0", "1"):
        (run_dir,) = (sweep / job / "wandb").glob("offline-run-*")
        summary = json.loads(wandb_inspect(run_dir))["summary"]
        ckpt = load_checkpoint(sweep / job / "ckpt.pt")
        stored = OmegaConf.create(ckpt["config"])
        model = build_model(stored, torch.device("cpu"), 10)
        model.load_state_dict(ckpt["model_state_dict"])
        probs = class_probabilities(model, eval_batches(stored, sample, torch.device("cpu"), 16), Precision(ckpt["precision"], "cpu"))
        expected = [
            f"test image {i}: {CIFAR10_CLASSES[label]} -> {CIFAR10_CLASSES[int(p.argmax())]} ({p.max().item():.0%})"
            for i, label, p in zip(index.tolist(), sample.labels.tolist(), probs, strict=True)
        ]
        images = summary["test/predictions"]
        assert images["_type"] == "images/separated" and images["count"] == 16 and images["captions"] == expected
        for name, pixels in zip(images["filenames"], sample.images, strict=True):  # the test images' own pixels, in the run folder
            with Image.open(run_dir / "files" / name) as png:
                assert torch.equal(torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1), pixels)
        table_ref = summary["test/predictions_table"]
        table = json.loads((run_dir / "files" / table_ref["path"]).read_text())
        assert table["columns"] == ["test_index", "image", "true_class", "predicted_class", "probability", "correct"]
        for row, caption, p in zip(table["data"], expected, probs, strict=True):
            i, _, true_class, predicted, prob, correct = row
            assert caption.startswith(f"test image {i}: {true_class} -> {predicted} (") and correct == (true_class == predicted)
            assert prob == pytest.approx(p.max().item(), abs=1e-5)
        captions[job] = expected
    assert captions["0"] != captions["1"], "two learning rates, two sets of answers on the same images"


def test_evaluate_refuses_a_negative_sample_count_in_one_line(tmp_path):
    with pytest.raises(UserError, match="samples=-1: use 0"):
        evaluate(compose_config([f"ckpt={tmp_path / 'ckpt.pt'}", "samples=-1", f"output_dir={tmp_path}"], "evaluate"))


@pytest.mark.slow
def test_an_ablation_sweep_is_plotted_against_the_ablation_not_every_key_it_sets(tiny_folder, tmp_path):
    """no_lookahead sets lookahead_every, no_dirac sets model.dirac: the runs differ in both, but the user swept `ablation`."""
    sweep = tmp_path / "sweep"
    # FastNet narrowed from [64, 256, 256] channels: the same keys differ between the runs at any width
    run_script("train.py", "-m", "experiment=fastnet94", "ablation=no_lookahead,no_dirac", f"data.root={tiny_folder}", "epochs=1",
               "batch_size=100", "data.val_split=0.2", "model.widths=[32,64,64]", "device=cpu", "wandb.mode=disabled",
               f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    runs = find_runs([sweep])
    assert {"lookahead_every", "model.dirac"} <= set(differing_keys(runs)), "the keys the ablations set do differ"
    proc = run_report(sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pictures = sorted(p.name for p in (sweep / "report").glob("*.png"))
    assert pictures == ["curves.png", "test_acc_vs_ablation.png"]
    md = (sweep / "report" / "report.md").read_text()
    assert "| ablation | best val acc |" in md and "| no_dirac |" in md and "lookahead_every" not in md
