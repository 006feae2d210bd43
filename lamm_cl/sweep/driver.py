"""Running a sweep: load it with its launcher's options checked, decide which jobs to run, hand them
to a launcher in two phases (image features once per feature group, then the jobs), build each
benchmark's report as soon as its jobs are all done, and end with the table of done / skipped /
failed jobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lamm_cl.sweep.launchers import Call, get_launcher, options
from lamm_cl.sweep.spec import Sweep, expand, read_config, write_sweep
from lamm_cl.sweep.state import JobStatus, status_table, sweep_status

Log = Callable[[str], None]


@dataclass
class SweepOutcome:
    """How a sweep invocation ended."""

    statuses: list[JobStatus]  # every job, after the sweep
    shown: dict[str, str] = field(default_factory=dict)  # job id -> state shown instead ("skipped")
    reports: list[str] = field(default_factory=list)  # results folders whose report was (re)built
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, last log line)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def table(self) -> list[str]:
        return status_table(self.statuses, self.shown)


def load_sweep(path: str | Path, launcher: Optional[str] = None) -> Sweep:
    """Read, validate and expand a sweep file, its launcher's options included.

    The launcher's keys and types are checked before any benchmark file is read, so a bad
    option fails first and before anything runs, ``--dry-run`` included.

    Args:
        launcher: ``--launcher``: replaces ``launcher.name`` (the other launcher options stay
            only when the name is unchanged).

    Raises:
        ConfigError: one line naming the problem (an unknown key, a glob that matches nothing,
            a strategy a benchmark file lacks, a bad grid value, two benchmark files with one name,
            an unknown launcher or launcher option).
    """
    cfg = read_config(path, launcher)
    options(get_launcher(cfg.launcher["name"]), cfg.launcher)  # its keys and types, even for --dry-run
    return expand(cfg, path)


def select(statuses: list[JobStatus], retry_failed: bool) -> tuple[list[JobStatus], dict[str, str]]:
    """Jobs to run now (pending, interrupted; failed with ``retry_failed``) and the states shown for the rest."""
    todo, shown = [], {}
    for s in statuses:
        if s.state == "done":
            shown[s.job.id] = "skipped"
        elif s.state == "running":
            continue  # another process is on it (a sweep still running, or its SLURM job)
        elif s.state == "failed" and not retry_failed:
            continue
        else:
            todo.append(s)
    return todo, shown


def feature_calls(sweep: Sweep, jobs) -> list[Call]:
    """One feature-extraction call per feature group among ``jobs`` (jobs that read cached features)."""
    from lamm_cl.sweep.job import _config, feature_group, needs_features

    calls, seen = [], set()
    for j in jobs:
        cfg = _config(j)
        if not needs_features(cfg):
            continue
        key = feature_group(cfg)
        if key not in seen:
            seen.add(key)
            calls.append(("prepare_features", str(sweep.output), j.id))
    return calls


def run_sweep(sweep: Sweep, *, retry_failed: bool = False, log: Log = lambda s: None,
              launch_kwargs: Optional[dict] = None) -> SweepOutcome:
    """Run every job of ``sweep`` that is not done, on the sweep's launcher.

    Finished jobs are skipped, interrupted ones resume from their checkpoint, failed ones
    run again only with ``retry_failed``. A failed job does not stop the others.

    Args:
        launch_kwargs: extra keyword arguments for the launcher's ``launch`` (e.g. a local
            worker ``initializer``).

    Raises:
        UserError: the launcher is unknown, its options are wrong or its extra is not installed.
    """
    from lamm_cl.report import build_report

    module = get_launcher(sweep.config.launcher["name"])
    opts = options(module, sweep.config.launcher)
    if hasattr(module, "check"):
        module.check(opts)
    write_sweep(sweep)
    todo, shown = select(sweep_status(sweep), retry_failed)
    jobs = [s.job for s in todo]
    by_folder: dict[str, set[str]] = {}
    for j in sweep.jobs:
        by_folder.setdefault(j.results, set()).add(j.id)
    left = {folder: {j.id for j in jobs if j.results == folder} for folder in by_folder}
    outcome = SweepOutcome(statuses=[])
    job_of = {j.id: j for j in sweep.jobs}

    def report(folder: str) -> None:
        if all((job_of[i].run_dir / "summary.json").is_file() for i in by_folder[folder]):
            try:
                build_report(folder)
                outcome.reports.append(folder)
                log(f"report: {Path(folder) / 'report.md'}")
            except Exception as e:  # noqa: BLE001 - a report problem must not lose the jobs' results
                log(f"report of {folder} failed: {type(e).__name__}: {e}")

    def on_done(c: Call, result: dict) -> None:
        state = result.get("state", "failed")
        msg = result.get("message", "")
        log(f"{state:<11} {result.get('job', c[2])}" + (f": {msg}" if msg and state != "done" else ""))
        if c[0] != "run_job":
            return
        job = job_of[c[2]]
        left[job.results].discard(job.id)
        if not left[job.results]:
            report(job.results)

    log(f"sweep {sweep.config.name}: {len(sweep.jobs)} jobs, {len(jobs)} to run "
        f"({len(sweep.jobs) - len(jobs)} done or not retried), launcher {sweep.config.launcher['name']}, "
        f"output {sweep.output}")
    if jobs:
        phases = [feature_calls(sweep, jobs), [("run_job", str(sweep.output), j.id) for j in jobs]]
        module.launch(phases, opts, str(sweep.output), on_done, **(launch_kwargs or {}))
    for folder, ids in left.items():  # folders none of whose jobs ran now: (re)build when complete
        if not ids and folder not in outcome.reports and not any(job_of[i] in jobs for i in by_folder[folder]):
            report(folder)
    outcome.statuses = sweep_status(sweep)
    outcome.shown = shown
    outcome.failed = [(s.job.id, s.detail) for s in outcome.statuses if s.state in ("failed", "interrupted")]
    return outcome
