"""lamm-cl from Python: run a config and load its results as pandas tables.

    >>> import lamm_cl
    >>> res = lamm_cl.run("benchmarks/quickstart.yaml", set=["seeds=[0, 1, 2]"])   # doctest: +SKIP
    >>> res.summary.groupby("strategy")[["avg", "last"]].mean()                    # doctest: +SKIP
    >>> print(res.compare("coop", "lamm", metric="last"))                           # doctest: +SKIP
    coop − lamm: Last −2.10 [−3.40, −0.80], p = 0.250, 3 pairs

:func:`run` is what ``lamm-cl run`` does -- the CLI calls :func:`run_config` below --
but bad input raises :class:`~lamm_cl.errors.ConfigError` / :class:`~lamm_cl.errors.UserError`
instead of exiting. :func:`load_results` reads a results folder of one benchmark or
a sweep folder of many (``<output>/<benchmark>[/<grid cell>]/<strategy>/seed<k>/``).
"""
from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

from lamm_cl.errors import ConfigError, UserError

if TYPE_CHECKING:  # pandas and torch load only when used
    import pandas as pd

    from lamm_cl.config import Config
    from lamm_cl.runner.record import RunRecords
    from lamm_cl.stats import Comparison

__all__ = ["run", "run_config", "load_config", "load_results", "Results", "METRIC_COLUMNS"]

# short column name in Results.summary -> key in summary.json / summary.csv
METRIC_COLUMNS = {"avg": "avg_incremental_accuracy", "last": "last_accuracy", "forgetting": "forgetting",
                  "bwt": "bwt"}
_TASK_AWARE_PREFIX = "task_aware_"


def load_config(config: Union[str, Path, Mapping[str, Any]], overrides: Sequence[str] = ()) -> "Config":
    """A validated :class:`~lamm_cl.config.Config` from a YAML path or a dict (never modified).

    Raises:
        ConfigError: the file or a value is wrong; the message names the key.
    """
    from lamm_cl import config as config_mod

    if isinstance(config, (str, Path)):
        return config_mod.load(config, list(overrides))
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a YAML path or a dict, got {type(config).__name__}")
    data = copy.deepcopy(dict(config))
    for o in overrides:
        config_mod.apply_override(data, o)
    return config_mod.parse(data, source=None)


def run_config(cfg: "Config", out: Path, *, device: Optional[str] = None, resume: bool = False,
               overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = lambda s: None,
               warn: Optional[Callable[[str], None]] = None, only: Optional[list[str]] = None) -> "RunRecords":
    """Run a validated config into ``out`` and rebuild its report; the one path both the CLI and :func:`run` take.

    ``only``: run just these strategy labels (:func:`lamm_cl.config.only_labels`); the report is rebuilt
    from every run in ``out``, the others' included.

    Returns:
        The finished runs; ``.failed`` names the runs a NaN or infinite loss stopped.
    """
    from lamm_cl.model.shared_prefix import text_path_log
    from lamm_cl.report import build_report
    from lamm_cl.runner import run as run_all

    with text_path_log(log):  # the log says which text path ran (shared prefix or full prompts)
        records = run_all(cfg, out, device=device, progress=progress, log=log, resume=resume, overwrite=overwrite,
                          warn=warn, only=only)
    if records:
        build_report(out)
    return records


def run(config: Union[str, Path, Mapping[str, Any]], *, set: Sequence[str] = (),  # noqa: A002 (the CLI's name)
        output: Union[str, Path, None] = None, device: Optional[str] = None, resume: bool = False,
        overwrite: bool = False, progress: bool = True,
        only: Union[str, Sequence[str], None] = None) -> "Results":
    """Run a benchmark config exactly as ``lamm-cl run`` does, and return its results.

    Args:
        config: a YAML path, or the same content as a dict (not modified).
        set: ``dotted.key=value`` overrides, as ``--set``.
        output: results folder (default: the config's ``output``, else ``results/<name>``).
        device: ``auto | cpu | cuda | cuda:N``, overriding the config.
        resume, overwrite: as ``--resume`` / ``--overwrite``.
        progress: progress bars and one line per experience on stdout.
        only: as ``--only``: run just these strategies (names or labels, a list or ``"a,b"``), keeping the
            other strategies' results in the folder.

    Returns:
        The :class:`Results` of the output folder; ``.failed`` lists runs a NaN loss stopped.

    Raises:
        ConfigError: a config value is wrong (nothing is written).
        UserError: other bad input -- missing data, a folder in use or not empty (nothing is written).
        KeyboardInterrupt: finished runs and the last checkpoint are kept; ``resume=True`` continues.
    """
    from lamm_cl.warnings_policy import quiet_third_party_warnings

    if isinstance(set, str):
        set = [set]  # noqa: A001
    if not isinstance(set, (list, tuple)) or not all(isinstance(o, str) for o in set):
        raise ConfigError(f"set: expected a list of 'dotted.key=value' strings, got {set!r}")
    with quiet_third_party_warnings():  # the command line's rule: third-party warnings hidden unless -W
        cfg = load_config(config, set)
        labels = None
        if only is not None:
            from lamm_cl.config import only_labels

            labels = only_labels(cfg, list(only) if isinstance(only, tuple) else only, where="only")
        out = cfg.results_dir(None if output is None else str(output))
        say = print if progress else (lambda s: None)
        records = run_config(cfg, out, device=device, resume=resume, overwrite=overwrite, progress=progress,
                             log=say, warn=say, only=labels)
        results = load_results(out)
    results.failed = list(records.failed)
    return results


# --------------------------------------------------------------------------- loading results


def _run_folders(root: Path) -> list[tuple[tuple[str, ...], Path]]:
    """(folder parts between ``root`` and the strategy folder, run folder) of every finished run under root."""
    from lamm_cl.results import SUMMARY_FILE

    found = []
    for summary in sorted(root.rglob(SUMMARY_FILE)):
        run_dir = summary.parent
        if summary.is_file() and run_dir.name.startswith("seed") and run_dir.name[4:].isdigit():
            found.append((run_dir.parent.parent.relative_to(root).parts, run_dir))
    return found


def _model_identity(config: Mapping[str, Any], info: Mapping[str, Any]) -> dict:
    model = config.get("model") or {}
    return {"arch": model.get("arch"), "pretrained": model.get("pretrained"),
            "weights_sha256": info["weights"].get("sha256")}


def load_results(path: Union[str, Path]) -> "Results":
    """Read every finished run under a results folder (one benchmark) or a sweep folder (many).

    A run folder is ``<strategy>/seed<k>/`` holding ``summary.json``; in a sweep folder the
    benchmark folder's path below ``path`` names the benchmark and, below it, the grid cell.

    Raises:
        UserError: the folder is missing, holds no finished run, or a result file is malformed.
    """
    from lamm_cl.report import check_run_folder
    from lamm_cl.results import read_run

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: results folder not found (run `lamm-cl run CONFIG` first)")
    rows, matrices, metric_rows, keys = [], {}, [], set()
    for parts, run_dir in _run_folders(root):
        rec = read_run(run_dir)
        check_run_folder(run_dir, rec)
        grid = "/".join(parts[1:])
        key = (rec.benchmark, grid, rec.strategy, rec.seed)
        if key in keys:
            raise UserError(f"{run_dir}: a second run of benchmark {rec.benchmark!r}"
                            f"{' cell ' + grid if grid else ''} strategy {rec.strategy!r} seed {rec.seed}")
        keys.add(key)
        s = rec.summary()
        row = {"benchmark": rec.benchmark, "grid": grid, "strategy": rec.strategy, "seed": rec.seed,
               **{short: s[long] for short, long in METRIC_COLUMNS.items()},
               "n_experiences": rec.n_experiences}
        ta = rec.task_aware_summary()
        row.update({_TASK_AWARE_PREFIX + short: ta[long] for short, long in METRIC_COLUMNS.items()})
        row.update(_model_identity(rec.config, rec.info))
        # benchmark.evaluate_on: each target after the last experience (NaN: not applicable), `target:<label>`
        row.update({f"target:{k}": math.nan if v is None else v for k, v in rec.target_summary().items()})
        row["path"] = str(run_dir)
        rows.append(row)
        matrices[key] = rec
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
            for m in csv.DictReader(fh):
                base = {"benchmark": rec.benchmark, "grid": grid, "strategy": rec.strategy, "seed": rec.seed,
                        "experience": int(m["experience"])}
                for name, value in m.items():
                    if name != "experience":
                        metric_rows.append({**base, "metric": name, "value": float(value) if value else math.nan})
        for t in rec.targets:  # targets.csv: metric `target:<label>` per experience
            metric_rows.append({"benchmark": rec.benchmark, "grid": grid, "strategy": rec.strategy, "seed": rec.seed,
                                "experience": int(t["experience"]), "metric": f"target:{t['target']}",
                                "value": float(t["accuracy"])})
    if not rows:
        raise UserError(f"{root}: no finished run (no <strategy>/seed<k>/summary.json below it)")
    return Results(root, rows, metric_rows, matrices)


class Results:
    """The finished runs of a results or sweep folder, as pandas tables.

    Attributes:
        path: the folder read.
        summary: one row per benchmark x grid cell x strategy x seed: ``avg``, ``last``,
            ``forgetting``, ``bwt`` (percent), the task-aware figures
            (``task_aware_avg``, ``task_aware_last``, ...), ``n_experiences``, ``arch``, ``pretrained``, ``weights_sha256``.
            ``grid`` (the grid cell's folder) only for a sweep with grid cells. With ``benchmark.evaluate_on``,
            ``target:<label>``: each target's accuracy after the last experience (NaN: not applicable).
        metrics: per experience, long format: benchmark, [grid,] strategy, seed, experience, metric, value
            (a target's accuracy: metric ``target:<label>``).
        failed: runs that a NaN loss stopped, when returned by :func:`run`.
    """

    def __init__(self, path: Path, rows: list, metric_rows: list, records: dict):
        import pandas as pd

        self.path = Path(path)
        self.summary = pd.DataFrame(rows)
        self.metrics = pd.DataFrame(metric_rows, columns=["benchmark", "grid", "strategy", "seed", "experience",
                                                          "metric", "value"])
        if not any(self.summary["grid"]):  # not a sweep with grid cells: no grid column
            self.summary = self.summary.drop(columns="grid")
            self.metrics = self.metrics.drop(columns="grid")
        self.failed: list[str] = []
        self._records = records

    def __repr__(self) -> str:
        s = self.summary
        return (f"Results({str(self.path)!r}: {len(s)} runs, strategies {sorted(s.strategy.unique())}, "
                f"benchmarks {sorted(s.benchmark.unique())})")

    def _pick(self, strategy: str, seed: int, benchmark: Optional[str], grid: Optional[str]):
        hits = [k for k in self._records if k[2] == strategy and k[3] == seed
                and (benchmark is None or k[0] == benchmark) and (grid is None or k[1] == grid)]
        if not hits:
            raise UserError(f"no run of strategy {strategy!r} seed {seed}"
                            f"{' on ' + benchmark if benchmark else ''} in {self.path}")
        if len(hits) > 1:
            raise UserError(f"{len(hits)} runs of strategy {strategy!r} seed {seed} in {self.path}: "
                            "say which with benchmark= (and grid=)")
        return self._records[hits[0]]

    def matrix(self, strategy: str, seed: int, benchmark: Optional[str] = None,
               grid: Optional[str] = None) -> "pd.DataFrame":
        """The accuracy matrix A[i][j] (%) of one run: rows "after experience i", columns "experience j"."""
        import pandas as pd

        A = self._pick(strategy, seed, benchmark, grid).matrix
        T = A.shape[0]
        return pd.DataFrame(A, index=pd.Index(range(T), name="after_experience"),
                            columns=pd.Index(range(T), name="experience"))

    def compare(self, a: str, b: str, metric: str = "last", *, grid: Optional[str] = None,
                n_resamples: Optional[int] = None, seed: int = 0) -> "Comparison":
        """Strategy ``a`` minus ``b`` on ``metric``, paired on the same (benchmark, grid cell, seed).

        Args:
            metric: ``avg``, ``last``, ``forgetting``, ``bwt`` or a ``task_aware_*`` column.
            grid: only the runs of this grid cell of a sweep (default: pairs from every cell).
            n_resamples: bootstrap resamples (default :data:`lamm_cl.stats.N_RESAMPLES`).
            seed: the bootstrap's seed, so a report is reproducible.

        Returns:
            A :class:`~lamm_cl.stats.Comparison`: mean difference, 95 % bootstrap interval,
            exact sign-flip p-value (None with fewer than 3 pairs) and the number of pairs.

        Raises:
            UserError: an unknown strategy or metric, no pair, or a pair of runs that differ in more than
                the strategy's options (benchmark, class order, split, shots, model, weights): named.
            ValueError: ``n_resamples``, ``seed`` or ``grid`` is not a valid value (named).
        """
        from lamm_cl import stats
        from lamm_cl.report import incomparable

        if n_resamples is not None and (isinstance(n_resamples, bool) or not isinstance(n_resamples, int)
                                        or n_resamples < 1):
            raise ValueError(f"n_resamples: expected a whole number of bootstrap resamples, 1 or more; "
                             f"got {n_resamples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a whole number 0 or more (the bootstrap's seed), got {seed!r}")
        if not isinstance(metric, str):
            raise ValueError(f"metric: expected a name like 'last', got {metric!r}")
        column = {v: k for k, v in METRIC_COLUMNS.items()}.get(metric, metric.lower())
        s = self.summary
        if grid is not None:
            cells = sorted(set(s["grid"])) if "grid" in s.columns else []
            if grid not in cells:
                raise ValueError(f"grid: {grid!r} is not a grid cell of {self.path}; "
                                 + (f"its cells: {', '.join(cells)}" if cells else "it has no grid cells"))
            s = s[s["grid"] == grid]
        if column not in s.columns:
            known = [*METRIC_COLUMNS, *(c for c in s.columns if c.startswith(_TASK_AWARE_PREFIX))]
            raise UserError(f"metric {metric!r}: expected one of {', '.join(known)}")
        for name in (a, b):
            if name not in set(s.strategy):
                raise UserError(f"strategy {name!r} is not in {self.path}; it holds {', '.join(sorted(set(s.strategy)))}")
        on = [c for c in ("benchmark", "grid", "seed") if c in s.columns]
        pairs = s[s.strategy == a][on + [column]].merge(s[s.strategy == b][on + [column]], on=on,
                                                        suffixes=("_a", "_b")).dropna()
        pairs = pairs.sort_values(on)
        if pairs.empty:
            raise UserError(f"{a} and {b} share no (benchmark, seed) in {self.path}: nothing to pair")
        for _, row in pairs.iterrows():  # pair only runs that differ in nothing but the strategy's options
            at = (row["benchmark"], row["grid"] if "grid" in on else "", None, int(row["seed"]))
            why = incomparable(self._records[(at[0], at[1], a, at[3])], self._records[(at[0], at[1], b, at[3])])
            if why:
                raise UserError(f"{a} and {b} are not comparable in {self.path}: {why}")
        return stats.compare_paired(pairs[column + "_a"].to_numpy(), pairs[column + "_b"].to_numpy(), a=a, b=b,
                                    metric=column, n_resamples=n_resamples or stats.N_RESAMPLES, seed=seed)
