"""Paired statistics for comparing two strategies run on the same benchmarks and seeds.

Pure functions of arrays, like :mod:`lamm_cl.metrics`: nothing here reads files.
Two strategies are compared on *pairs* -- the same (benchmark, seed[, grid cell]) --
so that what a seed does to both (class order, few-shot draw, initialisation)
cancels in the difference.

* :func:`bootstrap_ci`: a percentile bootstrap interval for the mean difference,
  from a seeded generator, so a report is byte-identical when rebuilt.
* :func:`sign_flip_p`: the paired permutation test. Under "no difference" each
  pair's difference is as likely to have either sign; the p-value is the share of
  the 2^n sign assignments whose mean is at least as far from 0 as the observed
  one (two-sided). It is exact: for up to :data:`EXACT_MAX_PAIRS` pairs every
  assignment is counted (meet in the middle: 2 x 2^(n/2) sums instead of 2^n);
  beyond that it is estimated from :data:`MONTE_CARLO_DRAWS` seeded draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["Comparison", "bootstrap_ci", "sign_flip_p", "compare_paired", "min_p", "min_p_text",
           "PAIRS_FOR_5_PERCENT", "N_RESAMPLES", "CONFIDENCE", "MIN_PAIRS", "EXACT_MAX_PAIRS", "MONTE_CARLO_DRAWS"]

N_RESAMPLES = 10_000  # bootstrap resamples; the interval's ends move by ~0.1 of a std between seeds at this count
CONFIDENCE = 0.95
MIN_PAIRS = 3  # with 1 or 2 pairs the smallest possible p-value is 0.5: no test is worth printing
EXACT_MAX_PAIRS = 40  # 2 x 2^20 partial sums: about a second and 32 MB, the most an exact count should cost
MONTE_CARLO_DRAWS = 200_000
PAIRS_FOR_5_PERCENT = 6  # min_p(5) = 0.0625, min_p(6) = 0.03125: fewer pairs can never reach p < 0.05
_TOL = 1e-9  # differences printed to 2 decimals are compared with this slack, so ties count as ties


def _as_diffs(diffs: Sequence[float]) -> np.ndarray:
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("no pairs to compare")
    if not np.all(np.isfinite(d)):
        raise ValueError("a paired difference is NaN or infinite")
    return d


def bootstrap_ci(diffs: Sequence[float], n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``diffs``.

    Each resample draws ``len(diffs)`` pairs with replacement (``numpy`` PCG64 seeded
    with ``seed``, all resamples as one ``integers(0, n, size=(n_resamples, n))`` call);
    the interval is the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of the
    resampled means (numpy's default linear interpolation).

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    d = _as_diffs(diffs)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def min_p(n_pairs: int) -> float:
    """The smallest p-value :func:`sign_flip_p` can give with ``n_pairs`` pairs, whatever the differences.

    Exact test: only the observed assignment and its mirror reach the observed sum when every
    difference has one sign, so p >= 2 / 2^n (0.25 for 3 pairs, 0.03125 for 6). Monte Carlo
    (more than :data:`EXACT_MAX_PAIRS` pairs): 1 / (draws + 1).

    Example:
        >>> min_p(3)
        0.25
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be 1 or more, got {n_pairs}")
    if n_pairs > EXACT_MAX_PAIRS:
        return 1.0 / (MONTE_CARLO_DRAWS + 1)
    return 2.0 / 2.0 ** n_pairs


def min_p_text(n_pairs: int) -> str:
    """:func:`min_p` as the report prints it (``0.250``, ``< 0.001``)."""
    return _p_text(min_p(n_pairs))


def _signed_sums(values: np.ndarray) -> np.ndarray:
    """All 2^k sums of +-values (k = len(values)), as one array."""
    sums = np.zeros(1)
    for v in values:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def sign_flip_p(diffs: Sequence[float], seed: int = 0) -> float:
    """Two-sided paired sign-flip (permutation) p-value for "mean difference = 0".

    p = #{sign assignments s : |sum(s * |d|)| >= |sum(d)|} / 2^n, the observed assignment
    included, so p > 0 always. Exact for ``n <= EXACT_MAX_PAIRS``; otherwise the share
    among ``MONTE_CARLO_DRAWS`` seeded random assignments plus the observed one.

    Example:
        >>> sign_flip_p([1.0, 2.0, 3.0])  # only +++ and --- reach |6|: 2 of 8
        0.25
    """
    d = _as_diffs(diffs)
    a = np.abs(d)
    target = abs(float(d.sum())) - _TOL * max(1.0, float(a.sum()))
    n = d.size
    if n <= EXACT_MAX_PAIRS:
        if target <= 0:  # a mean difference of 0: every assignment is as far from 0
            return 1.0
        half = n // 2
        left = _signed_sums(a[:half])
        right = np.sort(_signed_sums(a[half:]))
        # assignments with left + right >= target, and with left + right <= -target (disjoint: target > 0)
        upper = right.size - np.searchsorted(right, target - left, side="left")
        lower = np.searchsorted(right, -target - left, side="right")
        return float((upper.sum() + lower.sum()) / 2.0 ** n)
    rng = np.random.Generator(np.random.PCG64(seed))
    hits = 1  # the observed assignment
    left_to_draw = MONTE_CARLO_DRAWS
    while left_to_draw:
        k = min(left_to_draw, 20_000)
        signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ a) >= target))
        left_to_draw -= k
    return hits / (MONTE_CARLO_DRAWS + 1)


@dataclass(frozen=True)
class Comparison:
    """Strategy ``a`` minus strategy ``b`` on ``metric``, over ``n_pairs`` paired runs.

    ``p_value`` is None (and ``note`` says why) with fewer than :data:`MIN_PAIRS` pairs.
    """

    a: str
    b: str
    metric: str
    n_pairs: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: Optional[float]
    note: str = ""

    def __str__(self) -> str:
        return self.text()

    def text(self, note: bool = True) -> str:
        """One line: difference, interval, p and pairs; ``note=False`` leaves out why there is no p-value
        (a report that says it once)."""
        label = _METRIC_LABELS.get(self.metric, self.metric)
        head = f"{self.a} − {self.b}: {label} {_signed(self.mean_diff)}"
        if self.p_value is None:
            return (f"{head}, {self.n_pairs} pair{'s' if self.n_pairs != 1 else ''}"
                    + (f" ({self.note})" if note else ""))
        return (f"{head} [{_signed(self.ci_low)}, {_signed(self.ci_high)}], p = {_p_text(self.p_value)}, "
                f"{self.n_pairs} pairs")


_METRIC_LABELS = {"avg": "Avg", "last": "Last", "forgetting": "Forgetting", "bwt": "BWT"}


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def compare_paired(a_values: Sequence[float], b_values: Sequence[float], *, a: str = "a", b: str = "b",
                   metric: str = "", n_resamples: int = N_RESAMPLES, seed: int = 0) -> Comparison:
    """Mean of ``a_values - b_values`` (paired by position), its bootstrap interval and sign-flip p-value.

    With fewer than :data:`MIN_PAIRS` pairs the interval is left NaN and the p-value None.

    Raises:
        ValueError: the two sequences differ in length, are empty, or hold NaN.
    """
    av = np.asarray(a_values, dtype=np.float64).ravel()
    bv = np.asarray(b_values, dtype=np.float64).ravel()
    if av.shape != bv.shape:
        raise ValueError(f"{av.size} values of {a} but {bv.size} of {b}; pairs need one of each")
    d = _as_diffs(av - bv)
    if d.size < MIN_PAIRS:
        return Comparison(a, b, metric, int(d.size), float(d.mean()), math.nan, math.nan, None,
                          note=f"fewer than {MIN_PAIRS} pairs: no interval or p-value")
    lo, hi = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    return Comparison(a, b, metric, int(d.size), float(d.mean()), lo, hi, sign_flip_p(d, seed=seed))
