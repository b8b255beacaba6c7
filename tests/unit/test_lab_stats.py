"""The lab's confidence intervals (bpfkit/lab/stats.py) on samples whose answer is known."""

import random

import pytest

from bpfkit.lab import stats

pytestmark = pytest.mark.unit


def test_independent_ratio_interval_holds_the_ratio_and_narrows_with_samples():
    rng = random.Random(1)
    a = [rng.gauss(150, 30) for _ in range(10_000)]
    b = [rng.gauss(100, 20) for _ in range(10_000)]
    wide = stats.independent_ratio_interval(a[:50], b[:50])
    narrow = stats.independent_ratio_interval(a, b)
    for interval in (wide, narrow):
        assert interval.low < interval.value < interval.high
    assert narrow.low < 1.5 < narrow.high and narrow.verdict(1.0, higher_is_better=True) == "met"
    assert narrow.high - narrow.low < wide.high - wide.low


def test_a_periodic_sample_is_not_aliased_by_the_thinning():
    interval = stats.independent_ratio_interval([1, 2, 3, 4, 5] * 1000, [2, 3, 4, 5, 6] * 900)
    assert interval.value == pytest.approx(0.75) and interval.low < 0.75 < interval.high


def test_no_interval_without_a_denominator():
    assert stats.independent_ratio_interval([], [1.0]) is None
    assert stats.independent_ratio_interval([1.0], [0.0]) is None
    one = stats.independent_ratio_interval([2.0], [1.0])
    assert one.value == 2.0 and one.verdict(1.0, higher_is_better=True) == "inconclusive"
