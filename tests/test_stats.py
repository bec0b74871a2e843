"""detbench.summary.stats against textbook values and fabricated runs of known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from detbench.summary import stats
from detbench.summary.cell_stats import cell_stats_rows, stats_columns

NAMES = ("a", "b")


def test_describe_by_hand() -> None:
    summary = stats.describe([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert summary is not None
    assert summary.n == 8 and summary.mean == 5.0 and summary.median == 4.5
    assert summary.std == pytest.approx(math.sqrt(32 / 7))  # sample variance 32 / 7
    assert summary.cv == pytest.approx(math.sqrt(32 / 7) / 5)
    # t_{0.975, 7} = 2.364624 (tables)
    half = 2.364624 * math.sqrt(32 / 7) / math.sqrt(8)
    assert summary.ci_low == pytest.approx(5 - half, rel=1e-6)
    assert summary.ci_high == pytest.approx(5 + half, rel=1e-6)
    assert summary.trimmed_mean == pytest.approx((4 + 4 + 4 + 5 + 5 + 7) / 6)


def test_describe_one_run_has_no_spread() -> None:
    summary = stats.describe([3.0, float("nan")])
    assert summary is not None and summary.n == 1
    assert summary.std is None and summary.cv is None and summary.ci_low is None
    assert summary.trimmed_mean is None
    assert stats.describe([]) is None


def _runs(mean: float, cv: float, n: int, seed: int) -> list[float]:
    """n times with the given mean and relative noise (log-normal)."""
    rng = np.random.default_rng(seed)
    return list(mean * np.exp(rng.normal(0.0, cv, n)))


def test_ten_percent_difference_with_one_percent_noise_is_detected() -> None:
    a, b = _runs(90.0, 0.01, 5, seed=1), _runs(100.0, 0.01, 5, seed=2)
    result = stats.compare_times(a, b, NAMES)
    assert result.verdict is stats.Verdict.A and result.significant and result.faster == "a"
    assert result.ci_low < result.ratio < result.ci_high < 1
    assert result.ratio == pytest.approx(0.9, abs=0.02)
    assert result.p_value < 0.001
    reverse = stats.compare_times(b, a, NAMES)
    assert reverse.verdict is stats.Verdict.B and reverse.faster == "b"


def test_ten_percent_difference_with_twenty_percent_noise_is_not() -> None:
    a, b = _runs(90.0, 0.20, 5, seed=1), _runs(100.0, 0.20, 5, seed=2)
    result = stats.compare_times(a, b, NAMES)
    assert result.verdict is stats.Verdict.NO_DIFFERENCE and not result.significant
    assert result.faster is None
    assert result.ci_low < 1 < result.ci_high
    assert result.p_value > 0.05


def test_time_interval_is_welch_on_log_times() -> None:
    a, b = [10.0, 11.0, 12.0], [20.0, 22.0, 21.0, 23.0]
    result = stats.compare_times(a, b, NAMES)
    expected_p = scipy_stats.ttest_ind(np.log(a), np.log(b), equal_var=False).pvalue
    assert result.p_value == pytest.approx(expected_p)
    geometric = math.exp(np.log(a).mean() - np.log(b).mean())
    assert result.ratio == pytest.approx(geometric)
    # The interval is symmetric around the log ratio.
    assert math.log(result.ci_high) - math.log(result.ratio) == pytest.approx(
        math.log(result.ratio) - math.log(result.ci_low)
    )


def test_single_runs_are_compared_without_a_verdict_of_significance() -> None:
    result = stats.compare_times([10.0], [20.0, 21.0], NAMES)
    assert result.verdict is stats.Verdict.NOT_TESTABLE
    assert result.faster is None and not result.significant
    assert result.ratio == pytest.approx(10 / math.sqrt(20 * 21))
    assert result.ci_low is None and result.p_value is None


def test_consistency_brown_forsythe() -> None:
    steady, noisy = _runs(100.0, 0.01, 8, seed=3), _runs(100.0, 0.15, 8, seed=4)
    result = stats.compare_spread(steady, noisy, NAMES)
    expected = scipy_stats.levene(np.log(steady), np.log(noisy), center="median").pvalue
    assert result.p_value == pytest.approx(expected)
    assert result.p_value < 0.05 and result.verdict is stats.Verdict.A
    assert result.more_consistent == "a" and result.cv_a < result.cv_b
    reverse = stats.compare_spread(noisy, steady, NAMES)
    assert reverse.verdict is stats.Verdict.B and reverse.more_consistent == "b"
    same = stats.compare_spread(_runs(100, 0.05, 5, 5), _runs(100, 0.05, 5, 6), NAMES)
    assert same.verdict is stats.Verdict.NO_DIFFERENCE and same.more_consistent is None
    few = stats.compare_spread([1.0, 2.0], [1.0, 2.0, 3.0], NAMES)
    assert few.verdict is stats.Verdict.NOT_TESTABLE and few.p_value is None


def test_accuracy_difference() -> None:
    higher, lower = [0.50, 0.51, 0.49, 0.50, 0.52], [0.40, 0.41, 0.39, 0.42, 0.40]
    result = stats.compare_means(higher, lower, NAMES)
    assert result.difference == pytest.approx(0.10)
    assert 0 < result.ci_low < 0.10 < result.ci_high and result.verdict is stats.Verdict.A
    assert result.higher == "a"
    assert stats.compare_means(lower, higher, NAMES).higher == "b"
    noisy = stats.compare_means([0.5, 0.3, 0.7], [0.45, 0.6, 0.35], NAMES)
    assert noisy.verdict is stats.Verdict.NO_DIFFERENCE and noisy.higher is None
    single = stats.compare_means([0.5], [0.4, 0.41], NAMES)
    assert single.verdict is stats.Verdict.NOT_TESTABLE


def test_identical_runs_give_a_zero_width_interval() -> None:
    """repeat_seed fixed on a CPU: every run computes the same mAP."""
    result = stats.compare_means([0.3, 0.3, 0.3], [0.3, 0.3], NAMES)
    assert result.ci_low == result.ci_high == 0.0
    assert result.verdict is stats.Verdict.NO_DIFFERENCE


def test_ratio_over_cells_verdicts() -> None:
    faster = stats.ratio_over_cells([0.80, 0.82, 0.79, 0.81], NAMES)
    assert faster.verdict is stats.Verdict.A and faster.faster == "a" and faster.ci_high < 1
    slower = stats.ratio_over_cells([1.25, 1.22, 1.27], NAMES)
    assert slower.verdict is stats.Verdict.B and slower.faster == "b"
    mixed = stats.ratio_over_cells([0.8, 1.25, 0.9, 1.1], NAMES)
    assert mixed.verdict is stats.Verdict.NO_DIFFERENCE
    single = stats.ratio_over_cells([0.8], NAMES)
    assert single.verdict is stats.Verdict.NOT_TESTABLE and single.ratio == pytest.approx(0.8)


@pytest.mark.parametrize("names", [("h100", "h100-sxm"), ("h100-sxm", "h100")])
def test_a_label_that_starts_another_names_the_right_platform(names: tuple[str, str]) -> None:
    """One platform label the prefix of the other: each verdict names the platform it found."""
    fast, slow = _runs(90.0, 0.01, 6, seed=1), _runs(100.0, 0.01, 6, seed=2)
    assert stats.compare_times(fast, slow, names).faster == names[0]
    assert stats.compare_times(slow, fast, names).faster == names[1]
    steady, noisy = _runs(100.0, 0.01, 8, seed=3), _runs(100.0, 0.15, 8, seed=4)
    assert stats.compare_spread(steady, noisy, names).more_consistent == names[0]
    assert stats.compare_spread(noisy, steady, names).more_consistent == names[1]


def test_runs_needed() -> None:
    # 2 (1.96 + 0.84)^2 (cv/d)^2: cv 5%, a 5% difference -> 16 runs per platform.
    assert stats.runs_needed(0.05, 0.05) == 16
    assert stats.runs_needed(0.10, 0.01) == 2
    assert stats.runs_needed(0.05, 0.10) > stats.runs_needed(0.05, 0.05)


def test_cell_stats_rows_one_per_cell() -> None:
    def run(platform: str, repeat: int, seconds: float, map50: float) -> dict:
        return {"platform": platform, "dataset": "bccd", "img_size": 416, "model": "yolov3",
                "batch": 8, "epochs": 5, "repeat": repeat, "train_time_s": seconds,
                "map50": map50}

    runs = [run("p", 0, 10.0, 0.5), run("p", 1, 12.0, 0.6), run("p", 2, 14.0, 0.7)]
    runs.append(run("q", 0, 5.0, 0.4))
    rows = cell_stats_rows(runs)
    assert [(r["platform"], r["n"]) for r in rows] == [("p", 3), ("q", 1)]
    assert rows[0]["train_time_s_mean"] == 12.0 and rows[0]["train_time_s_std"] == 2.0
    assert rows[0]["map50_median"] == 0.6 and rows[0]["user_time_s_mean"] is None
    assert rows[1]["train_time_s_std"] is None
    assert set(rows[0]) <= set(stats_columns())
