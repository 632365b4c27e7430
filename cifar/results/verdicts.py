"""The report's verdicts on test accuracy: is a difference between two settings real (over seeds, paired by seed where
they share them), which setting is best, the seeds as an ensemble, and two single runs image by image (McNemar).

Each function gives a table (header, rows) or None where it does not apply, so that a report of runs it says nothing
new about is the report it was. The numbers are cifar/results/stats.py's (scipy's).
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from typing import Any

import numpy as np

from cifar.results.runs import Run, fmt_value, sort_key
from cifar.results.stats import LEVEL, Comparison, Verdict, accuracy_interval, compare, ensemble, holm, mcnemar

Table = tuple[list[str], list[list[str]]]


def settings(runs: list[Run], keys: list[str], finished: bool = True) -> dict[tuple, list[Run]]:
    """The finished runs (every run with `finished` False) grouped by their values of the swept keys other than `seed`:
    a setting and its seeds."""
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.finished or not finished:
            groups[tuple(fmt_value(run.get(k)) for k in others)].append(run)
    return groups


def setting_name(keys: list[str], setting: tuple) -> str:
    """`optim.lr=0.01, model=net`: a setting by its swept values."""
    return ", ".join(f"{k}={v}" for k, v in zip([k for k in keys if k != "seed"], setting, strict=True)) or "all"


def accuracies(runs: list[Run], keys: list[str]) -> dict[tuple, dict[Any, float]]:
    """Each setting's finished runs' test accuracy by seed, in the settings' order; settings with none left out. A
    setting whose runs do not each have a seed of their own (runs of two sweeps with the same seeds, runs from before
    seeds were kept) is keyed by run folder: its runs are all counted, and never paired."""
    groups = {}
    for setting, members in settings(runs, keys).items():
        tested = [(run, acc) for run in members if (acc := run.summary_value("test_acc")) is not None]
        seeds = [run.get("seed") for run, _ in tested]
        own_seeds = None not in seeds and len(set(map(repr, seeds))) == len(seeds)
        groups[setting] = {(run.get("seed") if own_seeds else ("run", str(run.folder))): acc for run, acc in tested}
    return {setting: groups[setting] for setting in sorted(groups, key=lambda s: [sort_key(v) for v in s]) if groups[setting]}


def _cells(v: Verdict) -> list[str]:
    return [
        f"{100 * v.diff:+.2f}",
        "-" if v.low is None else f"{100 * v.low:+.2f} to {100 * v.high:+.2f}",
        "-" if v.p is None else f"{v.p:.3g}",
        v.sentence,
    ]


def _p_header(verdicts: list[Verdict]) -> str:
    """The p column's name: the test every verdict used, or both."""
    kinds = {"paired t" if v.paired else "Welch" for v in verdicts if v.p is not None}
    return f"p ({kinds.pop()})" if len(kinds) == 1 else "p (paired t or Welch: see the verdict)" if kinds else "p (Welch)"


def verdicts_table(runs: list[Run], keys: list[str], min_effect: float | None = None) -> Table | None:
    """Every pair of settings that differ in one swept key, on test accuracy: the difference with its 95% interval, the
    p-value (paired by seed where the settings share seeds, Welch's otherwise; Holm-corrected together in the verdict
    when there are several) and the verdict."""
    others = [k for k in keys if k != "seed"]
    groups = accuracies(runs, keys)
    if len(groups) < 2 or not others:
        return None
    ran = {setting: len(members) for setting, members in settings(runs, keys, finished=False).items()}  # diverged ones too
    pairs = [(a, b) for a, b in itertools.combinations(groups, 2) if sum(x != y for x, y in zip(a, b, strict=True)) == 1]
    comparisons = [Comparison(setting_name(keys, a), groups[a], setting_name(keys, b), groups[b], (ran[a], ran[b])) for a, b in pairs]
    verdicts = compare(comparisons, seeds_run={run.get("seed") for run in runs}, min_effect=min_effect)
    rows = [[f"{v.b} vs {v.a}", *_cells(v)] for v in verdicts]
    return ["comparison", "test acc difference (points)", "95% CI", _p_header(verdicts), "verdict"], rows


def best_setting(runs: list[Run], keys: list[str], min_effect: float | None = None) -> tuple[str, Table] | None:
    """The question a sweep of three settings or more is run for: is the best setting (highest mean test accuracy) better
    than each of the others, or one of a group that cannot be told apart? Every pair of settings is tested and
    Holm-corrected together (the best is chosen by the data, so correcting over its own comparisons only would claim too
    much), and the best one's rows are read off. The answer as a sentence, and its comparisons as a table; None with
    fewer than three settings, or one seed a setting."""
    groups = accuracies(runs, keys)
    if len(groups) < 3 or any(len(by_seed) < 2 for by_seed in groups.values()):
        return None
    best = max(groups, key=lambda s: statistics.fmean(groups[s].values()))
    ordered = [s for s in groups if s != best] + [best]  # the best last: each of its comparisons is best against the other
    comparisons = [
        Comparison(setting_name(keys, a), groups[a], setting_name(keys, b), groups[b]) for a, b in itertools.combinations(ordered, 2)
    ]
    name = setting_name(keys, best)
    verdicts = [v for v in compare(comparisons, seeds_run={run.get("seed") for run in runs}, min_effect=min_effect) if v.b == name]
    beaten = [v.a for v in verdicts if v.p is not None and v.diff > 0 and v.p_adjusted < 1 - LEVEL]
    tied = [v.a for v in verdicts if v.a not in beaten]
    mean = f"{100 * statistics.fmean(groups[best].values()):.2f}%"
    if not tied:
        answer = f"{name} is best ({mean}): better than each of the other {len(tied) + len(beaten)}, after Holm's correction"
    else:
        answer = (f"{name} has the highest mean ({mean}) but cannot be told apart from {', '.join(tied)} at these seeds: the best is "
                  f"one of {{{', '.join([name, *tied])}}}" + (f"; it is better than {', '.join(beaten)}" if beaten else ""))  # fmt: skip
    rows = [[f"{v.b} vs {v.a}", *_cells(v)] for v in verdicts]
    return answer, (["comparison", "test acc difference (points)", "95% CI", _p_header(verdicts), "verdict"], rows)


def kept_predictions(members: list[Run]) -> list[Run]:
    """The runs of `members` whose predictions were kept, of one test set (the first one's labels and data copy)."""
    kept = [run for run in members if run.predictions is not None]
    if not kept:
        return []
    first = kept[0]
    return [
        run for run in kept
        if run.summary_value("data_id") == first.summary_value("data_id") and np.array_equal(run.predictions.plain.labels, first.predictions.plain.labels)
    ]  # fmt: skip


def ensemble_table(runs: list[Run], keys: list[str]) -> Table | None:
    """Each setting's seeds as an ensemble (the mean of their probabilities) beside their mean, and how often two of
    them agree, for settings with two seeds or more whose predictions were kept; None where none has."""
    rows = []
    for setting, members in settings(runs, keys).items():
        if len(kept := kept_predictions(members)) < 2:
            continue
        e = ensemble([run.predictions.plain for run in kept])
        rows.append([
            setting_name(keys, setting), str(e.members),
            f"{100 * e.mean_acc:.2f}%", f"{100 * e.acc:.2f}%", f"{100 * (e.acc - e.mean_acc):+.2f}",
            f"{100 * e.agreement:.2f}% ({100 * e.agreement_range[0]:.2f}-{100 * e.agreement_range[1]:.2f})",
        ])  # fmt: skip
    if not rows:
        return None
    header = ["setting", "seeds", "mean of the seeds", "the seeds as an ensemble", "gain (points)", "two seeds agree on (range)"]
    return header, rows


def image_table(runs: list[Run], keys: list[str]) -> Table | None:
    """Settings of one finished run each, compared image by image on the test set (McNemar's exact test, Holm-corrected
    together), each run's accuracy with its interval from the test set's size. None where a setting has several seeds
    (the verdicts over seeds answer the question a recipe's user asks) or no predictions were kept."""
    groups = settings(runs, keys)
    if any(len(members) > 1 for members in groups.values()):
        return None
    single = {setting: members[0] for setting, members in groups.items() if members[0].predictions}
    ordered = sorted(single, key=lambda s: [sort_key(v) for v in s])
    pairs = [(a, b) for a, b in itertools.combinations(ordered, 2) if kept_predictions([single[a], single[b]]) == [single[a], single[b]]]
    if not pairs:
        return None
    tests = [mcnemar(single[a].predictions.plain.right, single[b].predictions.plain.right) for a, b in pairs]
    adjusted = holm([t.p for t in tests]) if len(tests) > 1 else [None] * len(tests)
    rows = []
    for (a, b), test, p_adjusted in zip(pairs, tests, adjusted, strict=True):
        name_a, name_b = (", ".join(f"{k}={fmt_value(single[s].get(k))}" for k in keys) for s in (a, b))  # its seed too, if any
        p = f"p={test.p:.3g}" + (f", {p_adjusted:.3g} after Holm's correction for {len(tests)}" if p_adjusted is not None else "")
        decided = test.p if p_adjusted is None else p_adjusted
        better = name_b if test.only_b > test.only_a else name_a
        sentence = (f"these two models differ on this test set: {better} is right on more of the images they disagree on ({p})"
                    if decided < 1 - LEVEL else f"these two models cannot be told apart on this test set ({p})")  # fmt: skip
        accs = f"{name_b}: {_with_interval(single[b])}; {name_a}: {_with_interval(single[a])}"
        rows.append([f"{name_b} vs {name_a}", accs, str(test.only_b), str(test.only_a), sentence])
    header = [
        "comparison",
        "test acc (95% CI from the test set's size)",
        "only the first right",
        "only the second right",
        "McNemar's exact test",
    ]
    return header, rows


def _with_interval(run: Run) -> str:
    """`61.46% (60.49-62.41)`: a run's test accuracy and its interval from the test set's size."""
    right = run.predictions.plain.right
    low, high = accuracy_interval(int(right.sum()), len(right))
    return f"{100 * right.mean():.2f}% ({100 * low:.2f}-{100 * high:.2f})"
