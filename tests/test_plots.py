"""The figures themselves: each strategy's line stays visible under another's, a zero-height bar is drawn,
and one figure holds every strategy's accuracy matrix."""
from __future__ import annotations

import numpy as np
from matplotlib.image import AxesImage

from lamm_cl import plots
from lamm_cl.results import RunRecord

nan = float("nan")
# lamm and coop score the same everywhere (an easy split): their lines coincide point for point
SAME = [[90, nan, nan], [80, 85, nan], [70, 75, 80]]
# zeroshot forgets nothing: its forgetting bars are exactly 0
FLAT = [[60, nan, nan], [60, 50, nan], [60, 50, 40]]


def record(strategy: str, matrix) -> RunRecord:
    A = np.array(matrix, dtype=float)
    return RunRecord(benchmark="toy", strategy=strategy, seed=0, matrix=A, test_counts=[10, 10, 10],
                     experiences=[[0], [1], [2]], class_names=["a", "b", "c"], class_order=[0, 1, 2],
                     per_class_accuracy=list(A[-1]), config={}, matrix_task_aware=A, info={})


GROUPS = {"zeroshot": [record("zeroshot", FLAT)], "coop": [record("coop", SAME)], "lamm": [record("lamm", SAME)]}
COLORS = plots.strategy_colors(list(GROUPS))


def styles_of(ax) -> dict:
    return {line.get_label(): (line.get_marker(), line.get_linestyle()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_coinciding_lines_differ_in_marker_and_dash():
    fig = plots.plot_seen_accuracy(GROUPS, COLORS)
    seen = styles_of(fig.axes[0])
    assert set(seen) == set(GROUPS)
    assert seen["lamm"][0] != seen["coop"][0] and seen["lamm"][1] != seen["coop"][1]
    fig = plots.plot_old_new_accuracy(GROUPS, COLORS)
    for ax in fig.axes[:2]:
        styles = styles_of(ax)
        assert styles["lamm"] != styles["coop"] and len(set(styles.values())) == len(GROUPS)


def test_twenty_strategies_get_twenty_styles():
    assert len(set(plots.strategy_styles([f"s{i}" for i in range(20)]).values())) == 20


def test_zero_height_bar_is_drawn_with_its_value():
    fig = plots.plot_final_accuracy_forgetting(GROUPS, COLORS)
    forgetting = fig.axes[1]
    zeroshot = COLORS["zeroshot"]
    marks = [line for line in forgetting.get_lines() if line.get_color() == zeroshot
             and list(line.get_ydata()) == [0, 0]]
    assert len(marks) == 2  # both old experiences: zeroshot forgot nothing
    assert [t.get_text() for t in forgetting.texts].count("0.0") == 2
    assert all(abs(p.get_height()) > 0 for p in fig.axes[0].patches)  # final accuracy: no mark needed
    assert [t.get_text() for t in fig.axes[0].texts] == []


def test_one_figure_holds_every_strategy_matrix():
    fig = plots.plot_accuracy_matrices(GROUPS)
    panels = [ax for ax in fig.axes if ax.get_visible() and any(isinstance(a, AxesImage) for a in ax.get_children())]
    assert [ax.get_title().split(" ")[0] for ax in panels] == list(GROUPS)
    shown = panels[0].get_images()[0].get_array()
    assert shown[2, 0] == 60 and np.ma.is_masked(shown[0, 2])
    assert any(t.get_text() == "70" for t in panels[2].texts)  # lamm's A[2][0], written in its cell
