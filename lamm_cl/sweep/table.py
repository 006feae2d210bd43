"""The table of a whole sweep: rows strategies, columns datasets and their mean, cells Last and
Avg as mean ± std over seeds, one table per grid cell; from result files only.

``build_table(output)`` writes ``<output>/table.md``, ``<output>/table.csv`` and one plot per
grid cell, ``<output>/plots/last_per_dataset[_<cell>].png`` (Last accuracy per dataset and
strategy); when the grid varies ``benchmark.shots``, ``<output>/plots/shot_curve.png`` too (the LAMM
paper's figure: accuracy against shots, a panel per dataset and the mean; :func:`shot_curves`).
Published figures are put beside the table where they match: a dataset's own (Continual-CLIP's
CIFAR-100) under that dataset, an 11-CoOp-dataset average (the LAMM paper's) under the mean when
the table holds exactly the 11 CoOp datasets.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lamm_cl.errors import UserError
from lamm_cl.formatting import csv_number, csv_text, mean_std, mean_std_text, md_row, md_rule
from lamm_cl.report import DEFAULT_BASELINE, read_runs
from lamm_cl.safe_io import atomic_write_text
from lamm_cl.sweep.spec import read_sweep

METRICS = (("last_accuracy", "Last"), ("avg_incremental_accuracy", "Avg"))
MEAN = "mean"


def collect(output: str | Path) -> dict[str, dict]:
    """``{cell: {"datasets": [...], "strategies": [...], "values": {(strategy, dataset): {metric: {seed: v}}},
    "configs": {dataset: config}, "n_experiences": {dataset: T}}}`` from the finished runs of a sweep."""
    sweep = read_sweep(output)
    cells: dict[str, dict] = {}
    folders = {}
    for j in sweep.jobs:  # keep the sweep's order of benchmarks and strategies
        folders.setdefault((j.cell, j.benchmark), j.results)
        c = cells.setdefault(j.cell, {"datasets": [], "strategies": [], "values": {}, "configs": {},
                                      "n_experiences": {}})
        if j.benchmark not in c["datasets"]:
            c["datasets"].append(j.benchmark)
        if j.strategy not in c["strategies"]:
            c["strategies"].append(j.strategy)
    wanted = {(j.cell, j.benchmark, j.strategy, j.seed) for j in sweep.jobs}
    for (cell, bench), folder in folders.items():
        if not Path(folder).is_dir():
            continue
        for run in read_runs(folder):
            if (cell, bench, run.strategy, run.seed) not in wanted:
                continue  # a run the sweep did not ask for (an older grid, a manual run)
            c = cells[cell]
            s = run.summary()
            slot = c["values"].setdefault((run.strategy, bench), {m: {} for m, _ in METRICS})
            for m, _ in METRICS:
                slot[m][run.seed] = s[m]
            c["configs"].setdefault(bench, run.config)
            c["n_experiences"].setdefault(bench, run.n_experiences)
    if not any(c["values"] for c in cells.values()):
        raise UserError(f"{output}: no finished runs of this sweep yet (see lamm-cl sweep SWEEP.yaml --status)")
    return cells


def cell_rows(c: dict) -> list[dict[str, Any]]:
    """One row per strategy: ``{strategy, (dataset, metric): (mean, std, n_seeds)}`` including the mean column.

    The mean column averages, seed by seed, over the datasets (only seeds every dataset has),
    then gives mean ± std over those seeds; it is blank when a dataset has no finished run.
    """
    rows = []
    for strategy in c["strategies"]:
        row: dict[str, Any] = {"strategy": strategy}
        for m, _ in METRICS:
            per_dataset = [c["values"].get((strategy, d), {}).get(m, {}) for d in c["datasets"]]
            for d, seeds in zip(c["datasets"], per_dataset):
                row[d, m] = (*mean_std(list(seeds.values())), len(seeds)) if seeds else (math.nan, math.nan, 0)
            common = set.intersection(*(set(s) for s in per_dataset)) if all(per_dataset) else set()
            if common:
                row[MEAN, m] = (*mean_std([float(np.mean([s[k] for s in per_dataset])) for k in sorted(common)]),
                                len(common))
            else:
                row[MEAN, m] = (math.nan, math.nan, 0)
        rows.append(row)
    return rows


def published_rows(c: dict) -> list[dict[str, Any]]:
    """Published figures that match this table: ``{label, method, (column, metric): value}``."""
    from lamm_cl.report import COOP_DATASETS, match_published

    by_label: dict[str, dict[str, Any]] = {}
    coop, methods = {}, {}
    for d in c["datasets"]:
        cfg = c["configs"].get(d)
        if cfg is None:
            continue
        for p in match_published(cfg, c["n_experiences"][d]):
            label = f"published: {p['method']} ({p['source'].split(',')[0]})"
            metric = {"accuracy": "last_accuracy"}.get(p["metric"], p["metric"])
            if p["dataset"] == "coop11":
                coop.setdefault(label, {})[d, metric] = float(p["value"])
                methods[label] = p["method"]
            else:
                by_label.setdefault(label, {"label": label, "method": p["method"]})[d, metric] = float(p["value"])
    datasets = {str((c["configs"].get(d) or {}).get("benchmark", {}).get("dataset", "")) for d in c["datasets"]}
    if datasets == set(COOP_DATASETS) and len(c["datasets"]) == len(COOP_DATASETS):
        for label, vals in coop.items():  # an 11-dataset average: comparable with our mean column only
            row = by_label.setdefault(label, {"label": label, "method": methods[label]})
            for (_, metric), v in vals.items():
                row[MEAN, metric] = v
    return list(by_label.values())


def _columns(c: dict) -> list[str]:
    return [*c["datasets"], MEAN]


def _markdown(cells: dict[str, dict], plots: dict[str, str]) -> str:
    lines = ["# Sweep results", "",
             "Rows: strategies. Columns: each benchmark's Last (accuracy after the last experience, %) and Avg "
             "(average incremental accuracy, %), mean ± std over seeds, then their mean over the benchmarks "
             "(averaged seed by seed). Published figures, where they match the dataset, split, shots and "
             "weights, are shown below each table; they come from other code bases.", ""]
    for cell, c in cells.items():
        if cell:
            lines += [f"## {cell}", ""]
        header = ["strategy"] + [f"{d} {name}" for d in _columns(c) for _, name in METRICS]
        lines += [md_row(header), md_rule(len(header))]
        for row in cell_rows(c):
            cells_text = [mean_std_text(*row[d, m][:2]) for d in _columns(c) for m, _ in METRICS]
            lines.append(md_row([row["strategy"], *cells_text]))
        for row in published_rows(c):
            cells_text = [f"{row[d, m]:.2f}" if (d, m) in row else "" for d in _columns(c) for m, _ in METRICS]
            lines.append(md_row([row["label"], *cells_text]))
        seeds = sorted({n for row in cell_rows(c) for d in _columns(c) for m, _ in METRICS
                        for n in [row[d, m][2]] if n})
        lines += ["", f"Seeds per cell: {', '.join(map(str, seeds)) or 'none'}.", ""]
        if cell in plots:
            lines += [f"![Last accuracy per dataset]({plots[cell]})", ""]
    return "\n".join(lines)


def _csv(cells: dict[str, dict]) -> str:
    rows: list[list[Any]] = [["cell", "strategy", "dataset", "last_mean", "last_std", "avg_mean", "avg_std", "n_seeds"]]
    for cell, c in cells.items():
        for row in cell_rows(c):
            for d in _columns(c):
                (lm, ls, n), (am, as_, _) = row[d, "last_accuracy"], row[d, "avg_incremental_accuracy"]
                rows.append([cell, row["strategy"], d, csv_number(lm), csv_number(ls), csv_number(am),
                             csv_number(as_), n])
        for row in published_rows(c):
            for d in _columns(c):
                if (d, "last_accuracy") in row or (d, "avg_incremental_accuracy") in row:
                    rows.append([cell, row["label"], d, csv_number(row.get((d, "last_accuracy"), math.nan)), "",
                                 csv_number(row.get((d, "avg_incremental_accuracy"), math.nan)), "", ""])
    return csv_text(rows)


def _plot(c: dict, title: str):
    from lamm_cl import plots

    fig, axes = plots._figure(max(5.0, 1.2 * len(c["datasets"]) + 2), 3.6)
    ax = axes[0]
    rows = cell_rows(c)
    colors = plots.strategy_colors([r["strategy"] for r in rows])
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(c["datasets"]))
    for i, row in enumerate(rows):
        means = [row[d, "last_accuracy"][0] for d in c["datasets"]]
        stds = [0.0 if math.isnan(row[d, "last_accuracy"][1]) else row[d, "last_accuracy"][1] for d in c["datasets"]]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               color=colors[row["strategy"]], label=row["strategy"])
    ax.set_xticks(x)
    ax.set_xticklabels(c["datasets"], rotation=30, ha="right")
    ax.set_ylabel("Last accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=min(4, len(rows)))
    return fig


# The LAMM paper's methods (published.csv's `method`) and the strategy each is drawn beside on the shot curve.
PUBLISHED_AS = {"zero-shot CLIP": "zeroshot", "CoOp": "coop", "LAMM": "lamm", "CoOp+LAMM": "coop_lamm",
                "MaPLe": "maple", "MaPLe+LAMM": "maple_lamm"}
SHOTS_KEY = "benchmark.shots="


def shot_curves(output: str | Path, cells: dict[str, dict]) -> dict[tuple, dict]:
    """The shot curves of a sweep whose grid varies ``benchmark.shots``, one figure's data per setting of
    the grid's other axes: ``{other overrides: {"curves": {panel: {strategy: {shots: (mean, std)}}},
    "published": {panel: {label: {shots: value}}}, "published_as": {label: strategy}}}``.

    Panels are the benchmarks (named by their dataset where no two share one), then ``mean``, the
    seed-by-seed mean over them (:func:`cell_rows`). Accuracy is Last: with one experience, the accuracy.
    Empty when the grid does not vary the shots (fewer than two shot counts).
    """
    sweep = read_sweep(output)
    shots_of: dict[str, tuple[int, tuple]] = {}
    for j in sweep.jobs:
        given = [o for o in j.overrides if o.startswith(SHOTS_KEY)]
        if given:
            shots_of[j.cell] = (int(given[0][len(SHOTS_KEY):]), tuple(o for o in j.overrides if o not in given))
    if len({k for k, _ in shots_of.values()}) < 2:
        return {}
    figures: dict[tuple, dict] = {}
    for cell, c in cells.items():
        if cell not in shots_of:
            continue
        k, rest = shots_of[cell]
        fig = figures.setdefault(rest, {"curves": {}, "published": {}, "published_as": {}})
        datasets = [str((c["configs"].get(d) or {}).get("benchmark", {}).get("dataset") or d) for d in c["datasets"]]
        names = datasets if len(set(datasets)) == len(datasets) else list(c["datasets"])
        panel = dict(zip(c["datasets"], names), **{MEAN: MEAN})
        for row in cell_rows(c):
            for col in _columns(c):
                mean, std, n = row[col, "last_accuracy"]
                if n:
                    fig["curves"].setdefault(panel[col], {}).setdefault(row["strategy"], {})[k] = (mean, std)
        for row in published_rows(c):
            for col in _columns(c):
                if (col, "last_accuracy") in row:
                    fig["published"].setdefault(panel[col], {}).setdefault(row["label"], {})[k] = \
                        row[col, "last_accuracy"]
                    if row["method"] in PUBLISHED_AS:
                        fig["published_as"][row["label"]] = PUBLISHED_AS[row["method"]]
    for fig in figures.values():  # panels in the sweep's order of benchmarks, the mean last
        order = [p for p in fig["curves"] if p != MEAN] + ([MEAN] if MEAN in fig["curves"] else [])
        fig["curves"] = {p: fig["curves"][p] for p in order}
    return figures


def paired_lines(output: str | Path, cells: dict[str, dict], baseline: Optional[str] = None) -> list[str]:
    """Each strategy minus ``baseline`` per grid cell, paired on (benchmark, seed): the report's section."""
    from lamm_cl import stats
    from lamm_cl.api import load_results

    res = load_results(output)
    strategies = list(dict.fromkeys(res.summary.strategy))
    if baseline is not None and baseline not in strategies:
        raise UserError(f"--baseline {baseline}: no {baseline} runs in {output}; it holds {', '.join(strategies)}")
    baseline = baseline or DEFAULT_BASELINE
    if baseline not in strategies:
        return ["## Paired differences", "",
                f"No `{baseline}` runs to compare against (`lamm-cl report DIR --baseline NAME`).", ""]
    lines = ["## Paired differences", "",
             f"Each strategy minus `{baseline}` on Last, paired on the same benchmark and seed (percentage points): "
             f"mean difference, {stats.CONFIDENCE:.0%} percentile-bootstrap interval ({stats.N_RESAMPLES} seeded "
             "resamples), exact two-sided sign-flip p-value, number of pairs.", ""]
    for cell in cells:
        if cell:
            lines += [f"{cell}:", ""]
        for name in strategies:
            if name == baseline:
                continue
            try:
                lines.append(f"- {res.compare(name, baseline, 'last', grid=cell if cell else None)}")
            except UserError as e:  # no common (benchmark, seed)
                lines.append(f"- {name} − {baseline}: {e}")
        lines.append("")
    return lines


def build_table(output: str | Path, formats: tuple[str, ...] = ("png",), baseline: Optional[str] = None) -> list[Path]:
    """Write ``table.md``, ``table.csv`` and the per-dataset Last plot(s) of the sweep in ``output``.

    Args:
        baseline: the strategy every other one is compared with in the paired-differences section
            (default: ``lamm`` when the sweep holds it).

    Returns:
        Every path written.

    Raises:
        UserError: not a sweep output folder, no finished run of the sweep in it, or ``baseline``
            names no strategy of the sweep (nothing is written then).
    """
    from lamm_cl import plots

    output = Path(output)
    cells = collect(output)
    cells = {k: c for k, c in cells.items() if c["values"]}
    paired = paired_lines(output, cells, baseline)  # before anything is written: a wrong --baseline refuses
    written: list[Path] = []
    links: dict[str, str] = {}
    for cell, c in cells.items():
        stem = "last_per_dataset" + (f"_{plots.safe_name(cell)}" if cell else "")
        written += plots.save_figure(_plot(c, "Last accuracy per dataset" + (f" ({cell})" if cell else "")),
                                     output / "plots" / stem, formats)
        links[cell] = f"plots/{stem}.{formats[0]}"
    curve_links = []
    for rest, fig in shot_curves(output, cells).items():
        stem = "shot_curve" + (f"_{plots.safe_name('_'.join(rest))}" if rest else "")
        title = "Accuracy against shots per class" + (f" ({', '.join(rest)})" if rest else "")
        written += plots.save_figure(plots.plot_shot_curve(fig["curves"], fig["published"], fig["published_as"],
                                                           title), output / "plots" / stem, formats)
        curve_links.append(f"![{title}](plots/{stem}.{formats[0]})")
    written.append(atomic_write_text(output / "table.csv", _csv(cells)))
    curve_text = ["## Shot curve", "", "Accuracy (Last) against shots per class on a log-2 axis, mean ± std "
                  "over seeds; stars: published figures.", "", *curve_links, ""] if curve_links else []
    text = _markdown(cells, links).rstrip("\n") + "\n\n" + "\n".join([*curve_text, *paired])
    written.append(atomic_write_text(output / "table.md", text.rstrip("\n") + "\n"))
    return written


def table_lines(output: str | Path) -> Optional[list[str]]:
    """The markdown table, for printing after a sweep (None when nothing finished yet)."""
    try:
        return _markdown(collect(output), {}).splitlines()
    except UserError:
        return None
