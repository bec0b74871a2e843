"""Statistics over a cell's repeats: spread, confidence intervals, and whether two platforms
differ, with scipy.stats doing the tests.

- ``describe``: n, mean, std (sample, ddof 1), min, median, max, coefficient of variation, and
  a 95% Student-t interval of the mean; for train time also MLPerf's aggregate, the mean
  without the fastest and the slowest run (n >= 5).
- ``compare_times``: the ratio of two platforms' train times with a 95% interval, from Welch's
  t on log times (the ratio of geometric means; times are positive and their noise is
  multiplicative), its p-value for "same time", and a verdict that names a platform faster only
  when the interval excludes 1.
- ``compare_spread``: which platform ran more consistently: the CVs and the Brown-Forsythe
  test of equal variances (Levene's test about the median) on log times, so the test asks about
  relative spread, as the CV does.
- ``compare_means``: a difference of means (accuracy) with its Welch interval and p-value.

With n = 1 on either side there is no spread: the functions say so rather than guess.

A comparison's verdict is a ``Verdict`` value, never text: the report turns it into words.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# MLPerf Training drops the fastest and the slowest of its runs once there are this many.
TRIM_FROM = 5


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None
    min: float
    median: float
    max: float
    cv: float | None  # std / mean
    ci_low: float | None
    ci_high: float | None
    trimmed_mean: float | None  # without the min and max run, n >= TRIM_FROM

    def as_columns(self, metric: str) -> dict[str, float | int | None]:
        values = dataclasses.asdict(self)
        return {f"{metric}_{key}": value for key, value in values.items() if key != "n"}


def describe(values: Sequence[float]) -> Summary | None:
    """The spread of one cell's runs (NaN values left out); None without any value."""
    data = _finite(values)
    n = len(data)
    if n == 0:
        return None
    mean = float(data.mean())
    std = float(data.std(ddof=1)) if n > 1 else None
    low = high = None
    if std is not None:
        half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    trimmed = float(np.sort(data)[1:-1].mean()) if n >= TRIM_FROM else None
    return Summary(
        n=n,
        mean=mean,
        std=std,
        min=float(data.min()),
        median=float(np.median(data)),
        max=float(data.max()),
        cv=std / mean if std is not None and mean != 0 else None,
        ci_low=low,
        ci_high=high,
        trimmed_mean=trimmed,
    )


class Verdict(enum.Enum):
    """What a test of two platforms, a and b (in the order they were given), found."""

    A = enum.auto()  # platform a: faster, more consistent or higher, as the test asked
    B = enum.auto()  # platform b: the same for b
    NO_DIFFERENCE = enum.auto()  # tested, and the data cannot tell the platforms apart
    NOT_TESTABLE = enum.auto()  # no spread to test with: a single run or cell, too few runs

    def platform(self, names: tuple[str, str]) -> str | None:
        """The platform this verdict names, None when it names none."""
        if self is Verdict.A:
            return names[0]
        if self is Verdict.B:
            return names[1]
        return None


@dataclasses.dataclass(frozen=True)
class TimeComparison:
    """Platform a's train time over platform b's (a ratio < 1: a is faster)."""

    names: tuple[str, str]  # platforms a and b
    n_a: int
    n_b: int
    ratio: float  # geometric mean of a / geometric mean of b
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # Welch's t on log times, "same time"
    verdict: Verdict  # A or B: that platform is faster (the interval excludes 1)

    @property
    def faster(self) -> str | None:
        """The platform found faster; None without a detectable difference or a test."""
        return self.verdict.platform(self.names)

    @property
    def significant(self) -> bool:
        return self.verdict in (Verdict.A, Verdict.B)


def compare_times(a: Sequence[float], b: Sequence[float], names: tuple[str, str]) -> TimeComparison:
    """``a`` and ``b``: train times of one cell's runs on two platforms (positive)."""
    log_a, log_b = np.log(_finite(a)), np.log(_finite(b))
    n_a, n_b = len(log_a), len(log_b)
    if n_a == 0 or n_b == 0:
        raise ValueError("compare_times needs at least one run on each platform")
    ratio = float(math.exp(log_a.mean() - log_b.mean()))
    if n_a < 2 or n_b < 2:
        return TimeComparison(names, n_a, n_b, ratio, None, None, None, Verdict.NOT_TESTABLE)
    _, low, high, p_value = _welch(log_a, log_b)
    ci_low, ci_high = math.exp(low), math.exp(high)
    verdict = _time_verdict(ci_low, ci_high)
    return TimeComparison(names, n_a, n_b, ratio, ci_low, ci_high, p_value, verdict)


def _time_verdict(ci_low: float, ci_high: float) -> Verdict:
    """A platform is faster only for an interval of the ratio a/b that excludes 1."""
    if ci_high < 1:
        return Verdict.A
    if ci_low > 1:
        return Verdict.B
    return Verdict.NO_DIFFERENCE


def ratio_over_cells(ratios: Sequence[float], names: tuple[str, str]) -> TimeComparison:
    """Several cells' time ratios a/b (one per cell, e.g. a model and batch over its epochs)
    taken as replicates: their geometric mean with a 95% t interval on the log ratios."""
    logs = np.log(_finite([r for r in ratios if r is not None and r > 0]))
    n = len(logs)
    if n == 0:
        raise ValueError("ratio_over_cells needs at least one ratio")
    ratio = float(math.exp(logs.mean()))
    if n < 2:
        return TimeComparison(names, n, n, ratio, None, None, None, Verdict.NOT_TESTABLE)
    summary = describe(logs)
    assert summary is not None and summary.ci_low is not None and summary.ci_high is not None
    p_value = float(stats.ttest_1samp(logs, 0.0).pvalue) if summary.std else 0.0
    low, high = math.exp(summary.ci_low), math.exp(summary.ci_high)
    return TimeComparison(names, n, n, ratio, low, high, p_value, _time_verdict(low, high))


@dataclasses.dataclass(frozen=True)
class SpreadComparison:
    names: tuple[str, str]  # platforms a and b
    n_a: int
    n_b: int
    cv_a: float | None
    cv_b: float | None
    p_value: float | None  # Brown-Forsythe on log times, "same relative spread"
    verdict: Verdict  # A or B: that platform is more consistent; NOT_TESTABLE: too few runs

    @property
    def more_consistent(self) -> str | None:
        """The platform whose times vary less, where the test can tell."""
        return self.verdict.platform(self.names)


def compare_spread(
    a: Sequence[float], b: Sequence[float], names: tuple[str, str], alpha: float = 0.05
) -> SpreadComparison:
    """Which platform's train times vary less (relatively), if the data can tell."""
    data_a, data_b = _finite(a), _finite(b)
    summary_a, summary_b = describe(data_a), describe(data_b)
    cv_a = summary_a.cv if summary_a else None
    cv_b = summary_b.cv if summary_b else None
    n_a, n_b = len(data_a), len(data_b)
    if n_a < 3 or n_b < 3:
        return SpreadComparison(names, n_a, n_b, cv_a, cv_b, None, Verdict.NOT_TESTABLE)
    result = stats.levene(np.log(data_a), np.log(data_b), center="median")
    p_value = float(result.pvalue)
    if p_value < alpha and cv_a is not None and cv_b is not None:
        verdict = Verdict.A if cv_a < cv_b else Verdict.B
    else:
        verdict = Verdict.NO_DIFFERENCE
    return SpreadComparison(names, n_a, n_b, cv_a, cv_b, p_value, verdict)


@dataclasses.dataclass(frozen=True)
class MeanComparison:
    names: tuple[str, str]  # platforms a and b
    n_a: int
    n_b: int
    difference: float  # mean of a - mean of b
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    verdict: Verdict  # A or B: that platform's mean is higher (the interval excludes 0)

    @property
    def higher(self) -> str | None:
        """The platform with the higher mean, where the interval can tell."""
        return self.verdict.platform(self.names)


def compare_means(a: Sequence[float], b: Sequence[float], names: tuple[str, str]) -> MeanComparison:
    """The difference of two platforms' means (e.g. mAP@0.5) with a Welch 95% interval."""
    data_a, data_b = _finite(a), _finite(b)
    n_a, n_b = len(data_a), len(data_b)
    if n_a == 0 or n_b == 0:
        raise ValueError("compare_means needs at least one run on each platform")
    difference = float(data_a.mean() - data_b.mean())
    if n_a < 2 or n_b < 2:
        return MeanComparison(names, n_a, n_b, difference, None, None, None, Verdict.NOT_TESTABLE)
    difference, low, high, p_value = _welch(data_a, data_b)
    if low > 0:
        verdict = Verdict.A
    elif high < 0:
        verdict = Verdict.B
    else:
        verdict = Verdict.NO_DIFFERENCE
    return MeanComparison(names, n_a, n_b, difference, low, high, p_value, verdict)


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """Mean of a - mean of b, its 95% Welch-Satterthwaite interval, and the two-sided p-value.
    Identical runs on both sides (zero variance) give a zero-width interval."""
    difference = float(a.mean() - b.mean())
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return difference, difference, difference, 0.0 if difference else 1.0
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, dof) * se
    p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return difference, difference - half, difference + half, p_value


def runs_needed(relative_difference: float, cv: float, power: float = 0.8) -> int:
    """Runs per platform to detect a ``relative_difference`` in mean time (0.05: 5%) with
    probability ``power`` at the 5% level, when each platform's times vary by ``cv``: the
    normal approximation n = 2 (z_{0.975} + z_power)^2 (cv / d)^2, at least 2."""
    z = stats.norm.ppf((1 + CONFIDENCE) / 2) + stats.norm.ppf(power)
    return max(2, math.ceil(2 * (z * cv / relative_difference) ** 2))


def _finite(values: Sequence[float]) -> np.ndarray:
    data = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return data[np.isfinite(data)]
