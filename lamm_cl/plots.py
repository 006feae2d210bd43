"""Figures drawn from result files (never from strategies), saved deterministically.

Every function takes runs grouped by strategy (``{strategy: [RunRecord, ...]}``
in display order) and returns a :class:`matplotlib.figure.Figure`; nothing
touches pyplot's global state, so importing or calling this module never
changes the user's backend. :func:`save_figure` writes a figure atomically and
strips dates from the file, so drawing the same results twice gives the same
bytes.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lamm_cl import metrics
from lamm_cl.results import RunRecord
from lamm_cl.safe_io import atomic_write_bytes

__all__ = [
    "FORMATS",
    "strategy_colors",
    "safe_name",
    "save_figure",
    "plot_seen_accuracy",
    "plot_accuracy_matrix",
    "plot_accuracy_matrices",
    "plot_final_accuracy_forgetting",
    "plot_old_new_accuracy",
    "plot_shot_curve",
]

Groups = Mapping[str, Sequence[RunRecord]]

FORMATS = ("png", "svg", "pdf")

# Without these, PNG/PDF/SVG files carry the matplotlib version and a creation
# date, and SVG element ids are random: two identical reports would differ.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}
_RC = {"svg.hashsalt": "lamm-cl", "svg.fonttype": "path", "pdf.fonttype": 42}
_DPI = 150


def strategy_colors(strategies: Sequence[str]) -> Dict[str, Tuple[float, float, float, float]]:
    """One colour per strategy, fixed by its position in ``strategies`` (tab10, then tab20)."""
    cmap = matplotlib.colormaps["tab10" if len(strategies) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(strategies)}


# Marker and dash per strategy, by position: two strategies with the same numbers (lamm and coop on an easy
# split) draw on top of each other, and a colour alone then hides the one underneath.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DASHES = ("-", "--", "-.", ":")


def strategy_styles(strategies: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """(marker, line style) per strategy, fixed by its position in ``strategies``; no two alike up to 20."""
    return {s: (_MARKERS[i % len(_MARKERS)], _DASHES[(i // len(_MARKERS) + i) % len(_DASHES)])
            for i, s in enumerate(strategies)}


def safe_name(name: str) -> str:
    """``name`` reduced to characters safe in a file name (for ``accuracy_matrix_<strategy>``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "strategy"


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png",)) -> List[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, atomically and without dates.

    The figure is rendered into memory and written with
    :func:`lamm_cl.safe_io.atomic_write_bytes` (temporary name, then rename).

    Returns:
        The paths written, one per format.
    """
    out = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown figure format {fmt!r}; choose from {', '.join(FORMATS)}")
        buf = io.BytesIO()
        with matplotlib.rc_context(_RC):
            if fmt == "png" and type(fig.canvas) is FigureCanvasAgg:
                _write_png(fig, buf)
            else:
                fig.savefig(buf, format=fmt, dpi=_DPI, metadata=_METADATA[fmt])
        out.append(atomic_write_bytes(Path(stem).with_name(f"{Path(stem).name}.{fmt}"), buf.getvalue()))
    return out


def _write_png(fig: Figure, buf: io.BytesIO) -> None:
    """``fig`` as PNG into ``buf``, drawn once: the bytes ``fig.savefig(buf, format="png", dpi=_DPI,
    metadata=...)`` writes, in about half the time.

    For a figure with a layout engine (ours are constrained), savefig draws twice: once with rendering
    switched off, only to lay the figure out, then again to render it with the layout frozen
    (matplotlib/backend_bases.py, ``FigureCanvasBase.print_figure``). Drawing once lays it out at the
    same point of the draw, before any artist, so the pixels, and then the bytes, are the same; the
    byte-identical rebuild of results/quickstart-reference/ (README) checks it.
    """
    dpi = fig.dpi
    fig.dpi = _DPI  # as savefig: the figure is drawn at the file's resolution
    try:
        fig.canvas.draw()
        matplotlib.image.imsave(buf, fig.canvas.buffer_rgba(), format="png", origin="upper", dpi=_DPI,
                                metadata=_METADATA["png"])
    finally:
        fig.dpi = dpi


def _figure(width: float, height: float, ncols: int = 1, sharey: bool = False):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly: no pyplot, no backend switch
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, axes


def _mean_std(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray | None]:
    """Mean over seeds (axis 0) and the sample std (ddof=1), or ``None`` with a single seed."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else None
    return mean, std


def _n_experiences(groups: Groups) -> int:
    return next(iter(groups.values()))[0].n_experiences


def _experience_ticks(ax, groups: Groups, label_classes: bool = True) -> None:
    T = _n_experiences(groups)
    x = np.arange(T)
    if T > 25:  # too many to label each; let matplotlib choose
        ax.set_xlabel("Experience")
        return
    ax.set_xticks(x)
    if label_classes:
        first = next(iter(groups.values()))[0]
        seen = np.cumsum([len(e) for e in first.experiences])
        ax.set_xticklabels([f"{i}\n({n})" for i, n in zip(x, seen)])
        ax.set_xlabel("Experience (classes seen)")
    else:
        ax.set_xlabel("Experience")


def _line(ax, x, values, color, label, style: Tuple[str, str] = ("o", "-")) -> None:
    mean, std = _mean_std(values)
    marker, linestyle = style
    ax.plot(x, mean, color=color, label=label, marker=marker, markersize=4.5, linestyle=linestyle, linewidth=1.6,
            markerfacecolor="none" if marker not in ("o", "*") else color)
    if std is not None:
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


def _legend(fig: Figure, ax) -> None:
    # Outside the axes, so it never hides a line or a bar.
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title="Strategy", loc="outside right upper", fontsize="small")


def _seeds_note(groups: Groups) -> str:
    n = sorted({len(runs) for runs in groups.values()})
    if n == [1]:
        return "one seed"
    return "mean ± std over seeds"


def plot_seen_accuracy(groups: Groups, colors: Mapping[str, object]) -> Figure:
    """Accuracy on all classes seen so far after each experience; one line per strategy, ± std band."""
    fig, (ax,) = _figure(7.0, 4.4)
    T = _n_experiences(groups)
    x = np.arange(T)
    styles = strategy_styles(list(groups))
    for strategy, runs in groups.items():
        values = [metrics.seen_accuracy(r.matrix, r.test_counts) for r in runs]
        _line(ax, x, values, colors[strategy], strategy, styles[strategy])
    _experience_ticks(ax, groups)
    ax.set_ylabel("Accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Seen-class accuracy after each experience\n({_seeds_note(groups)})")
    _legend(fig, ax)
    return fig


def plot_accuracy_matrix(strategy: str, runs: Sequence[RunRecord]) -> Figure:
    """One strategy's accuracy matrix, mean over its seeds, as an annotated heatmap."""
    A = np.mean([r.matrix for r in runs], axis=0)
    T = A.shape[0]
    size = min(3.5 + 0.55 * T, 16.0)
    fig, (ax,) = _figure(size + 1.2, size)
    masked = np.ma.masked_invalid(A)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(masked, cmap=cmap, vmin=0, vmax=100, origin="upper")
    fontsize = max(4.0, min(9.0, 90.0 / T))
    for i in range(T):
        for j in range(i + 1):
            # Dark text on the bright (yellow) end of viridis, light text elsewhere.
            ax.text(j, i, f"{A[i, j]:.1f}", ha="center", va="center", fontsize=fontsize,
                    color="black" if A[i, j] > 60 else "white")
    ticks = np.arange(T)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    return _finish_matrix(fig, ax, im, "experience", lambda seeds: f"Accuracy matrix: {strategy} ({seeds})", runs)


def _finish_matrix(fig: Figure, ax, im, unit: str, title: Callable[[str], str], runs: Sequence[RunRecord]) -> Figure:
    """An accuracy matrix's axis names (per ``unit``: experience or dataset), title (``title`` of the seeds
    it averages) and colour bar."""
    ax.set_xlabel(f"Evaluated on {unit}")
    ax.set_ylabel(f"After training {unit}")
    ax.set_title(title("1 seed" if len(runs) == 1 else f"mean over {len(runs)} seeds"))
    fig.colorbar(im, ax=ax, label="Accuracy (%)", shrink=0.85)
    return fig


ZERO_BAR = 0.5  # percentage points: a bar lower than this is drawn as a thick mark with its value


def plot_accuracy_matrices(groups: Groups) -> Figure:
    """Every strategy's accuracy matrix (mean over its seeds) side by side, one colour scale, in one figure."""
    n = len(groups)
    T = _n_experiences(groups)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    side = min(2.2 + 0.35 * T, 6.0)
    fig = Figure(figsize=(side * ncols + 1.0, side * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    fontsize = max(3.5, min(8.0, 60.0 / T)) / max(1.0, ncols / 3)
    im = None
    for ax, (strategy, runs) in zip(axes, groups.items()):
        A = np.mean([r.matrix for r in runs], axis=0)
        im = ax.imshow(np.ma.masked_invalid(A), cmap=cmap, vmin=0, vmax=100, origin="upper")
        if T <= 12:  # numbers in the cells while they stay legible
            for i in range(T):
                for j in range(i + 1):
                    ax.text(j, i, f"{A[i, j]:.0f}", ha="center", va="center", fontsize=fontsize,
                            color="black" if A[i, j] > 60 else "white")
        ax.set_xticks(np.arange(T) if T <= 25 else [])
        ax.set_yticks(np.arange(T) if T <= 25 else [])
        ax.set_title(f"{strategy} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", fontsize="small")
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[(nrows - 1) * ncols:n]:
        ax.set_xlabel("Evaluated on experience")
    for ax in axes[:n:ncols]:
        ax.set_ylabel("After experience")
    fig.colorbar(im, ax=list(axes[:n]), label="Accuracy (%)", shrink=0.85)
    fig.suptitle("Accuracy matrices of every strategy")
    return fig


def _grouped_bars(ax, groups: Groups, colors, per_run, n_groups: int) -> None:
    n = len(groups)
    width = 0.8 / max(n, 1)
    x = np.arange(n_groups)
    for k, (strategy, runs) in enumerate(groups.items()):
        mean, std = _mean_std([per_run(r) for r in runs])
        at = x + (k - (n - 1) / 2) * width
        ax.bar(at, mean, width, yerr=std, color=colors[strategy],
               label=strategy, capsize=2 if std is not None else 0, error_kw={"linewidth": 0.8})
        for xi, m in zip(at, np.atleast_1d(mean)):
            if np.isfinite(m) and abs(m) < ZERO_BAR:  # a bar too low to see reads as a missing one: mark it
                ax.plot([xi - width / 2, xi + width / 2], [0, 0], color=colors[strategy], linewidth=3,
                        solid_capstyle="butt")
                ax.text(xi, 0, f"{m:.1f}", ha="center", va="bottom", fontsize="x-small", rotation=90)
    ax.set_xticks(x)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_final_accuracy_forgetting(groups: Groups, colors: Mapping[str, object]) -> Figure:
    """Per experience: accuracy after the last experience, and how much of it was forgotten.

    Left: ``A[T-1][j]`` for every experience ``j``; right: Chaudhry et al.'s
    forgetting of each old experience (:func:`lamm_cl.metrics.forgetting_per_experience`).
    Bars grouped by experience, one per strategy, with ± std over seeds.
    """
    T = _n_experiences(groups)
    fig, (left, right) = _figure(min(6.0 + 1.0 * T, 18.0), 4.4, ncols=2)
    _grouped_bars(left, groups, colors, lambda r: np.asarray(r.matrix)[-1], T)
    left.set_xlabel("Experience")
    left.set_ylabel("Final accuracy (%)")
    left.set_ylim(0, 100)
    left.set_title("Accuracy after the last experience")
    if T > 1:
        _grouped_bars(right, groups, colors, lambda r: metrics.forgetting_per_experience(r.matrix), T - 1)
        right.axhline(0, color="black", linewidth=0.8)
    else:
        right.text(0.5, 0.5, "nothing to forget:\na single experience", ha="center", va="center",
                   transform=right.transAxes)
    right.set_xlabel("Experience")
    right.set_ylabel("Forgetting (percentage points)")
    right.set_title("Forgetting of each old experience")
    _legend(fig, left)
    fig.suptitle(f"Final accuracy and forgetting per experience ({_seeds_note(groups)})")
    return fig


def plot_old_new_accuracy(groups: Groups, colors: Mapping[str, object]) -> Figure:
    """Accuracy on old classes (earlier experiences, pooled) and on the new ones, after each experience."""
    T = _n_experiences(groups)
    x = np.arange(T)
    fig, (ax_old, ax_new) = _figure(11.0, 4.4, ncols=2, sharey=True)
    styles = strategy_styles(list(groups))
    for strategy, runs in groups.items():
        pairs = [metrics.old_new_accuracy(r.matrix, r.test_counts) for r in runs]
        if T > 1:
            _line(ax_old, x[1:], [old[1:] for old, _ in pairs], colors[strategy], strategy, styles[strategy])
        _line(ax_new, x, [new for _, new in pairs], colors[strategy], strategy, styles[strategy])
    if T == 1:
        ax_old.text(0.5, 0.5, "no old classes:\na single experience", ha="center", va="center",
                    transform=ax_old.transAxes)
    for ax, title in ((ax_old, "Old classes (earlier experiences)"), (ax_new, "New classes (this experience)")):
        _experience_ticks(ax, groups)
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.5, T - 0.5)
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
    ax_old.set_ylabel("Accuracy (%)")
    _legend(fig, ax_new)
    fig.suptitle(f"Old- vs new-class accuracy after each experience ({_seeds_note(groups)})")
    return fig


def plot_sequence_matrix(strategy: str, runs: Sequence[RunRecord]) -> Figure:
    """One strategy's ``[T, T]`` matrix on a sequence of datasets (mean over its seeds), every cell annotated,
    the datasets named on the axes. Cells above the diagonal are the datasets not trained yet, "zero-shot
    territory" (what ZSCL's Transfer averages), outlined; where the strategy cannot score them they are
    hatched and marked n/a."""
    A = np.mean([np.asarray(r.matrix, dtype=float) for r in runs], axis=0)
    names = [d["dataset"] for d in runs[0].sequence["datasets"]]
    T = A.shape[0]
    size = min(4.0 + 0.6 * T, 16.0)
    fig, (ax,) = _figure(size + 1.4, size)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(A), cmap=cmap, vmin=0, vmax=100, origin="upper")
    fontsize = max(4.0, min(9.0, 90.0 / T))
    for i in range(T):
        for j in range(T):
            if np.isfinite(A[i, j]):
                ax.text(j, i, f"{A[i, j]:.1f}", ha="center", va="center", fontsize=fontsize,
                        color="black" if A[i, j] > 60 else "white")
            else:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                                          edgecolor="0.7", linewidth=0))
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=fontsize, color="0.4")
    # the staircase between the diagonal and the cells above it: left of it was trained, right of it not yet
    xs, ys = [-0.5], [-0.5]
    for k in range(T):
        xs += [k + 0.5, k + 0.5]
        ys += [k - 0.5, k + 0.5]
    ax.plot(xs, ys, color="red", linewidth=1.5)
    if T > 1:
        ax.text(T - 1.0, 0.0 - 0.35, "zero-shot territory\n(not trained yet)", ha="right", va="top",
                fontsize=fontsize, color="red")
    ax.set_xticks(np.arange(T), names, rotation=45, ha="right")
    ax.set_yticks(np.arange(T), [f"after {n}" for n in names])
    evaluation = runs[0].sequence["evaluation"]
    return _finish_matrix(fig, ax, im, "dataset", lambda seeds: f"{strategy} on the sequence ({evaluation}, {seeds})",
                          runs)


# Curves: panel -> strategy -> shots -> (mean, std over seeds); std NaN with one seed.
ShotCurves = Mapping[str, Mapping[str, Mapping[int, Tuple[float, float]]]]


def plot_shot_curve(curves: ShotCurves, published: Mapping[str, Mapping[str, Mapping[int, float]]] | None = None,
                    published_as: Mapping[str, str] | None = None, title: str = "") -> Figure:
    """Accuracy against shots per class, one panel per dataset (in ``curves``' order, the mean last):
    the LAMM paper's main figure. Shots on a log-2 axis; one line per strategy (mean over seeds) with a
    band of ± one std; published figures as stars.

    Args:
        curves: ``{panel: {strategy: {shots: (mean, std)}}}``; a NaN mean is left out of its line.
        published: ``{panel: {label: {shots: value}}}``, figures from papers (drawn as stars).
        published_as: ``{label: strategy}``: a published figure takes that strategy's colour, and is left
            out when that strategy has no line (a label not in it is drawn in black).
        title: the figure's title.
    """
    published = published or {}
    published_as = published_as or {}
    panels = list(curves)
    strategies = list(dict.fromkeys(s for p in panels for s in curves[p]))
    colors, styles = strategy_colors(strategies), strategy_styles(strategies)
    ncols = min(4, max(1, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.1 * ncols + 1.8, 2.7 * nrows + (0.4 if title else 0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    shots = sorted({k for p in panels for s in curves[p].values() for k in s}
                   | {k for p in published.values() for v in p.values() for k in v})
    for ax, panel in zip(axes, panels):
        for strategy, by_shots in curves[panel].items():
            xs = [k for k in sorted(by_shots) if not np.isnan(by_shots[k][0])]
            if not xs:
                continue
            mean = np.array([by_shots[k][0] for k in xs])
            std = np.array([by_shots[k][1] for k in xs])
            marker, dash = styles[strategy]
            ax.plot(xs, mean, color=colors[strategy], marker=marker, markersize=4, linestyle=dash, linewidth=1.5,
                    label=strategy)
            if np.isfinite(std).any():
                band = np.nan_to_num(std)
                ax.fill_between(xs, mean - band, mean + band, color=colors[strategy], alpha=0.18, linewidth=0)
        for label, by_shots in published.get(panel, {}).items():
            if label in published_as and published_as[label] not in colors:
                continue  # the figure of a strategy this sweep does not run: nothing to compare it with
            color = colors.get(published_as.get(label, ""), "black")
            xs = sorted(by_shots)
            ax.scatter(xs, [by_shots[k] for k in xs], marker="*", s=90, color=color, edgecolors="black",
                       linewidths=0.6, zorder=5, label="published (stars)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
        ax.minorticks_off()
        ax.set_title(panel, fontsize="medium")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[::ncols][:nrows]:
        ax.set_ylabel("Accuracy (%)")
    for ax in axes[max(0, len(panels) - ncols):len(panels)]:
        ax.set_xlabel("Shots per class")
    handles, labels = {}, []
    for ax in axes[:len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, title="Strategy", loc="outside right upper",
               fontsize="small")
    if title:
        fig.suptitle(title)
    return fig

