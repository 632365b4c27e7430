"""Is that difference real: intervals over seeds and verdicts, checked against scipy by hand, and a real 2-value x
3-seed sweep's report read as a user reads it."""

import json
import math
import statistics

import pytest
import torch
from scipy import stats as scipy_stats

from cifar.results.report import report
from cifar.results.stats import compare, spread
from tests.conftest import run_script


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
    assert spread([0.6]).text() == "60.00% (n=1)" and spread([0.6]).holds(0.6) is None


def test_one_seed_a_setting_never_gets_a_verdict():
    v = compare("lr=0.01", [0.60], "lr=0.02", [0.70, 0.71])
    assert v.p is None and v.low is None and v.sentence.startswith("no verdict possible: lr=0.01 has one seed")


def test_a_clear_difference_is_real_and_a_small_one_is_within_the_noise_with_the_seeds_it_would_take():
    real = compare("a", [0.60, 0.61, 0.60, 0.61], "b", [0.70, 0.71, 0.70, 0.72])
    assert real.p < 0.001 and real.sentence.startswith("real at n=4+4: b is higher by 10.25 points")
    noise = compare("a", [0.60, 0.62, 0.61], "b", [0.61, 0.63, 0.60])
    assert noise.p > 0.05 and "within the noise at n=3+3" in noise.sentence
    # 2 (z_.975 + z_.8)^2 s^2 / d^2 with s^2 the two variances' mean, d the difference seen
    s2 = (statistics.variance([0.60, 0.62, 0.61]) + statistics.variance([0.61, 0.63, 0.60])) / 2
    d = statistics.fmean([0.61, 0.63, 0.60]) - statistics.fmean([0.60, 0.62, 0.61])
    expected = math.ceil(2 * (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) ** 2 * s2 / d**2)
    assert noise.seeds_needed == expected and f"about {expected} seeds a setting" in noise.sentence


@pytest.mark.slow
def test_a_two_value_three_seed_sweeps_report_gives_intervals_and_a_verdict_scipy_agrees_with(tiny_folder, tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", "optim.lr=0.002,0.02", "seed=0,1,2", f"data.root={tiny_folder}", "epochs=1", "batch_size=16",
               "device=cpu", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    accs = {}
    for job in sweep.iterdir():
        if (job / "summary.json").is_file():
            summary = json.loads((job / "summary.json").read_text())
            accs.setdefault(summary["config"]["optim"]["lr"], []).append(summary["test_acc"])
    assert sorted(map(len, accs.values())) == [3, 3]
    md = report([str(sweep)], tmp_path / "report").read_text()
    low, high = accs[0.002], accs[0.02]
    welch = scipy_stats.ttest_ind(high, low, equal_var=False)
    ci = welch.confidence_interval(0.95)
    row = next(line for line in md.splitlines() if line.startswith("| optim.lr=0.02 vs optim.lr=0.002 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{100 * (statistics.fmean(high) - statistics.fmean(low)):+.2f}"
    assert cells[2] == f"{100 * ci.low:+.2f} to {100 * ci.high:+.2f}" and cells[3] == f"{welch.pvalue:.3g}"
    assert cells[4].startswith("real at n=3+3" if welch.pvalue < 0.05 else "within the noise at n=3+3")
    assert "| 0.002 | 0, 1, 2 |" in md and spread(low).text() in md and spread(high).text() in md


def test_the_calibration_error_is_the_bins_gap_weighted_by_their_share():
    from cifar.core.scoring import calibration

    # Two images at 90% confidence, one right; two at 60%, both right: |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    cal = calibration(probs, torch.tensor([0, 1, 1, 1]))
    assert cal["ece"] == pytest.approx(0.4) and len(cal["bins"]) == 15 and sum(b["count"] for b in cal["bins"]) == 4
    full = next(b for b in cal["bins"] if b["count"] and b["confidence"] == pytest.approx(0.9))
    assert full["accuracy"] == 0.5 and full["low"] < 0.9 <= full["high"]


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
