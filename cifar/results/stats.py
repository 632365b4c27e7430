"""Is a difference real? A figure over seeds as its mean with a Student's t interval, and two settings compared with
Welch's t-test (scipy's), in one sentence a reader can act on.

Costs nothing worth stating: a few numbers per setting. The one approximation: the seeds a difference would need is
the normal-theory sample size for a two-sided test at 5% with 80% power, from the spread seen (the usual planning rule;
it underestimates a little below ~10 seeds a setting).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

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
    low: float | None  # the mean's 95% interval (Student's t, n - 1 degrees of freedom); None with one seed
    high: float | None

    def text(self, scale: float = 100, unit: str = "%") -> str:
        """`61.46% ± 0.52 (n=3, 95% CI 60.17-62.75)`; `61.46% (n=1)` for one seed."""
        if self.std is None:
            return f"{scale * self.mean:.2f}{unit} (n=1)"
        return f"{scale * self.mean:.2f}{unit} ± {scale * self.std:.2f} (n={self.n}, 95% CI {scale * self.low:.2f}-{scale * self.high:.2f})"

    def holds(self, value: float) -> bool | None:
        """Whether `value` falls in the interval (None with one seed: no interval)."""
        return None if self.low is None else self.low <= value <= self.high


def spread(values: list[float]) -> Spread:
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Spread(n, mean, None, None, None)
    std = statistics.stdev(values)
    half = _scipy().t.ppf((1 + LEVEL) / 2, n - 1) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


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


def compare(a: str, a_values: list[float], b: str, b_values: list[float]) -> Verdict:
    """Welch's t-test of b against a (unequal variances, as two settings' spreads need not agree), its interval for the
    difference, and the sentence: real at this n, within the noise (and what it would take), or no verdict possible."""
    diff = statistics.fmean(b_values) - statistics.fmean(a_values)
    points = f"{100 * abs(diff):.2f} points"
    if min(len(a_values), len(b_values)) < 2:
        one = a if len(a_values) < 2 else b
        return Verdict(a, b, diff, None, None, None, None,
                       f"no verdict possible: {one} has one seed, and one run cannot show the noise "
                       f"(add seed=0,1,2 to the sweep to tell a {points} difference from it)")  # fmt: skip
    result = _scipy().ttest_ind(b_values, a_values, equal_var=False)
    interval = result.confidence_interval(LEVEL)
    needed = seeds_needed(diff, a_values, b_values)
    n = f"n={len(a_values)}+{len(b_values)}"
    if result.pvalue < 1 - LEVEL:
        higher = b if diff > 0 else a
        sentence = f"real at {n}: {higher} is higher by {points}, p={result.pvalue:.3g}"
    elif needed is None:
        sentence = f"within the noise at {n} (p={result.pvalue:.3g}): the means agree"
    else:
        sentence = (f"within the noise at {n} (p={result.pvalue:.3g}): telling a {points} difference apart would take "
                    f"about {needed} seeds a setting")  # fmt: skip
    return Verdict(a, b, diff, interval.low, interval.high, result.pvalue, needed, sentence)


def seeds_needed(diff: float, a_values: list[float], b_values: list[float]) -> int | None:
    """Seeds a setting for a two-sided test at 5% to see a difference of `diff` with 80% power, given the spreads seen:
    2 (z_0.975 + z_0.8)^2 s^2 / diff^2 with s^2 the two variances' mean. None for no difference at all."""
    if diff == 0:
        return None
    variance = (statistics.variance(a_values) + statistics.variance(b_values)) / 2
    z = _scipy().norm.ppf((1 + LEVEL) / 2) + _scipy().norm.ppf(POWER)
    return max(2, math.ceil(2 * z**2 * variance / diff**2))
