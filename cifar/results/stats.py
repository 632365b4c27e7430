"""Is a difference real? A figure over seeds as its mean with a Student's t interval (and the prediction interval for one
more run); two settings compared by their per-seed differences where they share seeds (paired t), by Welch's t-test
where not, the p-values of comparisons made together corrected by Holm's method, equivalence within a margin by two
one-sided tests (TOST); two models compared image by image (McNemar's exact test) and the seeds as an ensemble. Each in
one sentence a reader can act on; the numbers are scipy's.

Costs nothing worth stating: a few numbers per setting, and one pass over the test images x classes per run for the
per-image figures. The one approximation: the seeds a difference would need is the normal-theory sample size for a
two-sided test with 80% power at the 5% level (Bonferroni-corrected for a table's comparisons), from the spread seen
(the usual planning rule; it underestimates a little below ~10 seeds a setting).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifar.predictions import Predictions

LEVEL = 0.95  # every interval is a 95% one, every test at the 5% level
POWER = 0.80  # the chance a difference of the size seen would be told apart, for the seeds it would take


def _scipy():
    """scipy.stats, imported only when an interval or a test is computed (two seeds or more): a borrowed GPU machine has
    no scipy, so scripts/gpu_loan.sh brings the run folders back and their tables are made here. (cifar-study's table at
    the end of an `experiment=study` sweep over seeds computes intervals: it needs scipy where it runs.)"""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Spread:
    """One figure of one setting over its seeds."""

    n: int
    mean: float
    std: float | None  # None with one seed: no spread to estimate
    low: float | None  # the mean's 95% interval (Student's t, n - 1 degrees of freedom); None with one seed or identical values
    high: float | None

    def text(self, scale: float = 100, unit: str = "%") -> str:
        """`61.46% ± 0.52 (n=3, 95% CI 60.17-62.75)`; `61.46% (n=1)` for one seed; `61.46% (n=3, all identical)`."""
        if self.std is None:
            return f"{scale * self.mean:.2f}{unit} (n=1)"
        if self.low is None:
            return f"{scale * self.mean:.2f}{unit} (n={self.n}, all identical)"
        return f"{scale * self.mean:.2f}{unit} ± {scale * self.std:.2f} (n={self.n}, 95% CI {scale * self.low:.2f}-{scale * self.high:.2f})"

    def one_run(self) -> tuple[float, float] | None:
        """The 95% prediction interval for one more run of this setting, from these seeds' spread: where a
        single run such as the study's falls 95% of the time, mean +- t_(n-1) s sqrt(1 + 1/n). Wider than the mean's
        interval by sqrt(n + 1). None with one seed or identical values."""
        if self.low is None:
            return None
        half = _scipy().t.ppf((1 + LEVEL) / 2, self.n - 1) * self.std * math.sqrt(1 + 1 / self.n)
        return self.mean - half, self.mean + half


def spread(values: list[float]) -> Spread:
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Spread(n, mean, None, None, None)
    if identical(values):  # no spread seen is no estimate of it: an interval of width 0 would claim the mean exact
        return Spread(n, mean, 0.0, None, None)
    std = statistics.stdev(values)
    half = _scipy().t.ppf((1 + LEVEL) / 2, n - 1) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def identical(values: list[float]) -> bool:
    """Every value the same: zero spread, exactly. (numpy's variance of such values is rounding, ~1e-32, not 0, and a
    t-test divides by it: a p of 3.85e-32 for 30% against 70% on three identical seeds each.)"""
    return len(set(values)) == 1


@dataclass(frozen=True)
class Verdict:
    """Setting b against setting a on one figure."""

    a: str
    b: str
    diff: float  # mean of b minus mean of a
    low: float | None  # its 95% interval (paired t, or Welch's); None when a setting has one seed
    high: float | None
    p: float | None  # the two-sided p-value (paired t, or Welch's)
    seeds_needed: int | None  # seeds a setting to tell a difference of this size (80% power, 5% level, corrected)
    sentence: str
    paired: int | None = None  # the seeds the test paired (both settings ran them); None: Welch's, unpaired
    unpaired_width: float | None = None  # Welch's interval's width on the same runs, where paired: what pairing bought
    p_adjusted: float | None = None  # Holm's adjusted p over the comparisons made together; None alone
    tost_p: float | None = None  # with a smallest difference that matters: the two one-sided tests' p (equivalence)


@dataclass(frozen=True)
class Comparison:
    """Setting b against setting a: each one's finished runs' figures by seed, and how many runs each had (finished or
    not)."""

    a: str
    a_by_seed: dict[Any, float]
    b: str
    b_by_seed: dict[Any, float]
    ran: tuple[int, int] | None = None

    def shared(self) -> list:
        """The seeds both settings finished: those a paired test pairs."""
        return [seed for seed in self.a_by_seed if seed in self.b_by_seed]


@dataclass(frozen=True)
class _Tested:
    """A comparison's test, before its family's correction."""

    diff: float
    low: float
    high: float
    p: float
    variance: float  # what the seeds needed are planned from: the paired differences' variance, or twice the mean variance
    paired: int | None
    unpaired_width: float | None
    tost_p: float | None


def compare(comparisons: list[Comparison], *, seeds_run: Collection[Any], min_effect: float | None = None) -> list[Verdict]:
    """Each comparison's verdict, the p-values corrected together (Holm's method: k settings compared pairwise make
    k(k-1)/2 tests, and one of them is "real" at 5% by chance far more often than 5%).

    Settings that share enough seeds (`pairs`: three or more, at least half of each one's) are compared by their per-seed
    differences (paired t: the same seed means the same initialisation, split and batch order, so the differences vary
    far less than the figures), on the seeds both finished; others by Welch's t-test. The verdict says which, and with pairing how wide Welch's interval was.
    `min_effect`: the smallest difference that matters (a fraction, as the figures): two settings whose 90% interval lies
    inside +-min_effect are equivalent (two one-sided tests at 5%, TOST). `seeds_run`: every seed the sweep has, so that
    advice to add seeds names new ones."""
    tested = [_test(c, min_effect) for c in comparisons]
    raw = [t.p for t in tested if isinstance(t, _Tested)]
    adjusted = iter(holm(raw))
    family = len(raw)
    verdicts = []
    for c, t in zip(comparisons, tested, strict=True):
        if isinstance(t, _Tested):
            verdicts.append(_judged(c, t, next(adjusted) if family > 1 else None, family, min_effect))
        else:
            verdicts.append(_untested(c, t, seeds_run))
    return verdicts


PAIRED_AT_LEAST = 3  # shared seeds a paired test needs: with 2, its one degree of freedom gives an interval wider than Welch's


def pairs(c: Comparison) -> list | None:
    """The seeds a paired test pairs: those both settings finished, when they are three or more and at least half of each
    setting's seeds (pairing two of ten seeds would throw the other eight away); else None (Welch's, unpaired)."""
    shared = c.shared()
    most = len(shared) * 2 >= max(len(c.a_by_seed), len(c.b_by_seed))
    return shared if len(shared) >= PAIRED_AT_LEAST and most else None


def _test(c: Comparison, min_effect: float | None) -> _Tested | str:
    """The test's numbers, or why there is none: "few" (a setting with one finished seed), "identical" (every figure of
    each setting the same) or "same_difference" (paired, every seed's difference the same: zero spread)."""
    a_values, b_values = list(c.a_by_seed.values()), list(c.b_by_seed.values())
    if min(len(a_values), len(b_values)) < 2:
        return "few"
    if identical(a_values) and identical(b_values):  # no spread at all: the t statistic divides by zero
        return "identical"
    stats = _scipy()
    if shared := pairs(c):
        differences = [c.b_by_seed[seed] - c.a_by_seed[seed] for seed in shared]
        if identical([round(d, 12) for d in differences]):  # k/10000 - j/10000 is not the same float for every k - j alike
            return "same_difference"
        result = stats.ttest_1samp(differences, 0.0)
        ci = result.confidence_interval(LEVEL)
        tost = _tost(lambda shift, side: stats.ttest_1samp(differences, shift, alternative=side).pvalue, min_effect)
        # what Welch's test would have made of the same runs, unpaired
        welch = stats.ttest_ind([c.b_by_seed[s] for s in shared], [c.a_by_seed[s] for s in shared], equal_var=False).confidence_interval(
            LEVEL
        )
        return _Tested(statistics.fmean(differences), ci.low, ci.high, result.pvalue, statistics.variance(differences), len(shared),
                       welch.high - welch.low, tost)  # fmt: skip
    welch = stats.ttest_ind(b_values, a_values, equal_var=False)
    ci = welch.confidence_interval(LEVEL)
    tost = _tost(
        lambda shift, side: stats.ttest_ind([v - shift for v in b_values], a_values, equal_var=False, alternative=side).pvalue, min_effect
    )
    variance = statistics.variance(a_values) + statistics.variance(b_values)  # of a difference of one run each
    diff = statistics.fmean(b_values) - statistics.fmean(a_values)
    return _Tested(diff, ci.low, ci.high, welch.pvalue, variance, None, None, tost)


def _tost(p_of, min_effect: float | None) -> float | None:
    """The two one-sided tests' p: the larger of "the difference is above -min_effect" and "below +min_effect"."""
    if not min_effect:
        return None
    return max(p_of(-min_effect, "greater"), p_of(min_effect, "less"))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest times (m - i + 1), never below an
    earlier one's, at most 1. Controls the chance of any false "real" among the m tests at 5%, whatever their
    dependence."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _judged(c: Comparison, t: _Tested, p_adjusted: float | None, family: int, min_effect: float | None) -> Verdict:
    """The sentence for a tested comparison: real, equivalent, or within the noise (and what deciding would take)."""
    points = f"{100 * abs(t.diff):.2f} points"
    higher = c.b if t.diff > 0 else c.a
    n = f"n={t.paired} paired by seed" if t.paired else f"n={len(c.a_by_seed)}+{len(c.b_by_seed)}"
    p = f"p={t.p:.3g}" + (f", {p_adjusted:.3g} after Holm's correction for {family} comparisons" if p_adjusted is not None else "")
    decided_p = t.p if p_adjusted is None else p_adjusted
    needed = seeds_needed(t.diff, t.variance, family)
    margin = f"+-{100 * min_effect:.2f} points" if min_effect else ""
    equivalent = t.tost_p is not None and t.tost_p < 1 - LEVEL
    if decided_p < 1 - LEVEL and equivalent:
        sentence = (
            f"real but smaller than what matters at {n}: {higher} is higher by {points} ({p}), inside {margin} (TOST p={t.tost_p:.3g})"
        )
    elif decided_p < 1 - LEVEL:
        sentence = f"real at {n}: {higher} is higher by {points}, {p}"
        if min_effect:  # its interval wholly beyond the margin, or reaching inside it
            beyond = t.low > min_effect or t.high < -min_effect
            sentence += f"; {'beyond' if beyond else 'whether it reaches'} the {100 * min_effect:.2f} points that matter" + (
                "" if beyond else " is undecided"
            )
    elif equivalent:
        sentence = f"no practical difference at {n}: within {margin} (TOST p={t.tost_p:.3g}; {p})"
    elif min_effect:
        sentence = f"undecided at {n} ({p}; TOST p={t.tost_p:.3g}): " + _what_deciding_takes(t, needed, min_effect, points)
    elif needed is None:
        sentence = f"within the noise at {n} ({p}): the means agree"
    else:
        sentence = f"within the noise at {n} ({p}): telling a {points} difference apart would take about {needed} seeds a setting"
    if t.paired:
        sentence += f"; pairing by seed: interval {100 * (t.high - t.low):.2f} points wide, {100 * t.unpaired_width:.2f} unpaired"
    return Verdict(c.a, c.b, t.diff, t.low, t.high, t.p, needed, sentence, t.paired, t.unpaired_width, p_adjusted, t.tost_p)


def _what_deciding_takes(t: _Tested, needed: int | None, min_effect: float, points: str) -> str:
    """Seeds a setting to tell the difference apart, and to show it smaller than min_effect, at the spread seen."""
    apart = f"telling a {points} difference apart would take about {needed} seeds a setting" if needed else "the means agree"
    if abs(t.diff) >= min_effect:
        return f"{apart}; the difference seen is at least the {100 * min_effect:.2f} points that matter, so more seeds would not show equivalence"
    z = _scipy().norm.ppf(LEVEL) + _scipy().norm.ppf(POWER)  # one-sided tests at 5% each
    equal = max(2, math.ceil(z**2 * t.variance / (min_effect - abs(t.diff)) ** 2))
    return f"{apart}; showing it within +-{100 * min_effect:.2f} points would take about {equal}"


def _untested(c: Comparison, why: str, seeds_run: Collection[Any]) -> Verdict:
    """A comparison no t-test can judge: a setting with one finished seed, or figures without spread."""
    a_values, b_values = list(c.a_by_seed.values()), list(c.b_by_seed.values())
    if why == "same_difference":  # the difference of the seeds paired, the same on each
        diff = statistics.fmean(c.b_by_seed[seed] - c.a_by_seed[seed] for seed in pairs(c))
    else:
        diff = statistics.fmean(b_values) - statistics.fmean(a_values)
    points = f"{100 * abs(diff):.2f} points"
    higher = c.b if diff > 0 else c.a
    if why == "few":
        tried = dict(zip((c.a, c.b), c.ran or (len(a_values), len(b_values)), strict=True))
        sentence = too_few_seeds({c.a: a_values, c.b: b_values}, tried, seeds_run, points)
    elif why == "same_difference":
        sentence = f"no test: every seed both ran differs by exactly {100 * diff:+.2f} points (zero spread of the paired differences)"
    elif diff == 0:
        sentence = f"identical runs: every seed of both settings gave {100 * statistics.fmean(a_values):.2f}%"
    else:
        sentence = f"no test: each setting's seeds gave identical figures (zero spread); {higher} is higher by {points} on every seed"
    return Verdict(c.a, c.b, diff, None, None, None, None, sentence)


SEEDS_ADVISED = 3  # finished seeds a setting that the advice aims at: two show a spread, a third a first check of it


def too_few_seeds(values: dict[str, list[float]], ran: dict[str, int], seeds_run: Collection[Any], points: str) -> str:
    """Why no verdict is possible, counting the seeds that finished, and which seeds to run next: ones the sweep does not
    have yet (running its own seeds again would repeat, or keep, what it has)."""
    short = {name: len(finished) for name, finished in values.items() if len(finished) < 2}
    has = " and ".join(
        f"{name} has one seed" if ran[name] == 1 else f"{name} has one finished seed of the {ran[name]} it ran" for name in short
    )
    taken = set(seeds_run)
    new = itertools.islice((seed for seed in itertools.count() if seed not in taken), SEEDS_ADVISED - min(short.values()))
    return (f"no verdict possible: {has}, and one run cannot show the noise (run seed={','.join(map(str, new))} too, to tell "
            f"a {points} difference from it)")  # fmt: skip


def seeds_needed(diff: float, variance: float, family: int = 1) -> int | None:
    """Seeds a setting for a two-sided test at 5% (Bonferroni-corrected for a family of comparisons: conservative for
    Holm's) to see a difference of `diff` with 80% power, given `variance`, that of a difference of one run each:
    (z_(1-0.05/2m) + z_0.8)^2 variance / diff^2, with variance the paired differences' own, or the two settings'
    variances summed (2 s^2 for equal spreads: the usual 2 z^2 s^2 / d^2). None for no difference at all."""
    if diff == 0:
        return None
    z = _scipy().norm.ppf(1 - (1 - LEVEL) / 2 / family) + _scipy().norm.ppf(POWER)
    return max(2, math.ceil(z**2 * variance / diff**2))


@dataclass(frozen=True)
class ImageByImage:
    """Two models' predictions on the same test images: where one is right and the other wrong, and McNemar's exact test."""

    only_a: int  # images a gets right and b wrong
    only_b: int  # and the reverse
    p: float  # McNemar's exact two-sided p: how surprising so uneven a split of the discordant images is, were both equally good


def mcnemar(a_right: Sequence[bool], b_right: Sequence[bool]) -> ImageByImage:
    """McNemar's exact test on the images exactly one of two models gets right (a binomial test of those at one half:
    scipy's binomtest). It asks whether the two models differ on this test set, not whether their training
    recipes differ: a second seed of either would move its predictions more than many such tests can see."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    if a_right.shape != b_right.shape:
        raise ValueError(f"McNemar's test pairs images: {len(a_right)} against {len(b_right)}")
    only_a, only_b = int(np.count_nonzero(a_right & ~b_right)), int(np.count_nonzero(b_right & ~a_right))
    p = _scipy().binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return ImageByImage(only_a, only_b, float(p))


def accuracy_interval(right: int, images: int) -> tuple[float, float]:
    """One model's accuracy on `images` test images, as an interval from the test set's size alone (Clopper-Pearson's
    exact 95% binomial interval): how far another draw of as many images could move it, not another training run."""
    ci = _scipy().binomtest(right, images).proportion_ci(LEVEL, method="exact")
    return ci.low, ci.high


@dataclass(frozen=True)
class Ensemble:
    """A setting's seeds as one model: the mean of their probabilities (after Jordan, "Calibrated chaos", ICLR 2024)."""

    members: int
    mean_acc: float  # the seeds' own test accuracies, averaged
    acc: float  # the ensemble's: each image's class the one of highest mean probability
    agreement: float  # the share of test images two of the seeds give the same class, averaged over every pair
    agreement_range: tuple[float, float]  # its lowest and highest pair


def ensemble(members: Sequence[Predictions]) -> Ensemble:
    """The ensemble of runs on one test set (their labels the same, checked by the caller). Costs one pass over
    images x classes per member and one per pair."""
    labels = members[0].labels
    mean = np.mean([m.probabilities for m in members], axis=0)
    pairs = [float((x.predicted == y.predicted).mean()) for x, y in itertools.combinations(members, 2)]
    return Ensemble(
        len(members),
        statistics.fmean(m.acc for m in members),
        float((mean.argmax(1) == labels).mean()),
        statistics.fmean(pairs),
        (min(pairs), max(pairs)),
    )
