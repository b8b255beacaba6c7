"""95 % confidence intervals for the lab's figures.

A figure over repetitions (mean goodput) gets a bootstrap interval over its runs; a ratio to
`default` is bootstrapped over *pairs* of runs, one of each scheduler with the same repetition
(same seed, same traffic), so what varies between repetitions varies for both. scipy.stats.bootstrap,
percentile method: BCa needs more runs than a bench does (it fails on 2-3 equal values), and a
fixed random state makes the report reproducible. With fewer than two runs (pairs) there is no
interval, and a verdict against a bar is then "inconclusive".
"""

from __future__ import annotations

import dataclasses
import math

from bpfkit.errors import optional_import

CONFIDENCE = 0.95
RESAMPLES = 4000
_SEED = 20161101  # any fixed value: the same results document gives the same intervals


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float
    low: float | None = None
    high: float | None = None

    def verdict(self, bar: float, *, higher_is_better: bool) -> str:
        """'met' when the whole interval clears the bar, 'unmet' when it is wholly on the other
        side, else 'inconclusive'."""
        if self.low is None or self.high is None:
            return "inconclusive"
        if higher_is_better:
            return "met" if self.low >= bar else "unmet" if self.high < bar else "inconclusive"
        return "met" if self.high <= bar else "unmet" if self.low > bar else "inconclusive"

    def bounds(self) -> list[float] | None:
        return None if self.low is None else [self.low, self.high]


def _bootstrap(samples: tuple, statistic, paired: bool) -> tuple[float | None, float | None]:
    stats = optional_import("scipy.stats", "confidence intervals")
    import numpy as np  # scipy's own dependency

    n = len(samples[0])
    if n < 2:
        return None, None
    if all(len(set(s)) == 1 for s in samples):  # no spread at all: the interval is the point
        value = statistic(*samples)
        return value, value
    result = stats.bootstrap(tuple(np.asarray(s, dtype=float) for s in samples), statistic, paired=paired,
                             vectorized=False, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                             method="percentile", random_state=np.random.default_rng(_SEED))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (None, None) if math.isnan(low) or math.isnan(high) else (low, high)


def _mean(values) -> float:
    return float(sum(values) / len(values))


def mean_interval(values: list[float]) -> Interval | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    low, high = _bootstrap((list(values),), _mean, paired=False)
    return Interval(mean, low, high)


def ratio_interval(pairs: list[tuple[float, float]]) -> Interval | None:
    """mean(a) / mean(b) over pairs (a, b) of runs with the same repetition."""
    pairs = [(a, b) for a, b in pairs if a is not None and b]
    if not pairs:
        return None
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    value = (sum(a) / len(a)) / (sum(b) / len(b))
    low, high = _bootstrap((a, b), lambda x, y: _mean(x) / _mean(y), paired=True)
    return Interval(value, low, high)


def independent_ratio_interval(a: list[float], b: list[float], most: int = 2000) -> Interval | None:
    """mean(a) / mean(b) of two independent samples (e.g. the durations of two schedulers' calls),
    resampled separately. A long sample is first cut to `most` values drawn at random (the
    bootstrap's cost grows with it; an evenly spaced pick could alias with a periodic pattern)."""
    np = optional_import("numpy", "confidence intervals")

    if not a or not b or not sum(b):
        return None
    value = (sum(a) / len(a)) / (sum(b) / len(b))
    rng = np.random.default_rng(_SEED)
    thin = lambda xs: xs if len(xs) <= most else [xs[i] for i in rng.choice(len(xs), most, replace=False)]  # noqa: E731
    low, high = _bootstrap((thin(list(a)), thin(list(b))), lambda x, y: _mean(x) / _mean(y), paired=False)
    return Interval(value, low, high)
