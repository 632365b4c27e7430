"""Verdicts a CPU budget can afford: paired by seed, corrected over many settings, "no practical difference" (TOST), the
best setting, the seeds as an ensemble and two single runs image by image (McNemar). Every number against scipy by hand."""

import itertools
import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cifar.predictions import FILE, Predictions, TestPredictions, read_predictions, write_predictions
from cifar.results.report import report
from cifar.results.stats import Comparison, accuracy_interval, compare, ensemble, holm, mcnemar, spread
from tests.conftest import one_clear_line, run_script
from tests.test_stats import unpaired

# Per-seed accuracies of four settings, seeds 0-4: a seed's draw moves every setting alike (the pairing's premise).
SEED_EFFECT = [0.000, 0.012, -0.008, 0.020, -0.015]
NOISE = [
    [0.001, -0.002, 0.002, 0.000, -0.001],
    [-0.001, 0.001, 0.000, 0.002, -0.002],
    [0.002, 0.000, -0.001, -0.002, 0.001],
    [0.0, 0.001, -0.001, 0.001, -0.001],
]
MEANS = {0.01: 0.600, 0.005: 0.612, 0.002: 0.611, 0.001: 0.590}


def accs(lr, i):
    return {seed: MEANS[lr] + SEED_EFFECT[seed] + NOISE[i][seed] for seed in range(5)}


def test_settings_that_share_seeds_are_compared_by_their_per_seed_differences_as_scipys_paired_t():
    a, b = accs(0.01, 0), accs(0.005, 1)
    (v,) = compare([Comparison("lr=0.01", a, "lr=0.005", b)], seeds_run=range(5))
    paired = scipy_stats.ttest_rel(list(b.values()), list(a.values()))
    ci = paired.confidence_interval(0.95)
    welch = scipy_stats.ttest_ind(list(b.values()), list(a.values()), equal_var=False).confidence_interval(0.95)
    assert (v.p, v.low, v.high, v.paired) == (pytest.approx(paired.pvalue), pytest.approx(ci.low), pytest.approx(ci.high), 5)
    assert v.unpaired_width == pytest.approx(welch.high - welch.low) and welch.high - welch.low > 3 * (ci.high - ci.low)
    assert v.sentence.startswith("real at n=5 paired by seed: lr=0.005 is higher by 1.20 points")
    assert v.sentence.endswith(
        f"pairing by seed: interval {100 * (ci.high - ci.low):.2f} points wide, {100 * (welch.high - welch.low):.2f} unpaired"
    )
    # the same figures without their seeds: Welch's, which cannot see the difference
    welch_only = unpaired("lr=0.01", list(a.values()), "lr=0.005", list(b.values()), seeds_run=range(5))
    assert welch_only.paired is None and welch_only.p > 0.05 and welch_only.sentence.startswith("within the noise at n=5+5")
    # seeds_needed when paired: (z_.975 + z_.8)^2 var(d) / d^2
    d = [b[s] - a[s] for s in range(5)]
    c = Comparison("x", a, "y", {s: a[s] + 0.0005 + NOISE[2][s] for s in range(5)})
    (small,) = compare([c], seeds_run=range(5))
    d = [c.b_by_seed[s] - a[s] for s in range(5)]
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert small.seeds_needed == math.ceil(z**2 * statistics.variance(d) / statistics.fmean(d) ** 2)


def test_only_the_seeds_both_settings_finished_are_paired_and_one_shared_seed_falls_back_to_welch():
    a, b = accs(0.01, 0), accs(0.005, 1)
    del b[4]  # seed 4 of b diverged
    (v,) = compare([Comparison("a", a, "b", b)], seeds_run=range(5))
    assert v.paired == 4 and v.p == pytest.approx(scipy_stats.ttest_rel([b[s] for s in range(4)], [a[s] for s in range(4)]).pvalue)
    (w,) = compare([Comparison("a", {0: 0.6, 1: 0.61, 2: 0.62}, "b", {2: 0.63, 5: 0.64, 6: 0.62})], seeds_run=range(7))
    assert w.paired is None and w.p == pytest.approx(scipy_stats.ttest_ind([0.63, 0.64, 0.62], [0.6, 0.61, 0.62], equal_var=False).pvalue)
    # two shared seeds are one degree of freedom; three shared of ten would throw seven away: Welch's, on every run
    (two,) = compare([Comparison("a", {0: 0.6, 1: 0.61, 2: 0.62}, "b", {0: 0.63, 1: 0.64, 7: 0.62})], seeds_run=range(8))
    (few,) = compare([Comparison("a", {s: 0.6 + s / 1000 for s in range(10)}, "b", {0: 0.63, 1: 0.64, 2: 0.62})], seeds_run=range(10))
    assert two.paired is None and few.paired is None and few.sentence.startswith("real at n=10+3")


def test_seeds_whose_differences_are_the_same_up_to_rounding_get_no_test():
    # accuracies of 10,000 images differ by 249 images on every seed, yet as floats not bit for bit
    a = {0: 0.5132, 1: 0.6625, 2: 0.6808}
    b = {seed: acc - 0.0249 for seed, acc in a.items()}
    assert len({b[s] - a[s] for s in a}) > 1
    (v,) = compare([Comparison("a", a, "b", b)], seeds_run=range(3))
    assert (
        v.p is None and v.sentence == "no test: every seed both ran differs by exactly -2.49 points (zero spread of the paired differences)"
    )


def test_runs_of_one_setting_that_share_a_seed_are_all_counted_and_never_paired(tmp_path):
    # two sweeps of seed=0 (the default) reported together: four runs of two settings, each run counted once
    runs = [(0.01, 0, 0.60), (0.01, 0, 0.62), (0.02, 0, 0.66), (0.02, 0, 0.69)]
    md = report([str(write_runs(tmp_path / "sweep", runs))], tmp_path / "r").read_text()
    welch = scipy_stats.ttest_ind([0.66, 0.69], [0.60, 0.62], equal_var=False)
    (row,) = [line for line in md.splitlines() if line.startswith("| optim.lr=0.02 vs optim.lr=0.01 |")]
    assert f"| {welch.pvalue:.3g} |" in row and "n=2+2" in row and "| p (Welch) |" in md


def test_holm_adjusts_the_p_values_of_comparisons_made_together_as_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> kept monotone: 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    comparisons = [
        Comparison(f"lr={x}", accs(x, i), f"lr={y}", accs(y, j)) for (i, x), (j, y) in itertools.combinations(enumerate(MEANS), 2)
    ]
    verdicts = compare(comparisons, seeds_run=range(5))
    raw = [scipy_stats.ttest_rel(list(c.b_by_seed.values()), list(c.a_by_seed.values())).pvalue for c in comparisons]
    assert [v.p_adjusted for v in verdicts] == pytest.approx(holm(raw)) and len(verdicts) == 6
    assert all("after Holm's correction for 6 comparisons" in v.sentence for v in verdicts)


def test_a_smallest_difference_that_matters_makes_equivalent_real_but_small_and_undecided_verdicts_tost():
    a = accs(0.005, 1)
    close = {s: a[s] + 0.001 + NOISE[0][s] / 4 for s in range(5)}
    (eq,) = compare([Comparison("a", a, "b", close)], seeds_run=range(5), min_effect=0.005)
    d = [close[s] - a[s] for s in range(5)]
    by_hand = max(
        scipy_stats.ttest_1samp(d, -0.005, alternative="greater").pvalue, scipy_stats.ttest_1samp(d, 0.005, alternative="less").pvalue
    )
    assert eq.tost_p == pytest.approx(by_hand) and by_hand < 0.05
    assert eq.sentence.startswith("real but smaller than what matters") or eq.sentence.startswith("no practical difference")
    # unpaired (Welch) TOST: the two one-sided Welch tests at the margin's shifts
    x, y = [0.60, 0.61, 0.605, 0.602], [0.603, 0.607, 0.601, 0.606]
    v = unpaired("a", x, "b", y, seeds_run=range(4), min_effect=0.01)
    welch = lambda shift, side: scipy_stats.ttest_ind([b - shift for b in y], x, equal_var=False, alternative=side).pvalue  # noqa: E731
    assert v.tost_p == pytest.approx(max(welch(-0.01, "greater"), welch(0.01, "less")))
    assert v.sentence.startswith("no practical difference at n=4+4: within +-1.00 points")
    noisy = unpaired("a", [0.60, 0.63, 0.58], "b", [0.60, 0.62, 0.595], seeds_run=range(3), min_effect=0.005)
    assert noisy.sentence.startswith("undecided at n=3+3") and "showing it within +-0.50 points would take about" in noisy.sentence


def test_the_best_of_four_settings_and_the_group_it_cannot_be_told_from(tmp_path):
    sweep = tmp_path / "sweep"
    write_runs(sweep, [(lr, seed, acc) for i, lr in enumerate(MEANS) for seed, acc in accs(lr, i).items()])
    md = report([str(sweep)], tmp_path / "report").read_text()
    assert "## Which setting is best?" in md
    mean = statistics.fmean(accs(0.005, 1).values())
    assert (f"optim.lr=0.005 has the highest mean ({100 * mean:.2f}%) but cannot be told apart from optim.lr=0.002 at these seeds: the best is one of "
            "{optim.lr=0.005, optim.lr=0.002}; it is better than optim.lr=0.001, optim.lr=0.01") in md  # fmt: skip
    # every pair tested and corrected together (the best is chosen by the data); the best one's rows read off
    by_lr = {lr: list(accs(lr, i).values()) for i, lr in enumerate(MEANS)}
    pairs = list(itertools.combinations(MEANS, 2))
    adjusted = dict(zip(pairs, holm([scipy_stats.ttest_rel(by_lr[y], by_lr[x]).pvalue for x, y in pairs]), strict=True))
    best_rows = md[md.index("## Which setting is best?") :]
    for pair, p_adjusted in adjusted.items():
        assert (f"{p_adjusted:.3g} after Holm's correction for 6 comparisons" in best_rows) == (0.005 in pair)
    assert "p (paired t)" in md and "## Image by image" not in md and "## The seeds as an ensemble" not in md  # no predictions kept


def test_the_best_settings_answer_prints_stored_values_as_text(tmp_path):
    # a run folder is data: a value edited by hand to hold a new line and an escape starts no line and moves no cursor
    odd = "0.5\n# not a heading \x1b[2J"
    runs = [(lr, seed, acc) for i, lr in enumerate(MEANS) for seed, acc in accs(lr, i).items()]
    runs = [(odd if lr == 0.005 else lr, seed, acc) for lr, seed, acc in runs]
    md = report([str(write_runs(tmp_path / "sweep", runs))], tmp_path / "r").read_text()
    (answer,) = [line for line in md.splitlines() if "has the highest mean" in line]
    assert "optim.lr=0.5\\n# not a heading \\x1b[2J has the highest mean" in answer
    assert "\x1b" not in md and not any(line.startswith("# not a heading") for line in md.splitlines())


def test_mcnemar_and_one_runs_interval_from_the_test_sets_size_are_scipys():
    a = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 1] * 100, bool)
    b = np.roll(a, 3)
    b[:40] = True
    t = mcnemar(a, b)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    assert (t.only_a, t.only_b) == (only_a, only_b)
    assert t.p == pytest.approx(scipy_stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    ci = scipy_stats.binomtest(6146, 10000).proportion_ci(0.95, method="exact")
    assert accuracy_interval(6146, 10000) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert mcnemar(a, a).p == 1.0


def test_the_seeds_as_an_ensemble_average_their_probabilities():
    labels = np.array([0, 1, 2, 0])
    p1 = np.array([[0.6, 0.4, 0], [0.6, 0.4, 0], [0.1, 0.1, 0.8], [0.2, 0.8, 0]])  # right on 0, 2: 50%
    p2 = np.array([[0.3, 0.7, 0], [0.0, 0.9, 0.1], [0.5, 0.0, 0.5], [0.9, 0.1, 0]])  # right on 1, 3 (image 2: argmax 0): 50%
    members = [Predictions(labels, p.argmax(1), p) for p in (p1, p2)]
    e = ensemble(members)
    mean = (p1 + p2) / 2  # [0.45, .55, 0] -> 1 wrong; [.3,.65,.05] -> 1 right; [.3,.05,.65] -> 2 right; [.55,.45,0] -> 0 right
    assert (e.members, e.mean_acc, e.acc) == (2, 0.5, pytest.approx((mean.argmax(1) == labels).mean())) and e.acc == 0.75
    assert e.agreement == pytest.approx((p1.argmax(1) == p2.argmax(1)).mean()) == 0


def write_runs(sweep, runs, predictions=None):
    """Run folders as a finished sweep leaves them: (lr, seed, test accuracy) each; `predictions`: a TestPredictions a
    run, written beside its summary."""
    for job, (lr, seed, acc) in enumerate(runs):
        run = sweep / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps({"epochs": 2, "seed": seed, "optim": {"lr": lr}}))
        (run / "summary.json").write_text(json.dumps({"status": "finished", "test_acc": acc, "train_seconds": 1.0, "data_id": "x"}))
        if predictions:
            write_predictions(predictions[job], run / FILE)
    return sweep


def random_predictions(rng, labels, skill):
    """A model right on about `skill` of the images, with probabilities whose argmax is its class."""
    predicted = np.where(rng.random(len(labels)) < skill, labels, rng.integers(0, 10, len(labels)))
    probabilities = rng.random((len(labels), 10)) * 0.5
    probabilities[np.arange(len(labels)), predicted] += 1
    return Predictions(labels, predicted, probabilities / probabilities.sum(1, keepdims=True))


def test_a_reports_ensemble_and_image_by_image_tables_from_kept_predictions(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    kept = [TestPredictions(random_predictions(rng, labels, skill), None) for skill in (0.6, 0.62, 0.7, 0.71)]
    accs_ = [p.plain.acc for p in kept]
    seeds = write_runs(tmp_path / "seeds", [(0.01, 0, accs_[0]), (0.01, 1, accs_[1]), (0.02, 0, accs_[2]), (0.02, 1, accs_[3])], kept)
    md = report([str(seeds)], tmp_path / "r1").read_text()
    e = ensemble([kept[2].plain, kept[3].plain])
    assert f"| optim.lr=0.02 | 2 | {100 * e.mean_acc:.2f}% | {100 * e.acc:.2f}% | {100 * (e.acc - e.mean_acc):+.2f} |" in md
    assert "## Image by image" not in md, "settings with seeds are judged over their seeds"

    single = write_runs(tmp_path / "single", [(0.01, 0, accs_[0]), (0.02, 0, accs_[2])], [kept[0], kept[2]])
    md = report([str(single)], tmp_path / "r2").read_text()
    t = mcnemar(kept[0].plain.right, kept[2].plain.right)
    low, high = accuracy_interval(int(kept[2].plain.right.sum()), 2000)
    (row,) = [
        line
        for line in md.splitlines()
        if line.startswith("| optim.lr=0.02 vs optim.lr=0.01 |") and "McNemar" not in line and "test set" in line
    ]
    assert f"optim.lr=0.02: {100 * accs_[2]:.2f}% ({100 * low:.2f}-{100 * high:.2f})" in row
    assert f"| {t.only_b} | {t.only_a} | these two models differ on this test set: optim.lr=0.02 is right on more" in row
    assert f"p={t.p:.3g}" in row and "the test set's sampling" in md
    # two single runs of other seeds too: still two models on one test set, each named with its seed
    other_seeds = write_runs(tmp_path / "other-seeds", [(0.01, 0, accs_[0]), (0.02, 1, accs_[2])], [kept[0], kept[2]])
    md = report([str(other_seeds)], tmp_path / "r3").read_text()
    assert f"| seed=1, optim.lr=0.02 vs seed=0, optim.lr=0.01 | seed=1, optim.lr=0.02: {100 * accs_[2]:.2f}%" in md


def test_old_run_folders_without_predictions_are_reported_as_before(tmp_path):
    old = write_runs(tmp_path / "old", [(0.01, 0, 0.6), (0.02, 0, 0.7)])
    md = report([str(old)], tmp_path / "r").read_text()
    assert "## Image by image" not in md and "## The seeds as an ensemble" not in md and "## Which setting is best?" not in md


def test_min_effect_is_given_in_points_and_a_wrong_one_is_one_line(tmp_path):
    sweep = write_runs(tmp_path / "sweep", [(lr, seed, acc) for i, lr in enumerate((0.01, 0.005)) for seed, acc in accs(lr, i).items()])
    run_script("-m", "cifar.results.report", str(sweep), "--min-effect", "0.5", "--out", str(tmp_path / "r"), cwd=tmp_path)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "real at n=5 paired by seed: optim.lr=0.005 is higher by 1.20 points" in md and "beyond the 0.50 points that matter" in md
    bad = run_script("-m", "cifar.results.report", str(sweep), "--min-effect", "-1", cwd=tmp_path, check=False)
    one_clear_line(bad, 2, "--min-effect -1.0: give the smallest difference that matters in points")
    assert not (sweep / "report").exists()


def test_the_studys_figure_is_judged_by_the_prediction_interval_for_one_run(tmp_path):
    from cifar.results.study import study_table

    row = {"row": 1, "label": "Net baseline", "study_acc": 0.6419, "epochs": None, "alone": "python train.py experiment=net_baseline"}
    values = [0.6146, 0.6190, 0.6120, 0.6170, 0.6160]
    for seed, acc in enumerate(values):
        run = tmp_path / "sweep" / str(seed)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps({"epochs": 10, "seed": seed, "study_rows": [row]}))
        (run / "summary.json").write_text(json.dumps({"status": "finished", "test_acc": acc, "train_seconds": 1.0}))
    half = scipy_stats.t.ppf(0.975, 4) * statistics.stdev(values) * math.sqrt(1 + 1 / 5)
    mean = statistics.fmean(values)
    assert spread(values).one_run() == (pytest.approx(mean - half), pytest.approx(mean + half))
    (line,) = [line for line in study_table(tmp_path / "sweep").splitlines() if line.startswith("| Net baseline |")]
    assert f"| **no** ({100 * (mean - half):.2f}-{100 * (mean + half):.2f}) |" in line


def test_runs_whose_configs_ask_for_different_precisions_are_not_warned_about(tmp_path):
    from cifar.results.runs import find_runs, mixed_fingerprints

    def run(name, model, precision, amp="auto"):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(json.dumps({"epochs": 1, "amp": amp, "model": {"_target_": model}}))
        (folder / "summary.json").write_text(json.dumps({"status": "finished", "test_acc": 0.5, "precision": precision}))

    run("net", "Net", "fp32")
    run("vgg", "VGG16", "bf16")  # amp=auto: bf16 where the step is large enough, as the study's rows ran
    assert mixed_fingerprints(find_runs([tmp_path])) is None
    run("vgg2", "VGG16", "fp32")  # the same config, another precision: that is a difference to warn of
    assert "precision (bf16, fp32)" in mixed_fingerprints(find_runs([tmp_path]))


def test_read_back_predictions_keep_what_was_written(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 50)
    kept = TestPredictions(random_predictions(rng, labels, 0.5), random_predictions(rng, labels, 0.6))
    write_predictions(kept, tmp_path / FILE)
    back = read_predictions(tmp_path / FILE)
    assert (back.plain.labels == labels).all() and (back.tta.predicted == kept.tta.predicted).all()
    assert np.allclose(back.plain.probabilities, kept.plain.probabilities, atol=1e-3)
