"""Is that difference real: intervals over seeds and verdicts, checked against scipy by hand, and a real 2-value x
3-seed sweep's report read as a user reads it."""

import json
import math
import statistics

import pytest
import torch
from scipy import stats as scipy_stats

from cifar.results.report import report
from cifar.results.stats import Comparison, compare, spread
from tests.conftest import run_script


def unpaired(a, a_values, b, b_values, *, seeds_run, ran=None, min_effect=None):
    """Two settings' figures compared without their seeds, as Welch's test compares them: each run keyed by its place."""
    comparison = Comparison(a, {("a", i): v for i, v in enumerate(a_values)}, b, {("b", i): v for i, v in enumerate(b_values)}, ran)
    (verdict,) = compare([comparison], seeds_run=seeds_run, min_effect=min_effect)
    return verdict


def test_a_spread_is_the_mean_with_students_t_interval():
    values = [0.61, 0.62, 0.64]
    s = spread(values)
    half = scipy_stats.t.ppf(0.975, 2) * statistics.stdev(values) / math.sqrt(3)
    assert (s.n, s.mean, s.low, s.high) == (
        3,
        pytest.approx(0.62333333),
        pytest.approx(0.62333333 - half),
        pytest.approx(0.62333333 + half),
    )
    assert s.text() == f"62.33% ± 1.53 (n=3, 95% CI {100 * (s.mean - half):.2f}-{100 * (s.mean + half):.2f})"
    assert spread([0.6]).text() == "60.00% (n=1)" and spread([0.6]).one_run() is None


def test_one_seed_a_setting_never_gets_a_verdict():
    v = unpaired("lr=0.01", [0.60], "lr=0.02", [0.70, 0.71], seeds_run={0, 1})
    assert v.p is None and v.low is None and v.sentence.startswith("no verdict possible: lr=0.01 has one seed")
    assert "(run seed=2,3 too, to tell a 10.50 points difference from it)" in v.sentence  # seeds the sweep does not have


def test_seeds_that_did_not_finish_are_counted_and_the_advice_names_new_seeds():
    # seed=0,1,2 ran for both; two of lr=1's diverged. The seeds it needs are ones the sweep has not run yet.
    v = unpaired("lr=0.01", [0.60, 0.61, 0.62], "lr=1", [0.55], seeds_run={0, 1, 2}, ran=(3, 3))
    assert v.p is None and v.sentence == (
        "no verdict possible: lr=1 has one finished seed of the 3 it ran, and one run cannot show the noise "
        "(run seed=3,4 too, to tell a 6.00 points difference from it)"
    )


def test_identical_seeds_give_no_p_value_where_scipy_gives_one_from_rounding():
    low, high = [0.3, 0.3, 0.3], [0.7, 0.7, 0.7]
    # numpy's variance of three 0.7s is rounding (~1e-32, not 0), so scipy "finds" a difference beyond any doubt
    assert scipy_stats.ttest_ind(high, low, equal_var=False).pvalue == pytest.approx(3.85e-32, rel=1e-3)
    v = unpaired("lr=0.01", low, "lr=0.02", high, seeds_run={0, 1, 2})
    assert (v.p, v.low, v.high, v.seeds_needed) == (None, None, None, None) and v.diff == pytest.approx(0.4)
    assert (
        v.sentence == "no test: each setting's seeds gave identical figures (zero spread); lr=0.02 is higher by 40.00 points on every seed"
    )
    same = unpaired("lr=0.01", high, "lr=0.02", list(high), seeds_run={0, 1, 2})
    assert same.p is None and same.sentence == "identical runs: every seed of both settings gave 70.00%"
    s = spread(high)
    assert (s.n, s.std, s.low, s.high) == (3, 0.0, None, None) and s.one_run() is None and s.text() == "70.00% (n=3, all identical)"
    # One setting without spread, the other with some: Welch's test is defined (its variance is the other's), as scipy's
    noisy = [0.60, 0.62, 0.64]
    welch = scipy_stats.ttest_ind(noisy, high, equal_var=False)
    one = unpaired("lr=0.01", high, "lr=0.02", noisy, seeds_run={0, 1, 2})
    assert one.p == pytest.approx(welch.pvalue) and one.low == pytest.approx(welch.confidence_interval(0.95).low)
    by_hand = 2 * scipy_stats.t.sf(abs(0.62 - 0.7) / (statistics.stdev(noisy) / math.sqrt(3)), 2)  # df = n - 1 of the noisy one
    assert one.p == pytest.approx(by_hand)


def test_a_clear_difference_is_real_and_a_small_one_is_within_the_noise_with_the_seeds_it_would_take():
    real = unpaired("a", [0.60, 0.61, 0.60, 0.61], "b", [0.70, 0.71, 0.70, 0.72], seeds_run={0, 1, 2, 3})
    assert real.p < 0.001 and real.sentence.startswith("real at n=4+4: b is higher by 10.25 points")
    noise = unpaired("a", [0.60, 0.62, 0.61], "b", [0.61, 0.63, 0.60], seeds_run={0, 1, 2})
    assert noise.p > 0.05 and "within the noise at n=3+3" in noise.sentence
    # 2 (z_.975 + z_.8)^2 s^2 / d^2 with s^2 the two variances' mean, d the difference seen
    s2 = (statistics.variance([0.60, 0.62, 0.61]) + statistics.variance([0.61, 0.63, 0.60])) / 2
    d = statistics.fmean([0.61, 0.63, 0.60]) - statistics.fmean([0.60, 0.62, 0.61])
    expected = math.ceil(2 * (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) ** 2 * s2 / d**2)
    assert noise.seeds_needed == expected and f"about {expected} seeds a setting" in noise.sentence


@pytest.mark.slow
def test_a_two_value_three_seed_sweeps_report_gives_intervals_and_a_paired_verdict_scipy_agrees_with(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", "optim.lr=0.002,0.02", "seed=0,1,2", f"data.root={tiny_folder}", "epochs=1", "batch_size=16",
               "device=cpu", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    accs = {}
    for job in sweep.iterdir():
        if (job / "summary.json").is_file():
            summary = json.loads((job / "summary.json").read_text())
            accs.setdefault(summary["config"]["optim"]["lr"], {})[summary["config"]["seed"]] = summary["test_acc"]
    assert sorted(map(len, accs.values())) == [3, 3]
    md = report([str(sweep)], tmp_path / "report").read_text()
    low, high = ([by_seed[seed] for seed in (0, 1, 2)] for by_seed in (accs[0.002], accs[0.02]))
    paired = scipy_stats.ttest_rel(high, low)  # the same seeds: compared seed by seed
    ci = paired.confidence_interval(0.95)
    welch = scipy_stats.ttest_ind(high, low, equal_var=False).confidence_interval(0.95)
    row = next(line for line in md.splitlines() if line.startswith("| optim.lr=0.02 vs optim.lr=0.002 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{100 * (statistics.fmean(high) - statistics.fmean(low)):+.2f}"
    assert cells[2] == f"{100 * ci.low:+.2f} to {100 * ci.high:+.2f}" and cells[3] == f"{paired.pvalue:.3g}"
    assert cells[4].startswith("real at n=3 paired by seed" if paired.pvalue < 0.05 else "within the noise at n=3 paired by seed")
    assert cells[4].endswith(f"{100 * (welch.high - welch.low):.2f} unpaired") and "| p (paired t) |" in md
    assert "| 0.002 | 0, 1, 2 |" in md and spread(low).text() in md and spread(high).text() in md
    assert "## The seeds as an ensemble" in md, "every run kept its predictions"


def test_the_calibration_error_is_the_bins_gap_weighted_by_their_share():
    from cifar.core.scoring import calibration

    # Two images at 90% confidence, one right; two at 60%, both right: |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    cal = calibration(probs, torch.tensor([0, 1, 1, 1]))
    assert cal["ece"] == pytest.approx(0.4) and len(cal["bins"]) == 15 and sum(b["count"] for b in cal["bins"]) == 4
    full = next(b for b in cal["bins"] if b["count"] and b["confidence"] == pytest.approx(0.9))
    assert full["accuracy"] == 0.5 and full["low"] < 0.9 <= full["high"]


def test_our_calibration_error_and_confusion_matrix_are_torchmetrics_figures_where_their_bins_agree():
    """Why they stay ours: torchmetrics' MulticlassCalibrationError gives the same ECE (to float32's digits) but no table
    of bins for the reliability diagram, bins [low, high) where ours are (low, high], and a bin of its own for a
    confidence of exactly 1.0; its MulticlassConfusionMatrix gives the same counts, and importing torchmetrics (~1-2 s)
    for every run's validation would cost more than the one bincount it replaces."""
    from torchmetrics.functional.classification import multiclass_calibration_error, multiclass_confusion_matrix

    from cifar.core.scoring import calibration, confusion_matrix

    generator = torch.Generator().manual_seed(0)
    for n, classes in [(1000, 10), (37, 3), (5000, 100)]:
        probs = (3 * torch.randn(n, classes, generator=generator)).softmax(1)  # no confidence on an edge k/15, nor 1.0
        labels = torch.randint(0, classes, (n,), generator=generator)
        theirs = multiclass_calibration_error(probs, labels, num_classes=classes, n_bins=15, norm="l1").item()
        assert calibration(probs, labels)["ece"] == pytest.approx(theirs, abs=1e-6)
        preds = probs.argmax(1)
        assert torch.equal(confusion_matrix(preds, labels, classes), multiclass_confusion_matrix(preds, labels, classes))


def test_evaluate_reports_how_sure_the_model_is_and_images_below_min_confidence_are_unsure(trained, tiny_folder, tmp_path):
    run, _ = trained
    run_script("evaluate.py", f"ckpt={run / 'ckpt.pt'}", f"data.root={tiny_folder}", f"output_dir={tmp_path / 'eval'}", cwd=tmp_path)
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    bins = report["calibration"]["bins"]
    assert sum(b["count"] for b in bins) == report["n"] and (tmp_path / "eval" / "reliability.png").stat().st_size > 10_000
    by_hand = sum(b["count"] / report["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert report["ece"] == pytest.approx(by_hand) and 0 <= report["ece"] <= 1
    proc = run_script("evaluate.py", f"ckpt={run / 'ckpt.pt'}", f"images={tiny_folder / 'test' / 'cat'}", "min_confidence=1.0",
                      f"output_dir={tmp_path / 'images'}", cwd=tmp_path)  # fmt: skip
    rows = json.loads((tmp_path / "images" / "predictions.json").read_text())["images"]
    assert rows and all(r["unsure"] and r["class"] is None for r in rows) and "unsure: " in proc.stdout


def test_the_report_and_the_study_warn_when_runs_did_not_run_alike(tmp_path):
    from cifar.results.study import study_table

    row = {"row": 1, "label": "Net baseline", "study_acc": 0.6419, "epochs": None, "alone": "python train.py experiment=net_baseline"}
    for seed, (cpu, acc) in enumerate([("AVX-512 BF16", 0.6146), ("AVX2", 0.6229)]):  # the same command on two CPU classes
        run = tmp_path / "sweep" / str(seed)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps({"epochs": 10, "seed": seed, "study_rows": [row]}))
        summary = {"status": "finished", "test_acc": acc, "train_seconds": 1.0, "cpu_class": cpu, "precision": "fp32", "data_id": "a"}
        (run / "summary.json").write_text(json.dumps(summary))
    md = report([str(tmp_path / "sweep")], tmp_path / "report").read_text()
    assert "**Warning:** these runs did not all run alike: cpu_class (AVX-512 BF16, AVX2)." in md
    table = study_table(tmp_path / "sweep")
    assert "Warning: these runs did not all run alike: cpu_class (AVX-512 BF16, AVX2)" in table
    assert f"| {spread([0.6146, 0.6229]).text()} |" in table.replace("**", "") and "| no |" not in table  # 64.19% in the interval


def write_runs(sweep, runs):
    """Run folders as a finished sweep leaves them, for the report: (lr, seed, status, test accuracy) each."""
    for job, (lr, seed, status, acc) in enumerate(runs):
        run = sweep / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps({"epochs": 2, "seed": seed, "optim": {"lr": lr}}))
        (run / "summary.json").write_text(json.dumps({"status": status, "test_acc": acc, "train_seconds": 1.0}))
    return sweep


def test_the_report_counts_diverged_seeds_and_gives_identical_seeds_no_p(tmp_path):
    diverged = write_runs(tmp_path / "diverged", [(0.01, s, "finished", 0.60 + s / 100) for s in (0, 1, 2)]
                          + [(0.5, 0, "finished", 0.55), (0.5, 1, "diverged", 0.1), (0.5, 2, "diverged", 0.1)])  # fmt: skip
    md = report([str(diverged)], tmp_path / "report-diverged").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| optim.lr=0.5 vs optim.lr=0.01 |")]
    assert "optim.lr=0.5 has one finished seed of the 3 it ran" in row and "(run seed=3,4 too, to tell" in row
    assert "seed=0" not in row

    same = write_runs(tmp_path / "same", [(lr, s, "finished", acc) for lr, acc in ((0.01, 0.3), (0.02, 0.7)) for s in (0, 1, 2)])
    md = report([str(same)], tmp_path / "report-same").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| optim.lr=0.02 vs optim.lr=0.01 |")]
    assert row == (
        "| optim.lr=0.02 vs optim.lr=0.01 | +40.00 | - | - | no test: each setting's seeds gave identical figures (zero spread); "
        "optim.lr=0.02 is higher by 40.00 points on every seed |"
    )
    assert "| 0.01 | 0, 1, 2 | - | 30.00% (n=3, all identical) |" in md


def test_the_studys_table_gives_identical_seeds_no_interval(tmp_path):
    from cifar.results.study import study_table

    row = {"row": 1, "label": "Net baseline", "study_acc": 0.6419, "epochs": None, "alone": "python train.py experiment=net_baseline"}
    for seed in (0, 1):
        run = tmp_path / "sweep" / str(seed)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps({"epochs": 10, "seed": seed, "study_rows": [row]}))
        (run / "summary.json").write_text(json.dumps({"status": "finished", "test_acc": 0.6419, "train_seconds": 1.0}))
    (line,) = [line for line in study_table(tmp_path / "sweep").splitlines() if line.startswith("| Net baseline |")]
    assert "| **64.19% (n=2, all identical)** | +0.00 | - (identical seeds: no interval) |" in line  # not "95% CI 64.19-64.19"
