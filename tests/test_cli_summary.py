"""The summary table printed at the end of `lamm-cl run`."""
import numpy as np

from lamm_cl.cli import _summary_table
from lamm_cl.results import RunRecord


def _rec(strategy, seed, A):
    return RunRecord(benchmark="b", strategy=strategy, seed=seed, matrix=np.array(A, dtype=float),
                     test_counts=[10, 10], experiences=[[0], [1]], class_names=["a", "b"], class_order=[0, 1],
                     per_class_accuracy=[0.0, 0.0], config={}, matrix_task_aware=np.array(A, dtype=float))


def test_rows_per_seed_and_a_mean_row_per_strategy():
    nan = float("nan")
    # seed 0: a = [80, (40+60)/2 = 50] -> Avg 65, Last 50, forgetting 80-40 = 40, BWT -40
    # seed 1: a = [90, (70+70)/2 = 70] -> Avg 80, Last 70, forgetting 20, BWT -20
    table = _summary_table([_rec("lamm", 0, [[80, nan], [40, 60]]), _rec("lamm", 1, [[90, nan], [70, 70]])])
    lines = table.splitlines()
    assert lines[2].split() == ["lamm", "0", "65.00", "50.00", "40.00", "-40.00"]
    assert lines[3].split() == ["lamm", "1", "80.00", "70.00", "20.00", "-20.00"]
    assert lines[-1].split() == ["lamm", "mean", "72.50", "60.00", "30.00", "-30.00"]


def test_no_mean_row_with_one_seed():
    table = _summary_table([_rec("zeroshot", 0, [[50, float("nan")], [50, 50]])])
    assert "mean" not in table and len(table.splitlines()) == 3
