"""Continual-learning metrics as pure functions of the accuracy matrix.

Everything here reads two things and nothing else:

- ``A``: the accuracy matrix, a ``[T, T]`` array in percent (0-100), where
  ``A[i][j]`` is the accuracy on experience ``j``'s test classes after training
  experience ``i``. Only the lower triangle (``j <= i``) is defined; entries
  above the diagonal are ignored (NaN by convention).
- ``counts``: the number of test images of each experience, used to pool the
  per-experience accuracies into the accuracy over all seen test images.

Indices are 0-based: experience ``T - 1`` is the last one. Strategies never
appear here, so every metric can be tested on a matrix written by hand.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

__all__ = [
    "validate",
    "seen_accuracy",
    "average_incremental_accuracy",
    "last_accuracy",
    "running_average_accuracy",
    "forgetting",
    "forgetting_per_experience",
    "forgetting_per_step",
    "bwt",
    "bwt_per_step",
    "old_new_accuracy",
    "summarize",
    "transfer",
    "mtil_average",
    "dataset_last_accuracy",
    "sequence_summary",
]

# Accuracies are percentages; a little slack absorbs float round-off from
# 100 * correct / total computed elsewhere.
_PERCENT_SLACK = 1e-6


def validate(A: np.ndarray, counts: Sequence[int] | None = None) -> Tuple[np.ndarray, np.ndarray | None]:
    """Check an accuracy matrix (and optional test counts) and return them as float arrays.

    Args:
        A: ``[T, T]`` accuracies in percent; the lower triangle (diagonal
            included) must be finite and within [0, 100]. Entries above the
            diagonal are ignored and come back as NaN.
        counts: test images per experience, ``T`` positive integers.

    Returns:
        ``(A, counts)`` as a float64 copy with NaN above the diagonal and a
        float64 array (or ``None`` when no counts were given).

    Raises:
        ValueError: the matrix is not square, is empty, has a missing or
            out-of-range entry on or below the diagonal, or the counts do not
            match it.
    """
    M = np.array(A, dtype=np.float64, copy=True)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"accuracy matrix must be square [T, T], got shape {M.shape}")
    T = M.shape[0]
    if T == 0:
        raise ValueError("accuracy matrix is empty (T = 0)")
    lower = np.tril(np.ones((T, T), dtype=bool))
    bad = lower & ~np.isfinite(M)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ValueError(f"accuracy matrix entry A[{i}][{j}] (j <= i) must be finite, got {M[i, j]}")
    out = lower & ((M < -_PERCENT_SLACK) | (M > 100 + _PERCENT_SLACK))
    if out.any():
        i, j = map(int, np.argwhere(out)[0])
        raise ValueError(f"accuracy matrix entry A[{i}][{j}] = {M[i, j]} is not a percentage in [0, 100]")
    M[~lower] = np.nan
    if counts is None:
        return M, None
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (T,):
        raise ValueError(f"test counts must have one entry per experience ({T}), got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c <= 0) or np.any(c != np.round(c)):
        raise ValueError(f"test counts must be positive integers, got {list(c)}")
    return M, c


def seen_accuracy(A: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Accuracy over the pooled test images of every class seen so far, after each experience.

    ``a_i = sum_{j<=i} n_j A[i][j] / sum_{j<=i} n_j`` with ``n_j = counts[j]``:
    the count-weighted mean of row ``i``, which equals the accuracy over all
    seen test images because ``A[i][j]`` is itself a mean over ``n_j`` images.

    Returns:
        ``[T]`` array of percentages.

    Example:
        >>> seen_accuracy([[90, np.nan], [70, 80]], [10, 30]).tolist()
        [90.0, 77.5]
    """
    M, c = validate(A, counts)
    T = M.shape[0]
    return np.array([np.dot(M[i, : i + 1], c[: i + 1]) / c[: i + 1].sum() for i in range(T)])


def average_incremental_accuracy(A: np.ndarray, counts: Sequence[int]) -> float:
    """Average incremental accuracy (Rebuffi et al., iCaRL, 2017): ``mean_i a_i``.

    ``a_i`` is :func:`seen_accuracy`; the mean runs over all ``T`` experiences.
    """
    return float(np.mean(seen_accuracy(A, counts)))


def last_accuracy(A: np.ndarray, counts: Sequence[int]) -> float:
    """Accuracy on all classes after the last experience: ``a_{T-1}`` (0-based)."""
    return float(seen_accuracy(A, counts)[-1])


def running_average_accuracy(A: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Average incremental accuracy as it stands after each experience: ``mean_{k<=i} a_k``."""
    a = seen_accuracy(A, counts)
    return np.cumsum(a) / np.arange(1, a.size + 1)


def forgetting_per_experience(A: np.ndarray) -> np.ndarray:
    """How much each old experience was forgotten by the end (Chaudhry et al., 2018).

    ``f_j = max_{i in [j, T-2]} A[i][j] - A[T-1][j]`` for ``j < T - 1``: the
    best accuracy experience ``j`` ever had before the last experience, minus
    its accuracy now. Negative values mean the experience improved.

    Returns:
        ``[T - 1]`` array (empty for a single experience).
    """
    M, _ = validate(A)
    T = M.shape[0]
    return np.array([M[j : T - 1, j].max() - M[T - 1, j] for j in range(T - 1)], dtype=np.float64)


def forgetting(A: np.ndarray) -> float:
    """Average forgetting (Chaudhry et al., "Riemannian Walk", ECCV 2018).

    ``F = mean_{j < T-1} ( max_{i in [j, T-2]} A[i][j] - A[T-1][j] )`` (0-based),
    i.e. the mean of :func:`forgetting_per_experience`.

    With a single experience nothing can be forgotten; we return ``0.0``, the
    usual convention (the mean over an empty set would be undefined).
    """
    f = forgetting_per_experience(A)
    return float(f.mean()) if f.size else 0.0


def forgetting_per_step(A: np.ndarray) -> np.ndarray:
    """Forgetting as it stands after each experience ``i``: :func:`forgetting` of ``A[:i+1, :i+1]``.

    The first entry is ``0.0`` (nothing to forget yet).
    """
    M, _ = validate(A)
    return np.array([forgetting(M[: i + 1, : i + 1]) for i in range(M.shape[0])])


def bwt(A: np.ndarray) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, "Gradient Episodic Memory", NeurIPS 2017).

    ``BWT = mean_{j < T-1} ( A[T-1][j] - A[j][j] )`` (0-based): how the final
    model does on each old experience compared with right after learning it.
    Negative means forgetting. ``0.0`` for a single experience (convention).
    """
    M, _ = validate(A)
    T = M.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([M[T - 1, j] - M[j, j] for j in range(T - 1)]))


def bwt_per_step(A: np.ndarray) -> np.ndarray:
    """Backward transfer as it stands after each experience ``i``: :func:`bwt` of ``A[:i+1, :i+1]``."""
    M, _ = validate(A)
    return np.array([bwt(M[: i + 1, : i + 1]) for i in range(M.shape[0])])


def old_new_accuracy(A: np.ndarray, counts: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Accuracy on old and on new classes after each experience.

    ``new_i = A[i][i]`` (the classes just learned) and
    ``old_i = sum_{j<i} n_j A[i][j] / sum_{j<i} n_j`` (pooled over the test
    images of every earlier experience); ``old_0`` is NaN (no old classes).

    Returns:
        ``(old, new)``, two ``[T]`` arrays of percentages.
    """
    M, c = validate(A, counts)
    T = M.shape[0]
    new = np.diag(M).copy()
    old = np.full(T, np.nan)
    for i in range(1, T):
        old[i] = np.dot(M[i, :i], c[:i]) / c[:i].sum()
    return old, new


def summarize(A: np.ndarray, counts: Sequence[int]) -> Dict[str, float]:
    """The headline numbers of one run, in percent.

    Returns:
        ``{"avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"}``
        as plain floats (see the functions of the same names).
    """
    return {
        "avg_incremental_accuracy": average_incremental_accuracy(A, counts),
        "last_accuracy": last_accuracy(A, counts),
        "forgetting": forgetting(A),
        "bwt": bwt(A),
    }


# --------------------------------------------------------------------------- sequences of datasets
#
# ZSCL's definitions (Thunderbeee/ZSCL, mtil/results.ipynb, first cell, ``statistics``, commit 08c6ef6):
# ``avg = arr.mean(axis=0)``, ``last = arr[-1, :]``,
# ``transfer = [mean(arr[j, i] for j < i) for i in 1..T-1]``, each then averaged over the datasets. Here
# ``A[t][d]`` may be defined above the diagonal: the accuracy on dataset d before it was trained.


def _full(A: np.ndarray) -> np.ndarray:
    M = np.array(A, dtype=np.float64, copy=True)
    validate(M)  # square, lower triangle finite percentages
    return M


def transfer(A: np.ndarray) -> float:
    """ZSCL's Transfer: ``mean_{d=1..T-1} ( mean_{t<d} A[t][d] )`` (0-based): the accuracy on datasets
    not trained yet, i.e. what is left of zero-shot ability. NaN for a single dataset.

    Raises:
        ValueError: a cell above the diagonal is missing (the strategy cannot score unseen classes:
            Transfer is not applicable, see :func:`sequence_summary`).
    """
    M = _full(A)
    T = M.shape[0]
    if T == 1:
        return float("nan")
    upper = M[np.triu_indices(T, k=1)]
    if not np.all(np.isfinite(upper)):
        raise ValueError("Transfer needs every cell above the diagonal (accuracy on datasets not trained yet)")
    return float(np.mean([M[:d, d].mean() for d in range(1, T)]))


def mtil_average(A: np.ndarray) -> float:
    """ZSCL's Avg: ``mean_d ( mean_t A[t][d] )`` over the whole ``[T, T]`` matrix (every step, before and
    after dataset d was trained).

    Raises:
        ValueError: a cell above the diagonal is missing.
    """
    M = _full(A)
    if not np.all(np.isfinite(M)):
        raise ValueError("Avg needs the whole matrix, the cells above the diagonal included")
    return float(M.mean(axis=0).mean())


def dataset_last_accuracy(A: np.ndarray) -> float:
    """ZSCL's Last: ``mean_d A[T-1][d]``, a mean over datasets (not over test images)."""
    M = _full(A)
    return float(M[-1].mean())


def sequence_summary(A: np.ndarray) -> Dict[str, float | None]:
    """``{"transfer", "mtil_avg", "last_accuracy"}`` of a sequence's matrix; Transfer and Avg are None
    (not applicable, never a number) when the cells above the diagonal are missing."""
    M = _full(A)
    T = M.shape[0]
    complete = bool(np.all(np.isfinite(M[np.triu_indices(T, k=1)])))
    return {"transfer": transfer(M) if complete and T > 1 else None,
            "mtil_avg": mtil_average(M) if complete else None,
            "last_accuracy": dataset_last_accuracy(M)}
