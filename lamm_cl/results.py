"""Result files on disk: one folder per run, written atomically, read back for reports.

Layout (DESIGN section 8)::

    <results_dir>/<strategy>/seed<k>/
        config.yaml              the resolved config of the whole run
        class_order.json         class_order, class_names, experiences, test_counts
        accuracy_matrix.csv      after_experience,exp0,exp1,...  (blank above the diagonal)
        accuracy_matrix_task_aware.csv  the same, each experience predicted among its own classes only
        metrics.csv              one row per experience (derived from the matrix)
        per_class_accuracy.csv   label,class_name,original_label,accuracy (after the last experience)
        summary.json             benchmark, strategy, seed, headline metrics, task-aware metrics,
                                 n_experiences, info (with the weights the run loaded), and with
                                 ``benchmark.evaluate_on`` the targets' accuracy after the last experience
        targets.csv              with ``benchmark.evaluate_on``: one row per experience x target

All accuracies are percentages (0-100). ``summary.json`` is written last, so
its presence marks a finished run; :func:`find_runs` skips folders without it
(a run that was killed, or is still going). Every file is written to a
temporary name in the same folder, fsynced and renamed into place
(:func:`lamm_cl.safe_io.atomic_write_text`), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import yaml

from lamm_cl import metrics
from lamm_cl.errors import UserError
from lamm_cl.formatting import csv_number, csv_text, json_text, plain, yaml_data
from lamm_cl.safe_io import atomic_write_text

__all__ = [
    "RunRecord",
    "write_run",
    "read_run",
    "find_run_dirs",
    "find_runs",
    "CONFIG_FILE",
    "CLASS_ORDER_FILE",
    "MATRIX_FILE",
    "MATRIX_TASK_AWARE_FILE",
    "METRICS_FILE",
    "PER_CLASS_FILE",
    "SUMMARY_FILE",
    "METRICS_COLUMNS",
    "PER_CLASS_COLUMNS",
    "SUMMARY_METRICS",
    "TARGETS_FILE",
    "TARGETS_COLUMNS",
]

PathLike = Union[str, "os.PathLike[str]"]

CONFIG_FILE = "config.yaml"
CLASS_ORDER_FILE = "class_order.json"
MATRIX_FILE = "accuracy_matrix.csv"
MATRIX_TASK_AWARE_FILE = "accuracy_matrix_task_aware.csv"
METRICS_FILE = "metrics.csv"
PER_CLASS_FILE = "per_class_accuracy.csv"
SUMMARY_FILE = "summary.json"
TARGETS_FILE = "targets.csv"
# experience x target: the target's accuracy (blank: not applicable, `note` says why) among its own classes,
# `matched` of which are trained classes (scored with the trained text)
TARGETS_COLUMNS = ["experience", "target", "dataset", "classes", "matched", "images", "accuracy", "note"]
# a sequence of datasets: the whole [T, T] matrix, cells above the diagonal included (blank: not measured)
MATRIX_SEQUENCE_FILE = "accuracy_matrix_sequence.csv"
SEQUENCE_METRICS = ["transfer", "mtil_avg", "last_accuracy"]  # ZSCL's Transfer, Avg, Last

METRICS_COLUMNS = [
    "experience",
    "classes_seen",
    "accuracy",
    "old_accuracy",
    "new_accuracy",
    "avg_incremental_accuracy",
    "forgetting",
    "bwt",
]
PER_CLASS_COLUMNS = ["label", "class_name", "original_label", "accuracy"]
SUMMARY_METRICS = ["avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"]

_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass(eq=False)
class RunRecord:
    """Everything one (strategy, seed) run leaves on disk.

    Class ids in ``experiences`` and the index of ``class_names`` and
    ``per_class_accuracy`` are remapped labels: the class order's i-th class is
    label i, and ``class_order[i]`` is its label in the original dataset.
    """

    benchmark: str  # the run's name (config ``name``), e.g. "split_cifar100"
    strategy: str  # the strategy's registered name
    seed: int  # the run's seed
    matrix: np.ndarray  # [T, T] accuracy in percent, NaN above the diagonal
    test_counts: List[int]  # test images per experience
    experiences: List[List[int]]  # remapped labels of each experience
    class_names: List[str]  # by remapped label
    class_order: List[int]  # the dataset's original labels, in order
    per_class_accuracy: List[float]  # percent after the last experience, by remapped label (seen classes)
    config: Dict[str, Any]  # the resolved config of the whole run
    # [T, T] task-aware accuracy: experience j's test images among experience j's classes only
    matrix_task_aware: np.ndarray
    # versions, device, timings, ..., and "weights": the model's weights record (FrozenCLIP.weights_record)
    info: Dict[str, Any] = field(default_factory=dict)
    # benchmark.evaluate_on: one dict per experience x target, keys TARGETS_COLUMNS (accuracy NaN: not applicable)
    targets: List[Dict[str, Any]] = field(default_factory=list)

    def target_summary(self) -> Dict[str, Any]:
        """Each target's accuracy after the last experience (None: not applicable), by target label."""
        last = self.n_experiences - 1
        out: Dict[str, Any] = {}
        for row in self.targets:
            if int(row["experience"]) == last:
                acc = float(row["accuracy"])
                out[str(row["target"])] = None if math.isnan(acc) else acc
        return out
    # a sequence of datasets: {"evaluation", "scores_unseen", "datasets": [{dataset, offset, n_classes}]}, and
    # then ``matrix`` holds the cells above the diagonal too (datasets not trained yet; NaN when not measured)
    sequence: Dict[str, Any] | None = None

    @property
    def n_experiences(self) -> int:
        """Number of experiences ``T`` (the matrix's side)."""
        return int(np.asarray(self.matrix).shape[0])

    def summary(self) -> Dict[str, float]:
        """The headline metrics of :func:`lamm_cl.metrics.summarize`; for a sequence of datasets, also ZSCL's
        ``transfer`` and ``mtil_avg`` (None: not applicable) and ``last_accuracy`` as ZSCL's mean over datasets
        (:func:`lamm_cl.metrics.sequence_summary`)."""
        out = metrics.summarize(self.matrix, self.test_counts)
        if self.sequence is not None:
            out.update(metrics.sequence_summary(self.matrix))
        return out

    def task_aware_summary(self) -> Dict[str, float]:
        """:func:`lamm_cl.metrics.summarize` of the task-aware matrix."""
        return metrics.summarize(self.matrix_task_aware, self.test_counts)


# --------------------------------------------------------------------------- writing


def _check_record(record: RunRecord) -> np.ndarray:
    """Validate a record before writing; these are programming errors, hence ValueError."""
    A, _ = metrics.validate(record.matrix, record.test_counts)
    T = A.shape[0]
    if np.asarray(record.matrix_task_aware).shape != A.shape:
        raise ValueError(f"task-aware matrix of shape {np.asarray(record.matrix_task_aware).shape} "
                         f"beside an accuracy matrix of {A.shape}")
    metrics.validate(record.matrix_task_aware, record.test_counts)
    if len(record.experiences) != T:
        raise ValueError(f"{len(record.experiences)} experiences listed but the accuracy matrix has {T}")
    n_classes = len(record.class_order)
    if len(record.class_names) != n_classes:
        raise ValueError(f"{len(record.class_names)} class names for {n_classes} classes in class_order")
    if len(record.per_class_accuracy) > n_classes:
        raise ValueError(f"{len(record.per_class_accuracy)} per-class accuracies for {n_classes} classes")
    return A


def _matrix_csv(A: np.ndarray, full: bool = False) -> str:
    T = A.shape[0]
    rows: List[List[Any]] = [["after_experience"] + [f"exp{j}" for j in range(T)]]
    for i in range(T):
        rows.append([i] + [csv_number(A[i, j]) if (j <= i or full) and np.isfinite(A[i, j]) else ""
                           for j in range(T)])
    return csv_text(rows)


def _metrics_csv(A: np.ndarray, record: RunRecord) -> str:
    acc = metrics.seen_accuracy(A, record.test_counts)
    old, new = metrics.old_new_accuracy(A, record.test_counts)
    avg = metrics.running_average_accuracy(A, record.test_counts)
    fgt = metrics.forgetting_per_step(A)
    bwt = metrics.bwt_per_step(A)
    rows: List[List[Any]] = [METRICS_COLUMNS]
    seen = 0
    for i in range(A.shape[0]):
        seen += len(record.experiences[i])
        rows.append([i, seen, *(csv_number(x[i]) for x in (acc, old, new, avg, fgt, bwt))])
    return csv_text(rows)


def _per_class_csv(record: RunRecord) -> str:
    rows: List[List[Any]] = [PER_CLASS_COLUMNS]
    for label, acc in enumerate(record.per_class_accuracy):
        rows.append([label, record.class_names[label], int(record.class_order[label]), csv_number(acc)])
    return csv_text(rows)


def _targets_csv(record: RunRecord) -> str:
    rows: List[List[Any]] = [TARGETS_COLUMNS]
    for r in record.targets:
        rows.append([int(r["experience"]), r["target"], r["dataset"], int(r["classes"]), int(r["matched"]),
                     int(r["images"]), csv_number(float(r["accuracy"])), r.get("note", "")])
    return csv_text(rows)


def _read_targets(path: Path, T: int) -> List[Dict[str, Any]]:
    """``targets.csv`` back as rows (none when the run had no targets)."""
    if not path.is_file():
        return []
    out = []
    for n, row in enumerate(_read_csv(path, TARGETS_COLUMNS), start=2):
        t = _int(path, row[0], f"line {n}")
        if not 0 <= t < T:
            raise _bad(path, f"malformed: experience {t} at line {n}, the run has {T}")
        out.append({"experience": t, "target": row[1], "dataset": row[2],
                    "classes": _int(path, row[3], f"line {n}"), "matched": _int(path, row[4], f"line {n}"),
                    "images": _int(path, row[5], f"line {n}"), "accuracy": _float(path, row[6], f"line {n}"),
                    "note": row[7]})
    return out


def write_run(run_dir: PathLike, record: RunRecord) -> List[Path]:
    """Write every result file of one run into ``run_dir`` (created if needed).

    Files: ``config.yaml``, ``class_order.json``, ``accuracy_matrix.csv``,
    ``accuracy_matrix_task_aware.csv``,
    ``metrics.csv``, ``per_class_accuracy.csv`` and, last, ``summary.json``
    (its presence marks the run finished). Each is written atomically.

    Returns:
        The paths written, in that order.

    Raises:
        ValueError: the record is inconsistent (matrix not square/lower
            triangular, counts or experiences of the wrong length, ...).
    """
    run_dir = Path(run_dir)
    A = _check_record(record)
    summary = {
        "benchmark": record.benchmark,
        "strategy": record.strategy,
        "seed": int(record.seed),
        **record.summary(),
        "n_experiences": A.shape[0],
        "info": record.info,
    }
    if record.sequence is not None:
        summary["sequence"] = record.sequence
    summary["task_aware"] = record.task_aware_summary()  # beside the class-incremental headline, never instead of it
    if record.targets:
        summary["targets"] = record.target_summary()
    class_order = {
        "class_order": [int(c) for c in record.class_order],
        "class_names": [str(n) for n in record.class_names],
        "experiences": [[int(c) for c in exp] for exp in record.experiences],
        "test_counts": [int(n) for n in record.test_counts],
    }
    files = [
        (CONFIG_FILE, yaml.safe_dump(plain(record.config), sort_keys=False, allow_unicode=True)),
        (CLASS_ORDER_FILE, json_text(class_order)),
        (MATRIX_FILE, _matrix_csv(A)),
        (MATRIX_TASK_AWARE_FILE, _matrix_csv(metrics.validate(record.matrix_task_aware)[0])),
        (METRICS_FILE, _metrics_csv(A, record)),
        (PER_CLASS_FILE, _per_class_csv(record)),
        *([(TARGETS_FILE, _targets_csv(record))] if record.targets else []),
        *([(MATRIX_SEQUENCE_FILE, _matrix_csv(np.asarray(record.matrix, dtype=float), full=True))]
          if record.sequence is not None else []),
        (SUMMARY_FILE, json_text(summary)),  # last: marks the run finished
    ]
    return [atomic_write_text(run_dir / name, text) for name, text in files]


# --------------------------------------------------------------------------- reading


def _bad(path: Path, problem: str) -> UserError:
    # One line, whatever the underlying parser said.
    problem = " ".join(str(problem).split())
    return UserError(f"{path}: {problem}")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise _bad(path, "missing result file (was the run interrupted? rerun it, or delete its folder)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read: {e}") from None


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise _bad(path, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise _bad(path, "malformed: expected a JSON object")
    return data


def _read_csv(path: Path, header: Sequence[str]) -> List[List[str]]:
    try:
        rows = list(csv.reader(io.StringIO(_read_text(path))))
    except csv.Error as e:
        raise _bad(path, f"malformed CSV: {e}") from None
    if not rows or rows[0] != list(header):
        got = ",".join(rows[0]) if rows else "an empty file"
        raise _bad(path, f"malformed CSV: expected header {','.join(header)!r}, got {got!r}")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _bad(path, f"malformed CSV: line {n} has {len(row)} cells, expected {len(header)}")
    return rows[1:]


def _float(path: Path, cell: str, where: str) -> float:
    if cell.strip() == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise _bad(path, f"malformed number {cell!r} at {where}") from None


def _int(path: Path, cell: Any, where: str) -> int:
    try:
        if isinstance(cell, bool) or (isinstance(cell, float) and not cell.is_integer()):
            raise ValueError
        return int(cell)
    except (TypeError, ValueError):
        raise _bad(path, f"malformed integer {cell!r} at {where}") from None


def _read_matrix(path: Path, full: bool = False) -> np.ndarray:
    try:
        first = next(csv.reader(io.StringIO(_read_text(path))), [])
    except csv.Error as e:
        raise _bad(path, f"malformed CSV: {e}") from None
    T = len(first) - 1
    header = ["after_experience"] + [f"exp{j}" for j in range(max(T, 0))]
    if T < 1 or first != header:
        raise _bad(path, "malformed CSV: expected header 'after_experience,exp0,exp1,...'")
    rows = _read_csv(path, header)
    if len(rows) != T:
        raise _bad(path, f"malformed: {len(rows)} rows for {T} experience columns (the matrix must be square)")
    A = np.full((T, T), np.nan)
    for i, row in enumerate(rows):
        if _int(path, row[0], f"line {i + 2}") != i:
            raise _bad(path, f"malformed: line {i + 2} should be after_experience {i}, got {row[0]!r}")
        for j in range(T):
            value = _float(path, row[j + 1], f"line {i + 2}, exp{j}")
            if j > i and not full and not math.isnan(value):
                raise _bad(path, f"malformed: value above the diagonal at line {i + 2}, exp{j} (must be blank)")
            A[i, j] = value
    try:
        metrics.validate(A)
    except ValueError as e:
        raise _bad(path, f"malformed: {e}") from None
    return A


def _read_class_order(path: Path) -> Dict[str, Any]:
    data = _read_json(path)
    out: Dict[str, Any] = {}
    for key in ("class_order", "class_names", "experiences", "test_counts"):
        if not isinstance(data.get(key), list):
            raise _bad(path, f"malformed: {key!r} must be a list")
    out["class_order"] = [_int(path, c, "class_order") for c in data["class_order"]]
    out["test_counts"] = [_int(path, c, "test_counts") for c in data["test_counts"]]
    if not all(isinstance(n, str) for n in data["class_names"]):
        raise _bad(path, "malformed: 'class_names' must be a list of strings")
    out["class_names"] = list(data["class_names"])
    if not all(isinstance(e, list) for e in data["experiences"]):
        raise _bad(path, "malformed: 'experiences' must be a list of lists of class ids")
    out["experiences"] = [[_int(path, c, "experiences") for c in e] for e in data["experiences"]]
    if len(out["class_names"]) != len(out["class_order"]):
        raise _bad(path, f"malformed: {len(out['class_names'])} class names for {len(out['class_order'])} classes")
    return out


def _read_per_class(path: Path, n_classes: int) -> List[float]:
    rows = _read_csv(path, PER_CLASS_COLUMNS)
    if len(rows) > n_classes:
        raise _bad(path, f"malformed: {len(rows)} rows for {n_classes} classes")
    acc = []
    for n, row in enumerate(rows):
        if _int(path, row[0], f"line {n + 2}") != n:
            raise _bad(path, f"malformed: line {n + 2} should be label {n}, got {row[0]!r}")
        acc.append(_float(path, row[3], f"line {n + 2}"))
    return acc


def read_run(run_dir: PathLike) -> RunRecord:
    """Read the result files of one run back into a :class:`RunRecord`.

    ``metrics.csv`` is derived from the matrix and is not read.

    Raises:
        UserError: a file is missing or malformed; the one-line message names it.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    summary = _read_json(summary_path)
    for key, kind in (("benchmark", str), ("strategy", str)):
        if not isinstance(summary.get(key), kind):
            raise _bad(summary_path, f"malformed: {key!r} must be a string")
    seed = _int(summary_path, summary.get("seed"), "'seed'")
    info = summary.get("info")
    if not isinstance(info, dict) or not isinstance(info.get("weights"), dict):
        raise _bad(summary_path, "malformed: 'info' must be an object holding the 'weights' record")

    config_path = run_dir / CONFIG_FILE
    try:
        config = yaml_data(_read_text(config_path))
    except yaml.YAMLError as e:
        raise _bad(config_path, f"malformed YAML: {e}") from None
    if not isinstance(config, dict):
        raise _bad(config_path, "malformed: expected a mapping (the resolved config)")

    order_path = run_dir / CLASS_ORDER_FILE
    order = _read_class_order(order_path)
    matrix_path = run_dir / MATRIX_FILE
    A = _read_matrix(matrix_path)
    T = A.shape[0]
    for key in ("experiences", "test_counts"):
        if len(order[key]) != T:
            raise _bad(order_path, f"malformed: {len(order[key])} {key} but {matrix_path.name} has {T} experiences")
    try:
        metrics.validate(A, order["test_counts"])
    except ValueError as e:
        raise _bad(order_path, f"malformed: {e}") from None

    per_class = _read_per_class(run_dir / PER_CLASS_FILE, len(order["class_order"]))
    task_aware_path = run_dir / MATRIX_TASK_AWARE_FILE
    task_aware = _read_matrix(task_aware_path)
    if task_aware.shape != A.shape:
        raise _bad(task_aware_path, f"malformed: {task_aware.shape[0]} experiences but {matrix_path.name} has {T}")
    sequence = summary.get("sequence")
    if sequence is not None:
        if not isinstance(sequence, dict) or not isinstance(sequence.get("datasets"), list):
            raise _bad(summary_path, "malformed: 'sequence' must be an object listing its 'datasets'")
        full_path = run_dir / MATRIX_SEQUENCE_FILE
        full = _read_matrix(full_path, full=True)
        lower = np.tril(np.ones(A.shape, dtype=bool))
        if full.shape != A.shape or not np.allclose(full[lower], A[lower]):
            raise _bad(full_path, f"malformed: its lower triangle differs from {matrix_path.name}")
        A = full
    return RunRecord(
        sequence=sequence,
        benchmark=summary["benchmark"],
        strategy=summary["strategy"],
        seed=seed,
        matrix=A,
        test_counts=order["test_counts"],
        experiences=order["experiences"],
        class_names=order["class_names"],
        class_order=order["class_order"],
        per_class_accuracy=per_class,
        config=config,
        info=info,
        matrix_task_aware=task_aware,
        targets=_read_targets(run_dir / TARGETS_FILE, T),
    )


def find_run_dirs(results_dir: PathLike, include_unfinished: bool = False) -> List[Path]:
    """The run folders ``results_dir/<strategy>/seed<k>/``, sorted by strategy folder then seed.

    Args:
        include_unfinished: also list folders without ``summary.json``
            (interrupted or still running); by default only finished runs.

    Raises:
        UserError: ``results_dir`` does not exist or is not a folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results folder not found (run `lamm-cl run CONFIG` first)")
    found = []
    for strategy_dir in results_dir.iterdir():
        if not strategy_dir.is_dir():
            continue
        for run_dir in strategy_dir.iterdir():
            m = _SEED_DIR.match(run_dir.name)
            if m and run_dir.is_dir() and (include_unfinished or (run_dir / SUMMARY_FILE).is_file()):
                found.append((strategy_dir.name, int(m.group(1)), run_dir))
    return [run_dir for _, _, run_dir in sorted(found)]


def find_runs(results_dir: PathLike) -> List[RunRecord]:
    """Read every finished run under ``results_dir/<strategy>/seed<k>/``.

    Folders without ``summary.json`` (unfinished runs) are skipped; see
    :func:`find_run_dirs`. The list is sorted by strategy folder, then seed.

    Raises:
        UserError: the folder is missing, a run's file is missing or
            malformed, or two folders claim the same strategy and seed.
    """
    runs = [read_run(d) for d in find_run_dirs(results_dir)]
    seen: Dict[tuple, int] = {}
    for run in runs:
        key = (run.strategy, run.seed)
        if key in seen:
            raise UserError(f"{results_dir}: two run folders hold strategy {run.strategy!r} seed {run.seed}")
        seen[key] = 1
    return runs
