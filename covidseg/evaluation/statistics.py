"""Statistics that tell a difference between models from noise: bootstrap confidence intervals over cases and
paired comparisons on the same cases.

- mean_with_ci: the mean of per-case values with a percentile bootstrap confidence interval (resampling cases).
- paired_difference: the mean of per-case differences (a - b on the same cases), its bootstrap confidence
  interval and the two-sided Wilcoxon signed-rank p value (scipy). A difference is called significant only when
  the confidence interval excludes 0 and p < 0.05: with few cases a bootstrap interval is too narrow (one case
  gives an interval of width 0), while the exact signed-rank test cannot reach p < 0.05 with 5 cases or fewer.

The bootstrap is seeded, so a report is reproducible.
"""
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import wilcoxon

BOOTSTRAP_SAMPLES = 10000
CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return "n/a" if self.n == 0 else f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class PairedDifference(Estimate):
    p_wilcoxon: float = float("nan")

    @property
    def significant(self) -> bool:
        return self.n > 0 and (self.low > 0 or self.high < 0) and self.p_wilcoxon < ALPHA

    def verdict(self) -> str:
        if self.n == 0:
            return "no common cases"
        if not self.significant:
            return "no significant difference"
        return "significantly higher" if self.mean > 0 else "significantly lower"


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def mean_with_ci(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> Estimate:
    """Mean and percentile-bootstrap CI of the finite values (NaN, e.g. an undefined HD95, left out)."""
    array = _finite(values)
    if array.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(samples, array.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(array.mean()), float(low), float(high), int(array.size))


def paired_difference(a: Sequence[float], b: Sequence[float], samples: int = BOOTSTRAP_SAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> PairedDifference:
    """a - b per case (the same cases, in the same order): mean, bootstrap CI and Wilcoxon signed-rank p."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same cases: {a.shape} vs {b.shape}")
    differences = a - b
    estimate = mean_with_ci(differences, samples, confidence, seed)
    finite = _finite(differences)
    if finite.size == 0 or not np.any(finite != 0):
        p = 1.0 if finite.size else float("nan")  # no case differs: nothing to test
    else:
        p = float(wilcoxon(finite).pvalue)
    return PairedDifference(estimate.mean, estimate.low, estimate.high, estimate.n, p)
