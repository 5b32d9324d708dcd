"""Paired comparisons over seeds: is a method's difference to the baseline larger than the noise?

Runs of two methods with the same seed share data order, initial weights and sampling noise, so
their difference is paired. The interval is the paired t interval over seeds: mean difference
± t_{(1+c)/2, n-1} * sd / sqrt(n). Each run's metric already carries its sample noise, so the
spread of the per-seed differences covers both seed and sample noise. With 3 seeds the t factor
is 4.30: only clear effects are called detectable, which is the point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats


@dataclass
class PairedDifference:
    """mean(a - b) over paired seeds with a confidence interval (None with fewer than 2 pairs)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float

    @property
    def detectable(self) -> bool:
        """True when the interval excludes 0 (a difference larger than the seed-to-seed noise)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def describe(self, digits: int = 2) -> str:
        """'+1.23 [0.45, 2.01]', or with 'no detectable difference' when the interval covers 0."""
        text = f"{self.mean:+.{digits}f}"
        if self.low is None:
            return f"{text} (n={self.n}, no interval)"
        text += f" [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
        return text if self.detectable else f"{text} no detectable difference"


def paired_difference(values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Paired t interval of mean(values - baseline); the two sequences are matched by position (seed)."""
    if len(values) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(values)} and {len(baseline)}")
    if not values:
        raise ValueError("no pairs")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = [float(a) - float(b) for a, b in zip(values, baseline)]
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return PairedDifference(mean, None, None, n, confidence)
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half_width = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half_width, mean + half_width, n, confidence)


__all__ = ["PairedDifference", "paired_difference"]
