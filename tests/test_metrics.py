"""Metrics on accuracy matrices worked out by hand."""

import math
import re

import numpy as np
import pytest

from lamm_cl import metrics

nan = float("nan")

# A[i][j]: accuracy (%) on experience j's test classes after training experience i.
A = [[90, nan, nan],
     [70, 80, nan],
     [60, 50, 85]]
COUNTS = [10, 10, 20]  # test images per experience

# By hand:
#   a_0 = 90
#   a_1 = (70*10 + 80*10) / 20 = 75
#   a_2 = (60*10 + 50*10 + 85*20) / 40 = (600 + 500 + 1700) / 40 = 70
#   avg = (90 + 75 + 70) / 3 = 78.333...,  last = 70
#   forgetting: j=0: max(90, 70) - 60 = 30;  j=1: max(80) - 50 = 30;  mean = 30
#   bwt: j=0: 60 - 90 = -30;  j=1: 50 - 80 = -30;  mean = -30
#   new = [90, 80, 85];  old = [nan, 70, (60*10 + 50*10) / 20 = 55]
#   per-step forgetting: [0, 90 - 70 = 20, 30];  per-step bwt: [0, 70 - 90 = -20, -30]
#   running avg: [90, (90 + 75) / 2 = 82.5, 78.333...]


def test_seen_accuracy_pools_by_test_count():
    assert metrics.seen_accuracy(A, COUNTS) == pytest.approx([90, 75, 70])


def test_average_and_last():
    assert metrics.average_incremental_accuracy(A, COUNTS) == pytest.approx(235 / 3)
    assert metrics.last_accuracy(A, COUNTS) == pytest.approx(70)
    assert metrics.running_average_accuracy(A, COUNTS) == pytest.approx([90, 82.5, 235 / 3])


def test_forgetting_and_bwt():
    assert metrics.forgetting(A) == pytest.approx(30)
    assert metrics.forgetting_per_experience(A) == pytest.approx([30, 30])
    assert metrics.bwt(A) == pytest.approx(-30)
    assert metrics.forgetting_per_step(A) == pytest.approx([0, 20, 30])
    assert metrics.bwt_per_step(A) == pytest.approx([0, -20, -30])


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    # Experience 0 improves to 95 after experience 1, then drops to 60.
    B = [[90, nan, nan],
         [95, 80, nan],
         [60, 50, 85]]
    # forgetting: j=0: max(90, 95) - 60 = 35;  j=1: 80 - 50 = 30;  mean = 32.5
    # bwt only compares with the diagonal: (60 - 90 + 50 - 80) / 2 = -30
    # after experience 1: forgetting = 90 - 95 = -5 (it improved); bwt = +5
    assert metrics.forgetting(B) == pytest.approx(32.5)
    assert metrics.bwt(B) == pytest.approx(-30)
    assert metrics.forgetting_per_step(B) == pytest.approx([0, -5, 32.5])
    assert metrics.bwt_per_step(B) == pytest.approx([0, 5, -30])
    # a = [90, (95 + 80) / 2 = 87.5, 70];  avg = 247.5 / 3 = 82.5
    assert metrics.average_incremental_accuracy(B, COUNTS) == pytest.approx(82.5)


def test_old_new_accuracy():
    old, new = metrics.old_new_accuracy(A, COUNTS)
    assert new == pytest.approx([90, 80, 85])
    assert math.isnan(old[0])
    assert old[1:] == pytest.approx([70, 55])


def test_summarize():
    s = metrics.summarize(A, COUNTS)
    assert s == pytest.approx({"avg_incremental_accuracy": 235 / 3, "last_accuracy": 70,
                               "forgetting": 30, "bwt": -30})
    assert all(type(v) is float for v in s.values())


def test_single_experience_forgets_nothing():
    # Convention: forgetting and BWT are 0.0 with one experience (nothing can be forgotten).
    one = [[42.0]]
    assert metrics.seen_accuracy(one, [7]) == pytest.approx([42])
    assert metrics.summarize(one, [7]) == {"avg_incremental_accuracy": 42.0, "last_accuracy": 42.0,
                                           "forgetting": 0.0, "bwt": 0.0}
    assert metrics.forgetting_per_experience(one).shape == (0,)
    old, new = metrics.old_new_accuracy(one, [7])
    assert math.isnan(old[0]) and new[0] == 42


def test_entries_above_the_diagonal_are_ignored():
    full = np.array(A)
    full[0, 1:] = 5.0  # e.g. evaluated on future classes; must not count
    assert metrics.summarize(full, COUNTS) == pytest.approx(metrics.summarize(A, COUNTS))


@pytest.mark.parametrize(
    "matrix, counts, message",
    [
        ([[1, 2, 3], [4, 5, 6]], None, "square"),
        ([90, 80], None, "square"),
        (np.zeros((0, 0)), None, "empty"),
        ([[90, nan], [nan, 80]], None, "A[1][0]"),
        ([[nan, nan], [70, 80]], None, "A[0][0]"),
        ([[90, nan], [70, 180]], None, "[0, 100]"),
        ([[90, nan], [-1, 80]], None, "[0, 100]"),
        ([[90, nan], [70, 80]], [10], "one entry per experience"),
        ([[90, nan], [70, 80]], [10, 0], "positive integers"),
        ([[90, nan], [70, 80]], [10, 2.5], "positive integers"),
    ],
)
def test_invalid_input_raises(matrix, counts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        if counts is None:
            metrics.forgetting(matrix)
        else:
            metrics.seen_accuracy(matrix, counts)


# --------------------------------------------------------------------------- validate's contract (mutation survivors)


def test_validate_copies_casts_and_accepts_the_edges():
    A = np.array([[80, 0], [60, 70]])  # integers, and a 0 above the diagonal
    M, c = metrics.validate(A, [1, 3])  # a test count of 1 is a valid count
    assert M.dtype == np.float64 and np.isnan(M[0, 1]) and M[1, 0] == 60.0
    assert A[0, 1] == 0 and A.dtype.kind == "i"  # the caller's array is left alone
    F = np.array([[80.0, 0.0], [60.0, 70.0]])  # already float64: a copy must still be made
    metrics.validate(F)
    assert F[0, 1] == 0.0
    assert c.tolist() == [1.0, 3.0]
    # 0 and 100 are percentages; so are the ends of the slack (rounding noise); just past them is not
    for ok in (0.0, 100.0, -1e-6, 100 + 1e-6):
        metrics.validate([[ok]])
    with pytest.raises(ValueError, match="is not a percentage"):
        metrics.validate([[100.5]])
    with pytest.raises(ValueError, match="is not a percentage"):
        metrics.validate([[100 + 2e-6]])
    with pytest.raises(ValueError, match=r"A\[0\]\[0\] = -2e-06 is not a percentage"):
        metrics.validate([[-2e-6]])
    with pytest.raises(ValueError, match=r"accuracy matrix is empty \(T = 0\)"):
        metrics.validate(np.zeros((0, 0)))
    # a summary from an integer matrix is the float one's: Avg of [80, (60*1 + 70*3)/4 = 67.5]
    assert metrics.summarize(A, [1, 3])["avg_incremental_accuracy"] == pytest.approx((80 + 67.5) / 2)
