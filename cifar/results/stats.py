"""Is a difference real? A figure over seeds as its mean with a Student's t interval, and two settings compared with
Welch's t-test (scipy's), in one sentence a reader can act on.

Costs nothing worth stating: a few numbers per setting. The one approximation: the seeds a difference would need is
the normal-theory sample size for a two-sided test at 5% with 80% power, from the spread seen (the usual planning rule;
it underestimates a little below ~10 seeds a setting).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

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

    def holds(self, value: float) -> bool | None:
        """Whether `value` falls in the interval (None with one seed or identical values: no interval)."""
        return None if self.low is None else self.low <= value <= self.high


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
    low: float | None  # its 95% interval (Welch); None when a setting has one seed
    high: float | None
    p: float | None  # Welch's two-sided p-value
    seeds_needed: int | None  # seeds a setting to tell a difference of this size (80% power, 5% level)
    sentence: str


def compare(
    a: str, a_values: list[float], b: str, b_values: list[float], *, seeds_run: Collection[Any], ran: tuple[int, int] | None = None
) -> Verdict:
    """Welch's t-test of b against a (unequal variances, as two settings' spreads need not agree), its interval for the
    difference, and the sentence: real at this n, within the noise (and what it would take), or no verdict possible.
    `a_values` and `b_values` are the finished runs' figures; `ran`, how many runs each setting had, finished or not;
    `seeds_run`, every seed the sweep has, so that advice to add seeds names new ones."""
    diff = statistics.fmean(b_values) - statistics.fmean(a_values)
    points = f"{100 * abs(diff):.2f} points"
    higher = b if diff > 0 else a
    if min(len(a_values), len(b_values)) < 2:
        tried = dict(zip((a, b), ran or (len(a_values), len(b_values)), strict=True))
        return Verdict(a, b, diff, None, None, None, None, too_few_seeds({a: a_values, b: b_values}, tried, seeds_run, points))
    if identical(a_values) and identical(b_values):  # no spread at all: the t statistic divides by zero
        same = f"identical runs: every seed of both settings gave {100 * statistics.fmean(a_values):.2f}%"
        apart = f"no test: each setting's seeds gave identical figures (zero spread); {higher} is higher by {points} on every seed"
        sentence = same if diff == 0 else apart
        return Verdict(a, b, diff, None, None, None, None, sentence)
    result = _scipy().ttest_ind(b_values, a_values, equal_var=False)
    interval = result.confidence_interval(LEVEL)
    needed = seeds_needed(diff, a_values, b_values)
    n = f"n={len(a_values)}+{len(b_values)}"
    if result.pvalue < 1 - LEVEL:
        sentence = f"real at {n}: {higher} is higher by {points}, p={result.pvalue:.3g}"
    elif needed is None:
        sentence = f"within the noise at {n} (p={result.pvalue:.3g}): the means agree"
    else:
        sentence = (f"within the noise at {n} (p={result.pvalue:.3g}): telling a {points} difference apart would take "
                    f"about {needed} seeds a setting")  # fmt: skip
    return Verdict(a, b, diff, interval.low, interval.high, result.pvalue, needed, sentence)


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


def seeds_needed(diff: float, a_values: list[float], b_values: list[float]) -> int | None:
    """Seeds a setting for a two-sided test at 5% to see a difference of `diff` with 80% power, given the spreads seen:
    2 (z_0.975 + z_0.8)^2 s^2 / diff^2 with s^2 the two variances' mean. None for no difference at all."""
    if diff == 0:
        return None
    variance = (statistics.variance(a_values) + statistics.variance(b_values)) / 2
    z = _scipy().norm.ppf((1 + LEVEL) / 2) + _scipy().norm.ppf(POWER)
    return max(2, math.ceil(2 * z**2 * variance / diff**2))
