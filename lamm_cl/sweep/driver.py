"""Running a sweep: load it with its launcher's options checked, decide which jobs to run, hand them
to a launcher in two phases (image features once per feature group, then the jobs), build each
benchmark's report as soon as its jobs are all done, and end with the table of done / skipped /
failed jobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lamm_cl.errors import UserError
from lamm_cl.sweep.launchers import Call, get_launcher, options
from lamm_cl.sweep.spec import Job, Sweep, check_output, expand, read_config, write_sweep
from lamm_cl.sweep.state import JobStatus, job_status, status_table, sweep_status

Log = Callable[[str], None]


@dataclass
class SweepOutcome:
    """How a sweep invocation ended."""

    statuses: list[JobStatus]  # every job, after the sweep
    shown: dict[str, str] = field(default_factory=dict)  # job id -> state shown instead ("skipped")
    reports: list[str] = field(default_factory=list)  # results folders whose report was (re)built
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, last log line): failed or interrupted
    table_path: Optional[Path] = None  # table.md, when it was (re)built
    table_error: str = ""  # why rebuilding table.md failed (an older table.md may be stale)

    @property
    def complete(self) -> bool:
        """Every job of the sweep is done (its results match the sweep's config)."""
        return all(s.state == "done" for s in self.statuses)

    @property
    def exit_code(self) -> int:
        """0 only when every job is done and the table was rebuilt; else 1 (failed, interrupted, pending,
        running elsewhere, or a stale table)."""
        return 0 if self.complete and not self.table_error else 1

    def table(self) -> list[str]:
        return status_table(self.statuses, self.shown)

    def problems(self) -> list[str]:
        """One line per reason the sweep is not complete (what the exit status stands for)."""
        lines = []
        if self.failed:
            lines.append(f"{len(self.failed)} job(s) failed or were interrupted: "
                         + "; ".join(f"{jid}: {line}" for jid, line in self.failed))
        for state, what in (("running", "still running in another process (not waited for)"),
                            ("pending", "not run")):
            ids = [s.job.id for s in self.statuses if s.state == state]
            if ids:
                lines.append(f"{len(ids)} job(s) {what}: {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}")
        if self.table_error:
            lines.append(self.table_error)
        return lines


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
            two cells with one folder, an unknown launcher or launcher option, ``workers: 0``).
        UserError: the output is a file, under a file, not writable, or another run's results folder.
    """
    cfg = read_config(path, launcher)
    options(get_launcher(cfg.launcher["name"]), cfg.launcher)  # its keys, types and values, even for --dry-run
    sweep = expand(cfg, path)
    check_output(sweep.output)
    return sweep


def select(statuses: list[JobStatus], retry_failed: bool,
           changed: Callable[[Job], str] = lambda job: "") -> tuple[list[JobStatus], dict[str, str], list[str]]:
    """Jobs to run now, the states shown for the rest, and one line per finished job whose config changed.

    Run: pending, interrupted, failed with ``retry_failed``, and done jobs whose recorded config is not
    the one the sweep would run now (``changed`` says how). Running jobs (another live process) are left
    alone.
    """
    todo, shown, notes = [], {}, []
    for s in statuses:
        if s.state == "done":
            what = changed(s.job)
            if what:
                notes.append(f"config changed, runs again: {s.job.id} ({what})")
                todo.append(s)
            else:
                shown[s.job.id] = "skipped"
        elif s.state == "running":
            continue  # another process is on it (a sweep still running, or its SLURM job)
        elif s.state == "failed" and not retry_failed:
            continue
        else:
            todo.append(s)
    return todo, shown, notes


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
    """Run every job of ``sweep`` that is not done, on the sweep's launcher, then rebuild ``table.md``.

    Finished jobs are skipped unless their config changed (then they run again, each said in one
    line), interrupted ones resume from their checkpoint, failed ones run again only with
    ``retry_failed``. A failed job does not stop the others. One driver per output: the output
    folder is locked for the whole sweep.

    Args:
        launch_kwargs: extra keyword arguments for the launcher's ``launch`` (e.g. a local
            worker ``initializer``).

    Raises:
        UserError: the launcher is unknown, its options are wrong or its extra is not installed;
            the output is not usable, or another live driver holds it.
        KeyboardInterrupt: SIGINT (or SIGTERM mapped to it): no job starts after it; running jobs
            keep their finished work and last checkpoint.
    """
    from lamm_cl import safe_io

    module = get_launcher(sweep.config.launcher["name"])
    opts = options(module, sweep.config.launcher)
    if hasattr(module, "check"):
        module.check(opts)
    check_output(sweep.output)
    holder = safe_io.lock_holder(sweep.output) if sweep.output.is_dir() else None
    if holder is not None:
        raise UserError(f"output {sweep.output}: another lamm-cl sweep is running into it ({holder}); wait for it, "
                        "or stop it (its jobs resume when the sweep is started again)")
    with safe_io.lock_output(sweep.output):
        return _run_locked(sweep, module, opts, retry_failed, log, launch_kwargs)


def _run_locked(sweep: Sweep, module, opts, retry_failed: bool, log: Log, launch_kwargs: Optional[dict]) -> SweepOutcome:
    from lamm_cl.report import build_report
    from lamm_cl.sweep.job import changed

    write_sweep(sweep)
    todo, shown, notes = select(sweep_status(sweep), retry_failed, changed)
    for line in notes:
        log(line)
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
        if c[0] == "run_job" and result.get("lost"):  # the launcher lost the call: say what the files say
            status = job_status(sweep.output, job_of[c[2]])
            state, msg = status.state, f"{msg}; {status.detail}" if status.detail else msg
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
    _rebuild_table(sweep, outcome)
    return outcome


def _rebuild_table(sweep: Sweep, outcome: SweepOutcome) -> None:
    """Rebuild ``table.md`` from what finished; say so when that failed and an older one is left (stale)."""
    from lamm_cl.sweep.table import build_table

    table = sweep.output / "table.md"
    try:
        build_table(sweep.output)
        outcome.table_path = table
    except Exception as e:  # noqa: BLE001 - the jobs' results stay; the table's state is what is reported
        nothing = isinstance(e, UserError) and not any(s.state == "done" for s in outcome.statuses)
        if nothing and not table.exists():
            return  # nothing finished yet, and no table to be stale
        outcome.table_error = (f"{table} was not rebuilt ({type(e).__name__}: {' '.join(str(e).split())})"
                               + ("; the one there is stale" if table.exists() else ""))
