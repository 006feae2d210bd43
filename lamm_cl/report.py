"""The cross-strategy report: plots, ``summary.csv`` and ``report.md``, from result files only.

:func:`build_report` reads the run folders under a results folder
(``<strategy>/seed<k>/``, see :mod:`lamm_cl.results`) and writes::

    <results_dir>/plots/seen_accuracy.<fmt>
    <results_dir>/plots/accuracy_matrix_<strategy>.<fmt>     one per strategy
    <results_dir>/plots/final_accuracy_forgetting.<fmt>
    <results_dir>/plots/old_new_accuracy.<fmt>
    <results_dir>/summary.csv
    <results_dir>/summary.tex                                a LaTeX table of the summary
    <results_dir>/report.md

It never imports a strategy or a model, so a report can be redrawn long after
the runs, and the same result files always give byte-identical outputs.
Experiences are numbered from 0 everywhere, as in the result files.
"""

from __future__ import annotations

import csv
import io
import math
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from lamm_cl.errors import UserError
from lamm_cl.formatting import csv_number, csv_text, mean_std, mean_std_text, md_table
from lamm_cl.safe_io import atomic_write_text
from lamm_cl.results import (
    SUMMARY_FILE,
    SUMMARY_METRICS,
    RunRecord,
    find_run_dirs,
    find_runs,
)

__all__ = [
    "SUMMARY_CSV_COLUMNS",
    "TASK_AWARE_COLUMNS",
    "protocol_of",
    "weights_lines",
    "COOP_DATASETS",
    "build_report",
    "strategy_order",
    "summary_rows",
    "load_published",
    "match_published",
]

# Task-aware numbers (each experience's test images among its own classes: the protocol of LAMM's
# base->new tables) sit after the headline columns.
TASK_AWARE_METRICS = ["avg_incremental_accuracy", "last_accuracy", "forgetting"]
TASK_AWARE_COLUMNS = [f"task_aware_{m}" for m in TASK_AWARE_METRICS]
SUMMARY_CSV_COLUMNS = ["strategy", "seed", *SUMMARY_METRICS, "n_experiences", *TASK_AWARE_COLUMNS]

DEFAULT_BASELINE = "lamm"  # what the paired differences compare against unless told

# `coop11` in published.csv stands for any of these (the CoOp few-shot suite).
COOP_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)

_METRIC_TITLES = {
    "avg_incremental_accuracy": "Avg (%)",
    "last_accuracy": "Last (%)",
    "forgetting": "Forgetting (pp)",
    "bwt": "BWT (pp)",
    "accuracy": "Accuracy (%)",
    "task_aware_avg_incremental_accuracy": "Task-aware Avg (%)",
    "task_aware_last_accuracy": "Task-aware Last (%)",
    "task_aware_forgetting": "Task-aware Forgetting (pp)",
}


# --------------------------------------------------------------------------- helpers


def _get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _check_formats(formats: Sequence[str]) -> List[str]:
    from lamm_cl.plots import FORMATS

    if isinstance(formats, str):
        formats = [formats]
    out: List[str] = []
    for fmt in formats:
        fmt = str(fmt).lower().lstrip(".")
        if fmt not in FORMATS:
            raise UserError(f"unknown plot format {fmt!r}; choose from {', '.join(FORMATS)}")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise UserError(f"no plot format given; choose from {', '.join(FORMATS)}")
    return out


# --------------------------------------------------------------------------- grouping


def strategy_order(runs: Sequence[RunRecord]) -> List[str]:
    """Display order of the strategies: as listed under ``strategies`` in the runs' configs, others alphabetically.

    The configs are read in the order of ``runs``; a strategy named in none of
    them (e.g. an older run left in the folder) comes after, by name.
    """
    present = {r.strategy for r in runs}
    order: List[str] = []
    for run in runs:
        entries = _get(run.config, "strategies", [])
        if not isinstance(entries, list):
            continue
        for entry in entries:
            name = (entry.get("label") or entry.get("name")) if isinstance(entry, Mapping) else entry
            if isinstance(name, str) and name in present and name not in order:
                order.append(name)
    return order + sorted(present - set(order))


def _group(runs: Sequence[RunRecord]) -> Dict[str, List[RunRecord]]:
    groups: Dict[str, List[RunRecord]] = {}
    for strategy in strategy_order(runs):
        groups[strategy] = sorted((r for r in runs if r.strategy == strategy), key=lambda r: r.seed)
    return groups


def read_runs(results_dir: Path) -> List[RunRecord]:
    """Every finished run under ``results_dir``, each checked against its folder.

    Raises:
        UserError: as :func:`lamm_cl.results.find_runs`, and a ``summary.json`` whose strategy or seed
            is not its folder's (``lamm/seed0/summary.json`` saying ``coop``): reporting it under either
            name would be wrong, so it is malformed.
    """
    runs = find_runs(results_dir)
    for run_dir, rec in zip(find_run_dirs(results_dir), runs):
        check_run_folder(run_dir, rec)
    return runs


def check_run_folder(run_dir: Path, rec: RunRecord) -> None:
    """Refuse a run whose ``summary.json`` names another strategy or seed than its folder ``<strategy>/seed<k>``.

    Raises:
        UserError: naming the file and both names.
    """
    if run_dir.parent.name != rec.strategy or run_dir.name != f"seed{rec.seed}":
        raise UserError(f"{run_dir / SUMMARY_FILE}: malformed: it records strategy {rec.strategy!r} seed {rec.seed} "
                        f"but sits in {run_dir.parent.name}/{run_dir.name}; move it back or delete the folder")


# The config sections two runs must share to be paired; everything else that may differ is the strategy's own
# options (`strategies`), the seed list, and where and how the run was executed (device, output, caches).
_PAIRED_BENCHMARK_KEYS_IGNORED = ("download",)


def _model_text(rec: RunRecord) -> str:
    w = rec.info.get("weights") or {}
    sha = w.get("sha256")
    return (f"`{_get(rec.config, 'model.arch')}` + `{_get(rec.config, 'model.pretrained')}`"
            + (f" (SHA-256 {str(sha)[:12]})" if sha else ""))


def incomparable(a: RunRecord, b: RunRecord) -> str:
    """Why runs ``a`` and ``b`` may not be paired ('' when they may).

    A pair shares everything but the strategy's own options: the benchmark section of the config
    (dataset and its root, class order and its seed, split, shots, template, protocol), the model and
    its weights (arch, pretrained tag, SHA-256 of the file), and what the run recorded of the data
    (class order, class names, experiences, test images per experience: the dataset's identity and
    the few-shot draw's test side).
    """
    reasons = []
    ba = {k: v for k, v in (_get(a.config, "benchmark") or {}).items() if k not in _PAIRED_BENCHMARK_KEYS_IGNORED}
    bb = {k: v for k, v in (_get(b.config, "benchmark") or {}).items() if k not in _PAIRED_BENCHMARK_KEYS_IGNORED}
    for key in sorted(set(ba) | set(bb)):
        if ba.get(key) != bb.get(key):
            reasons.append(f"benchmark.{key} {ba.get(key)!r} vs {bb.get(key)!r}")
    if _model_text(a) != _model_text(b) or (a.info.get("weights") or {}).get("sha256") != (
            b.info.get("weights") or {}).get("sha256"):
        reasons.append(f"model {_model_text(a)} vs {_model_text(b)}")
    for field, what in (("class_order", "class order"), ("experiences", "experiences"),
                        ("class_names", "class names"), ("test_counts", "test images per experience")):
        if not reasons and list(getattr(a, field)) != list(getattr(b, field)):
            reasons.append(f"{what} differ")
    if a.n_experiences != b.n_experiences:
        reasons.append(f"{a.n_experiences} vs {b.n_experiences} experiences")
    if not reasons:
        return ""
    return f"{a.strategy}/seed{a.seed} and {b.strategy}/seed{b.seed} differ in " + "; ".join(reasons)


def _check_consistent(results_dir: Path, runs: Sequence[RunRecord]) -> None:
    benchmarks = sorted({r.benchmark for r in runs})
    if len(benchmarks) > 1:
        raise UserError(f"{results_dir}: runs of different benchmarks in one folder ({', '.join(benchmarks)}); "
                        "report each benchmark's folder on its own")
    sizes = sorted({r.n_experiences for r in runs})
    if len(sizes) > 1:
        raise UserError(f"{results_dir}: runs with different numbers of experiences ({sizes}) in one folder; "
                        "report each benchmark's folder on its own")


# --------------------------------------------------------------------------- summary.csv


def summary_rows(groups: Mapping[str, Sequence[RunRecord]]) -> List[Dict[str, Any]]:
    """Rows of ``summary.csv``: one per strategy x seed, then ``mean`` and ``std`` per strategy.

    ``std`` is the sample standard deviation over seeds (``ddof=1``); with a
    single seed it is undefined and left blank (NaN here).
    """
    rows: List[Dict[str, Any]] = []
    columns = [*SUMMARY_METRICS, *TASK_AWARE_COLUMNS]
    for strategy, runs in groups.items():
        values: Dict[str, List[float]] = {m: [] for m in columns}
        for run in runs:
            s = run.summary()
            ta = run.task_aware_summary()
            s.update({f"task_aware_{m}": ta[m] for m in TASK_AWARE_METRICS})
            targets = _target_values(run)  # benchmark.evaluate_on: after the last experience (NaN: not applicable)
            rows.append({"strategy": strategy, "seed": run.seed, **s, "n_experiences": run.n_experiences, **targets})
            for m in columns:
                values[m].append(s[m])
            for m, v in targets.items():
                values.setdefault(m, []).append(v)
        T = runs[0].n_experiences
        over_seeds = {m: mean_std(v) for m, v in values.items()}
        mean = {m: over_seeds[m][0] for m in values}
        std = {m: over_seeds[m][1] for m in values}
        rows.append({"strategy": strategy, "seed": "mean", **mean, "n_experiences": T})
        rows.append({"strategy": strategy, "seed": "std", **std, "n_experiences": T})
    return rows


TARGET_PREFIX = "target:"  # summary.csv's column of a benchmark.evaluate_on target: ``target:<label>``


def _target_values(run: RunRecord) -> Dict[str, float]:
    return {TARGET_PREFIX + k: (math.nan if v is None else v) for k, v in run.target_summary().items()}


def _target_columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The ``target:<label>`` columns of ``rows``, in the order they first appear."""
    out: List[str] = []
    for row in rows:
        out += [k for k in row if k.startswith(TARGET_PREFIX) and k not in out]
    return out


def _summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    targets = _target_columns(rows)  # none without benchmark.evaluate_on: the columns stay as they were
    return csv_text([SUMMARY_CSV_COLUMNS + targets] + [
        [row["strategy"], row["seed"], *(csv_number(row[m]) for m in SUMMARY_METRICS), row["n_experiences"],
         *(csv_number(row.get(m)) for m in TASK_AWARE_COLUMNS), *(csv_number(row.get(m)) for m in targets)]
        for row in rows])


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def summary_tex(groups: Mapping[str, Sequence[RunRecord]], rows: Sequence[Mapping[str, Any]]) -> str:
    """``summary.tex``: the results table (mean $\\pm$ std over seeds) as a LaTeX ``tabular`` (booktabs rules),
    for a paper; one row per strategy, in report order."""
    by_key = {(r["strategy"], r["seed"]): r for r in rows}
    titles = [_METRIC_TITLES[m].replace("%", r"\%") for m in SUMMARY_METRICS]
    lines = [r"% lamm-cl report: mean $\pm$ sample std (ddof=1) over seeds; written by lamm-cl report",
             r"\begin{tabular}{ll" + "r" * len(SUMMARY_METRICS) + "}", r"\toprule",
             " & ".join(["Strategy", "Seeds", *titles]) + r" \\", r"\midrule"]
    for strategy, runs in groups.items():
        mean, std = by_key[(strategy, "mean")], by_key[(strategy, "std")]
        cells = [mean_std_text(mean[m], std[m]).replace(" ± ", r" $\pm$ ") for m in SUMMARY_METRICS]
        lines.append(" & ".join([_tex(strategy), ", ".join(str(r.seed) for r in runs), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- published figures


def load_published() -> List[Dict[str, str]]:
    """The published reference figures shipped in ``lamm_cl/published.csv``, as dicts of strings.

    Columns: dataset (``coop11`` = any of :data:`COOP_DATASETS`), n_experiences
    (blank = any), shots (blank = full training data), backbone (open_clip
    arch), pretrained (open_clip tag), method, metric, value, source, note.
    """
    text = resources.files("lamm_cl").joinpath("published.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def protocol_of(config: Mapping[str, Any], n_experiences: int) -> str:
    """The evaluation protocol a run's config follows, as ``published.csv`` names it.

    ``single_task``: one experience holding every class (the few-shot tables);
    ``base_to_new``: label order (``class_order: identity``) cut into the first
    ceil(n/2) classes and the rest (LAMM's incremental tables, read task-aware);
    ``class_incremental``: anything else.
    """
    if n_experiences == 1:
        return "single_task"
    if n_experiences == 2 and _get(config, "benchmark.class_order") == "identity":
        counts = _get(config, "benchmark.classes_per_experience")
        if counts is None and _get(config, "benchmark.n_experiences") == 2:
            return "base_to_new"  # an even split of 2 gives the first experience the odd class: ceil(n/2)
        if isinstance(counts, list) and len(counts) == 2 and counts[0] == math.ceil(sum(counts) / 2):
            return "base_to_new"
    return "class_incremental"


def match_published(config: Mapping[str, Any], n_experiences: int) -> List[Dict[str, str]]:
    """Published figures for the same dataset, number of experiences, shots, protocol and backbone as ``config``.

    Matching uses ``benchmark.dataset``, ``n_experiences``, ``benchmark.shots``,
    the protocol (:func:`protocol_of`; a row with a blank protocol matches any),
    ``model.arch`` and ``model.pretrained``; random weights (``none``) match
    nothing.
    """
    dataset = str(_get(config, "benchmark.dataset", "")).lower()
    try:
        shots = int(_get(config, "benchmark.shots") or 0) or None
    except (TypeError, ValueError):
        return []  # not a plain shot count: nothing published can match it
    arch = str(_get(config, "model.arch", "")).replace("/", "-")
    pretrained = str(_get(config, "model.pretrained", "none")).lower()
    protocol = protocol_of(config, n_experiences)
    out = []
    for row in load_published():
        if row["dataset"] == "coop11":
            if dataset not in COOP_DATASETS:
                continue
        elif row["dataset"] != dataset:
            continue
        if row["n_experiences"] and int(row["n_experiences"]) != n_experiences:
            continue
        if (int(row["shots"]) if row["shots"] else None) != shots:
            continue
        if (row.get("protocol") or "").strip() not in ("", protocol):
            continue
        if row["backbone"] != arch or row["pretrained"].lower() != pretrained:
            continue
        out.append(row)
    return out


# --------------------------------------------------------------------------- report.md


def _is_random_weights(config: Mapping[str, Any]) -> bool:
    pretrained = _get(config, "model.pretrained")
    return pretrained is None or str(pretrained).strip().lower() in ("none", "", "null")


def _results_section(groups: Mapping[str, Sequence[RunRecord]], rows: Sequence[Mapping[str, Any]]) -> List[str]:
    by_key = {(r["strategy"], r["seed"]): r for r in rows}
    table = []
    for strategy, runs in groups.items():
        mean, std = by_key[(strategy, "mean")], by_key[(strategy, "std")]
        seeds = ", ".join(str(r.seed) for r in runs)
        table.append([f"`{strategy}`", seeds] + [mean_std_text(mean[m], std[m]) for m in SUMMARY_METRICS])
    header = ["Strategy", "Seeds"] + [_METRIC_TITLES[m] for m in SUMMARY_METRICS]
    lines = ["## Results", ""] + md_table(header, table) + [""]
    lines += [
        "Avg: average incremental accuracy, the mean over experiences of the accuracy on all classes "
        "seen so far (pooled test images). Last: that accuracy after the last experience. "
        "Forgetting (Chaudhry et al., 2018): mean over old experiences of their best earlier accuracy "
        "minus their final accuracy (lower is better). BWT (Lopez-Paz & Ranzato, 2017): mean over old "
        "experiences of final minus just-learned accuracy (negative means forgetting). "
        "Forgetting and BWT are in percentage points (pp). Values are mean ± sample standard deviation "
        "(ddof=1) over seeds; with one seed no ± is shown. Per-run numbers: `summary.csv`.",
        "",
    ]
    lines += _task_aware_section(groups, by_key)
    return lines


def _task_aware_section(groups: Mapping[str, Sequence[RunRecord]],
                        by_key: Mapping[tuple, Mapping[str, Any]]) -> List[str]:
    """The task-aware numbers beside the headline."""
    table = []
    for strategy, runs in groups.items():
        mean, std = by_key[(strategy, "mean")], by_key[(strategy, "std")]
        cells = [mean_std_text(mean[m], std[m]) for m in TASK_AWARE_COLUMNS]
        table.append([f"`{strategy}`", ", ".join(str(r.seed) for r in runs)] + cells)
    header = ["Strategy", "Seeds"] + [_METRIC_TITLES[m] for m in TASK_AWARE_COLUMNS]
    return ["### Task-aware accuracy", ""] + md_table(header, table) + ["", (
        "The same runs scored task-aware: each experience's test images predicted among that "
        "experience's classes only (`accuracy_matrix_task_aware.csv`), as LAMM's base-to-new tables "
        "report them. The class-incremental numbers above stay the headline."), ""]


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n} {noun if n == 1 else plural}"


def _shots_text(config: Mapping[str, Any]) -> str:
    shots = _get(config, "benchmark.shots")
    return f"{shots} training images per class" if shots else "full training data"


def _published_section(config: Mapping[str, Any], n_experiences: int, groups, rows) -> List[str]:
    lines = ["## Published figures", ""]
    if _is_random_weights(config):
        lines += ["No published figures for this benchmark/backbone: these runs use random weights "
                  "(`pretrained: none`), not pretrained CLIP.", ""]
        return lines
    matched = match_published(config, n_experiences)
    if not matched:
        lines += [
            "No published figures for this benchmark/backbone "
            f"(dataset `{_get(config, 'benchmark.dataset')}`, {_count(n_experiences, 'experience')}, "
            f"{_shots_text(config)}, protocol `{protocol_of(config, n_experiences)}`, `{_get(config, 'model.arch')}` "
            f"pretrained `{_get(config, 'model.pretrained')}`).",
            "",
        ]
        return lines
    metric_cols = [m for m in _METRIC_TITLES if any(r["metric"] == m for r in matched)]
    by_key = {(r["strategy"], r["seed"]): r for r in rows}
    # Published plain (non-incremental) accuracy sits beside our accuracy on all
    # classes after the last experience, which is the same quantity when T = 1.
    ours_for = {m: m for m in [*SUMMARY_METRICS, *TASK_AWARE_COLUMNS]}
    ours_for["accuracy"] = "last_accuracy"
    ours_note = "ours: this dataset only; Last in the Accuracy column" if "accuracy" in metric_cols else ""
    table = []
    for strategy in groups:
        mean, std = by_key[(strategy, "mean")], by_key[(strategy, "std")]
        cells = [mean_std_text(mean[ours_for[m]], std[ours_for[m]]) for m in metric_cols]
        table.append([f"`{strategy}` (ours)"] + cells + ["this report", ours_note])
    methods: Dict[tuple, Dict[str, str]] = {}
    for r in matched:  # one table row per (method, source, note), in file order
        methods.setdefault((r["method"], r["source"], r["note"]), {})[r["metric"]] = r["value"]
    for (method, source, note), values in methods.items():
        table.append([method] + [values.get(m, "—") for m in metric_cols] + [source, note])
    header = ["Method"] + [_METRIC_TITLES[m] for m in metric_cols] + ["Source", "Note"]
    lines += md_table(header, table) + [""]
    lines += [
        "Published numbers come from other code bases, class orders and preprocessing; "
        "read them as context, not as a controlled comparison.",
        "",
    ]
    return lines


def _plots_section(plot_links: Sequence[tuple]) -> List[str]:
    lines = ["## Plots", ""]
    for title, rel in plot_links:
        # Markdown viewers cannot show a PDF inline: link it instead.
        lines += [f"[{title}]({rel})" if rel.endswith(".pdf") else f"![{title}]({rel})", ""]
    return lines


def _classes_section(groups: Mapping[str, Sequence[RunRecord]]) -> List[str]:
    runs = [r for rs in groups.values() for r in rs]
    variants: Dict[tuple, List[str]] = {}
    for r in runs:
        key = (tuple(r.class_order), tuple(r.class_names), tuple(tuple(e) for e in r.experiences))
        variants.setdefault(key, []).append(f"{r.strategy}/seed{r.seed}")
    lines = ["## Class order and experiences", ""]
    lines += ["Labels are remapped so the order's i-th class is label i; "
              "each class is shown as `label (original label) name`.", ""]
    for (order, names, experiences), used_by in variants.items():
        if len(variants) > 1:
            lines += [f"Runs {', '.join(used_by)}:", ""]
        lines += [f"Class order (original labels): {', '.join(str(c) for c in order)}", ""]
        table = []
        for t, exp in enumerate(experiences):
            table.append([t, len(exp), ", ".join(f"{c} ({order[c]}) {names[c]}" for c in exp)])
        lines += md_table(["Experience", "Classes", "Label (original) name"], table) + [""]
    return lines


def _config_section(groups: Mapping[str, Sequence[RunRecord]]) -> List[str]:
    runs = [r for rs in groups.values() for r in rs]
    dumps: Dict[str, List[str]] = {}
    for r in runs:
        dumps.setdefault(yaml.safe_dump(r.config, sort_keys=False, allow_unicode=True),
                         []).append(f"{r.strategy}/seed{r.seed}")
    lines = ["## Config", ""]
    for text, used_by in dumps.items():
        if len(dumps) > 1:
            lines += [f"Resolved config of {', '.join(used_by)}:", ""]
        else:
            lines += ["The resolved config shared by every run:", ""]
        lines += ["```yaml", text.rstrip("\n"), "```", ""]
    info = {f"{r.strategy}/seed{r.seed}": r.info for r in runs if r.info}
    versions = [i.get("versions") for i in info.values()]
    if len(info) > 1 and versions[0] is not None and all(v == versions[0] for v in versions):
        # one versions block for the folder: the same packages ran every run
        lines += ["Versions (the same for every run):", "", "```yaml",
                  yaml.safe_dump(versions[0], sort_keys=False, allow_unicode=True).rstrip("\n"), "```", ""]
        info = {k: {f: v for f, v in i.items() if f != "versions"} for k, i in info.items()}
    if info:
        lines += ["Run information (from each run's `summary.json`):", "", "```yaml",
                  yaml.safe_dump(info, sort_keys=False, allow_unicode=True).rstrip("\n"), "```", ""]
    return lines


def _paired_section(groups: Mapping[str, Sequence[RunRecord]], baseline: str) -> List[str]:
    """Each strategy against ``baseline``, paired by seed: mean difference, bootstrap interval, sign-flip p.

    Only comparable runs are paired (:func:`incomparable`); a strategy whose runs differ from the
    baseline's in more than the strategy's own options gets one line saying why, and no numbers.
    """
    from lamm_cl import stats

    lines = ["## Paired differences", ""]
    base = {r.seed: r for r in groups[baseline]}
    found, few = [], False
    for strategy, runs in groups.items():
        if strategy == baseline:
            continue
        mine = {r.seed: r for r in runs}
        seeds = sorted(set(mine) & set(base))
        if not seeds:
            found.append(f"- {strategy} − {baseline}: no seed in common")
            continue
        why = next((w for w in (incomparable(mine[s], base[s]) for s in seeds) if w), "")
        if why:
            found.append(f"- {strategy} − {baseline}: not compared: {why}")
            continue
        for metric, key in (("last", "last_accuracy"), ("avg", "avg_incremental_accuracy")):
            c = stats.compare_paired([mine[s].summary()[key] for s in seeds], [base[s].summary()[key] for s in seeds],
                                     a=strategy, b=baseline, metric=metric)
            few = few or c.p_value is None
            found.append(f"- {c.text(note=False)}" + (
                f" (the smallest p {len(seeds)} pairs can give: {stats.min_p_text(len(seeds))})"
                if c.p_value is not None else ""))
    if not found:
        return []
    lines += [f"Each strategy minus `{baseline}`, paired on the same seed (percentage points): mean "
              f"difference, {stats.CONFIDENCE:.0%} percentile-bootstrap interval ({stats.N_RESAMPLES} seeded "
              f"resamples) and the exact two-sided sign-flip p-value. With n pairs that test cannot give a p "
              f"below 2/2^n (0.25 with 3 pairs): p < 0.05 needs at least {stats.PAIRS_FOR_5_PERCENT} pairs (seeds). "
              "Seeds that differ only in training noise are weak pairs; `class_order: seeded` with "
              "`order_seed: null` gives every seed its own class order."
              + (f" With fewer than {stats.MIN_PAIRS} pairs only the difference is shown." if few else ""),
              "", "Runs are paired only when they share the benchmark (dataset, class order, split, shots, "
              "template, protocol) and the model and its weights; the strategy's own options may differ.", ""]
    return lines + found + [""]


def _baseline_check(groups: Mapping[str, Sequence[RunRecord]], results_dir: Path, baseline: str,
                    explicit: bool) -> None:
    if explicit and baseline not in groups:
        raise UserError(f"--baseline {baseline}: no {baseline} runs in {results_dir}; it holds "
                        f"{', '.join(groups)}")


def _models_lines(groups: Mapping[str, Sequence[RunRecord]]) -> List[str]:
    """One header line per model present (``arch`` + ``pretrained``), naming the runs when there are several."""
    seen: Dict[tuple, List[str]] = {}
    for runs in groups.values():
        for r in runs:
            key = (str(_get(r.config, "model.arch")), str(_get(r.config, "model.pretrained")))
            seen.setdefault(key, []).append(f"{r.strategy}/seed{r.seed}")
    if len(seen) == 1:
        (arch, pretrained), = seen
        return [f"- Model: `{arch}`, pretrained `{pretrained}`"]
    return [f"- Model of {', '.join(used)}: `{arch}`, pretrained `{pretrained}`" for (arch, pretrained), used
            in seen.items()]


def weights_lines(groups: Mapping[str, Sequence[RunRecord]]) -> List[str]:
    """Header lines naming the weights file each run loaded and its SHA-256 (from ``summary.json``).

    One line when every run loaded the same weights, else one per distinct weights with the
    runs that used them.
    """
    seen: Dict[tuple, List[str]] = {}
    for runs in groups.values():
        for r in runs:
            w = r.info["weights"]
            if str(w.get("pretrained")).lower() == "none":
                key: tuple = ("random", str(w.get("arch")), str(w.get("pretrained")))
            elif w.get("sha256") is None:
                key = ("unknown", str(w.get("arch")), str(w.get("pretrained")))
            else:
                key = ("file", str(w.get("arch")), str(w.get("pretrained")), str(w.get("file")), str(w.get("sha256")))
            seen.setdefault(key, []).append(f"{r.strategy}/seed{r.seed}")

    def text(key: tuple) -> str:
        if key[0] == "random":
            return f"`{key[1]}` + `{key[2]}`: random initial weights, no weights file loaded"
        if key[0] == "unknown":
            return f"`{key[1]}` + `{key[2]}`, weights file not identified (no SHA-256)"
        return f"`{key[1]}` + `{key[2]}`, file `{key[3]}`, SHA-256 `{key[4]}`"

    if len(seen) == 1:
        return [f"- Weights: {text(next(iter(seen)))}"]
    return [f"- Weights of {', '.join(used)}: {text(key)}" for key, used in seen.items()]


DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")  # ImageNet's domain shifts


def target_protocol(trained: str, datasets: Sequence[str]) -> str:
    """How ``published.csv`` names the protocol of evaluation-only targets: ``dg_from_imagenet`` (ImageNet's
    variants after ImageNet: domain generalization), else ``xd_from_<trained>`` (cross-dataset transfer)."""
    kind = "dg" if trained == "imagenet" and set(datasets) <= set(DG_TARGETS) else "xd"
    return f"{kind}_from_{trained}"


def _targets_section(groups: Mapping[str, Sequence[RunRecord]], rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The ``benchmark.evaluate_on`` table: each target's accuracy after the last experience (mean ± std over
    seeds; "n/a" where the strategy cannot score classes it has not trained), with the published figures of
    the same protocol, shots and backbone beside them."""
    columns = _target_columns(rows)
    if not columns:
        return []
    first = next(iter(groups.values()))[0]
    config = first.config
    datasets = {str(r["target"]): str(r["dataset"]) for run in (rs[0] for rs in groups.values()) for r in run.targets}
    labels = [c[len(TARGET_PREFIX):] for c in columns]
    protocol = target_protocol(str(_get(config, "benchmark.dataset")), [datasets.get(k, k) for k in labels])
    title = "Domain generalization" if protocol.startswith("dg_") else "Cross-dataset transfer"
    by_key = {(r["strategy"], r["seed"]): r for r in rows}
    table = []
    for strategy, runs in groups.items():
        mean, std = by_key[(strategy, "mean")], by_key[(strategy, "std")]
        cells = [mean_std_text(mean[c], std[c]) or "n/a" for c in columns]
        finite = [mean[c] for c in columns if not math.isnan(mean[c])]
        avg = f"{sum(finite) / len(finite):.2f}" if len(finite) == len(columns) else "n/a"
        table.append([f"`{strategy}` (ours)", ", ".join(str(r.seed) for r in runs), *cells, avg, "this report"])
    published = [] if _is_random_weights(config) else match_published_targets(config, protocol)
    methods: Dict[tuple, Dict[str, str]] = {}
    for r in published:
        methods.setdefault((r["method"], r["source"]), {})[r["dataset"]] = r["value"]
    for (method, source), values in methods.items():
        cells = [values.get(datasets.get(k, k), "—") for k in labels]
        nums = [float(v) for v in cells if v != "—"]
        avg = f"{sum(nums) / len(nums):.2f}" if len(nums) == len(cells) else "—"
        table.append([method, "", *cells, avg, source])
    header = ["Method", "Seeds", *labels, "Average", "Source"]
    return [f"## {title}", ""] + md_table(header, table) + ["", (
        f"Datasets never trained (`benchmark.evaluate_on`), each scored among its own classes after the last "
        f"experience (every experience: `targets.csv` in each run folder). A target class that is a trained "
        f"class (same wnid, else same name) is scored with the trained text -- LAMM's label vectors -- and any "
        f"other class by name in the prompt the strategy gives an untrained class: CoOp's and MaPLe's learnt "
        f"prompts carry over, LAMM's per-class vectors cannot, so on a new dataset LAMM is CLIP with LAMM's "
        f"prompt. n/a: the strategy cannot score classes it has not trained. Published figures (protocol "
        f"`{protocol}`) come from other code bases: context, not a controlled comparison."), ""]


def match_published_targets(config: Mapping[str, Any], protocol: str) -> List[Dict[str, str]]:
    """Published target accuracies (``metric`` ``target_accuracy``) for ``protocol``, the run's shots and backbone."""
    try:
        shots = int(_get(config, "benchmark.shots") or 0) or None
    except (TypeError, ValueError):
        return []
    arch = str(_get(config, "model.arch", "")).replace("/", "-")
    pretrained = str(_get(config, "model.pretrained", "none")).lower()
    return [r for r in load_published()
            if r["metric"] == "target_accuracy" and (r.get("protocol") or "").strip() == protocol
            and (int(r["shots"]) if r["shots"] else None) == shots
            and r["backbone"] == arch and r["pretrained"].lower() == pretrained]


def _report_md(results_dir: Path, groups, rows, plot_links, unfinished: Sequence[Path],
               baseline: str = "lamm") -> str:
    first = next(iter(groups.values()))[0]
    config = first.config
    T = first.n_experiences
    n_classes = len(first.class_order)
    lines = [f"# {first.benchmark}: lamm-cl report", ""]
    lines += ["Built by `lamm-cl report` from the result files in this folder; rerun it to redraw "
              "without rerunning the benchmark. Accuracies are in percent.", ""]
    if _is_random_weights(config):
        lines += ["> **Random weights.** The model was built with `pretrained: none`: these numbers come "
                  "from randomly initialised weights and are not pretrained CLIP's.", ""]
    seeds = sorted({r.seed for rs in groups.values() for r in rs})
    lines += [
        f"- Benchmark: `{first.benchmark}` (dataset `{_get(config, 'benchmark.dataset')}`, "
        f"{_count(T, 'experience')}, {_count(n_classes, 'class')}, {_shots_text(config)})",
        *_models_lines(groups),
        *weights_lines(groups),
        f"- Strategies: {', '.join(f'`{s}`' for s in groups)}",
        f"- Seeds: {', '.join(str(s) for s in seeds)}",
        "",
    ]
    if unfinished:
        rel = ", ".join(f"`{p.relative_to(results_dir).as_posix()}`" for p in unfinished)
        lines += [f"Unfinished runs left out (no `{SUMMARY_FILE}`): {rel}.", ""]
    lines += _results_section(groups, rows)
    lines += _targets_section(groups, rows)
    if len(groups) > 1 and baseline in groups:
        lines += _paired_section(groups, baseline)
    elif len(groups) > 1:
        lines += ["## Paired differences", "", f"No `{baseline}` runs here to compare against (choose one with "
                  "`lamm-cl report DIR --baseline NAME`).", ""]
    lines += _published_section(config, T, groups, rows)
    lines += _plots_section(plot_links)
    lines += _classes_section(groups)
    lines += _config_section(groups)
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- entry point


def build_report(results_dir: str | Path, formats: Sequence[str] = ("png",),
                 baseline: Optional[str] = None) -> List[Path]:
    """Write plots, ``summary.csv`` and ``report.md`` for every finished run under ``results_dir``.

    Reads only result files (:func:`lamm_cl.results.find_runs`); strategies are
    shown in the order of ``strategies`` in the runs' config, else by name,
    each with the same colour in every plot.

    Args:
        results_dir: a benchmark's results folder, holding ``<strategy>/seed<k>/``.
        formats: figure formats, any of ``png`` (default), ``svg``, ``pdf``;
            the first is the one embedded in ``report.md``.
        baseline: the strategy every other one is compared with in the paired-differences section
            (default: ``lamm`` when the folder holds it).

    Returns:
        Every path written: the plots, then ``summary.csv``, ``summary.tex``, then ``report.md``.

    Raises:
        UserError: the folder is missing, holds no finished run, mixes
            benchmarks, or a result file is missing or malformed (the one-line
            message names the file), or ``baseline`` names no strategy there (the message lists them).
    """
    from lamm_cl import plots  # matplotlib only when a report is drawn

    results_dir = Path(results_dir)
    formats = _check_formats(formats)
    runs = read_runs(results_dir)
    if not runs:
        raise UserError(f"{results_dir}: no finished runs (expected <strategy>/seed<k>/{SUMMARY_FILE})")
    _check_consistent(results_dir, runs)
    unfinished = [d for d in find_run_dirs(results_dir, include_unfinished=True) if not (d / SUMMARY_FILE).is_file()]
    groups = _group(runs)
    _baseline_check(groups, results_dir, baseline or DEFAULT_BASELINE, explicit=baseline is not None)
    baseline = baseline or DEFAULT_BASELINE
    colors = plots.strategy_colors(list(groups))
    plot_dir = results_dir / "plots"

    written: List[Path] = []
    links = []

    def save(fig, name: str, title: str) -> None:
        written.extend(plots.save_figure(fig, plot_dir / name, formats))
        links.append((title, f"plots/{name}.{formats[0]}"))

    save(plots.plot_seen_accuracy(groups, colors), "seen_accuracy", "Seen-class accuracy after each experience")
    save(plots.plot_final_accuracy_forgetting(groups, colors), "final_accuracy_forgetting",
         "Final accuracy and forgetting per experience")
    save(plots.plot_old_new_accuracy(groups, colors), "old_new_accuracy", "Old- vs new-class accuracy")
    save(plots.plot_accuracy_matrices(groups), "accuracy_matrices", "Accuracy matrices of every strategy")
    for strategy, strategy_runs in groups.items():
        save(plots.plot_accuracy_matrix(strategy, strategy_runs), f"accuracy_matrix_{plots.safe_name(strategy)}",
             f"Accuracy matrix: {strategy}")

    rows = summary_rows(groups)
    written.append(atomic_write_text(results_dir / "summary.csv", _summary_csv(rows)))
    written.append(atomic_write_text(results_dir / "summary.tex", summary_tex(groups, rows)))
    report_md = _report_md(results_dir, groups, rows, links, unfinished, baseline)
    written.append(atomic_write_text(results_dir / "report.md", report_md))
    return written

