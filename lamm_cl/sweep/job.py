"""Running one job of a sweep, wherever a launcher put it: read the job from ``sweep.json``, run
exactly what ``lamm-cl run`` runs for one strategy and one seed, and keep its log and state.

Both entry points take only the output folder and a job id (plain strings), so a local
process pool, a SLURM array task and a Ray worker call them the same way. Every run
resumes: a finished job is kept, a killed one continues from its last checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Iterable, Iterator, Optional

from lamm_cl.errors import UserError
from lamm_cl.sweep.spec import JOBS_DIR, Job, Sweep, read_sweep
from lamm_cl.sweep.state import job_status, log_path, state_path, write_state
from lamm_cl.warnings_policy import hide_third_party_warnings


@contextlib.contextmanager
def logging_to(path: Path):
    """Send everything this process prints (Python and C level, stdout and stderr) to ``path`` (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    streams = sys.stdout, sys.stderr
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)  # C-level output and child processes
        os.dup2(fd, 2)
        # Python-level output too, whatever the host process did to sys.stdout (Ray, pytest)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _job(sweep: Sweep, job_id: str) -> Job:
    for j in sweep.jobs:
        if j.id == job_id:
            return j
    raise UserError(f"{sweep.output}: the sweep has no job {job_id!r}")


def _config(job: Job):
    from lamm_cl import config as config_mod

    return _one_job(config_mod.load(job.config, job.run_overrides()), job)


def _one_job(cfg, job: Job):
    """``cfg`` (the job's file with its cell's overrides) narrowed to the job's strategy entry and seed."""
    entries = [e for e in cfg.strategies if e.run_label == job.strategy]
    if not entries:
        raise UserError(f"{job.config} no longer has strategy {job.strategy}")
    return dataclasses.replace(cfg, strategies=entries, seeds=[job.seed])


def job_configs(jobs: Iterable[Job]) -> Iterator[tuple[Job, object]]:
    """Each job with its config, as :func:`_config` gives it, each (file, grid cell) loaded once: the jobs of
    a cell differ only in strategy and seed (a dry run of the few-shot grid, 1,155 jobs, loads 385 configs)."""
    from lamm_cl import config as config_mod

    loaded: dict[tuple, object] = {}
    for job in jobs:
        key = (job.config, tuple(job.overrides))
        if key not in loaded:
            loaded[key] = config_mod.load(job.config, job.run_overrides())
        yield job, _one_job(loaded[key], job)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_job(output: str, job_id: str) -> dict:
    """Run job ``job_id`` of the sweep in ``output``; return ``{"job", "state", "message"}``.

    A failure (bad input, a NaN loss, any exception) is recorded and returned, never raised, so
    one job cannot stop the others. An interruption (Ctrl-C, SIGTERM where it is mapped to
    Ctrl-C, a launcher's ``SystemExit`` on pre-emption) is recorded and re-raised: the job's
    finished work and last checkpoint stay, and the next attempt resumes.
    """
    from lamm_cl import safe_io

    sweep = read_sweep(output)
    job = _job(sweep, job_id)
    out = Path(output)
    holder = safe_io.lock_holder(job.run_dir)
    if holder is not None and job_status(out, job).state == "interrupted":
        (job.run_dir / safe_io.LOCK_FILE).unlink(missing_ok=True)  # left by a lost job on another host
    elif holder is not None:  # a duplicate of a job that is running: leave it be
        return {"job": job.id, "state": "running", "message": f"already running ({holder})"}
    before = _state_bytes(out, job)
    with logging_to(log_path(out, job)):
        hide_third_party_warnings()  # workers never run cli.main: the same rule, applied here
        write_state(out, job, "running")
        _say(f"== job {job.id} (pid {os.getpid()}, {'resuming' if job.run_dir.exists() else 'starting'})")
        try:
            from lamm_cl.runner import run

            cfg = _config(job)
            what = changed(job, cfg)
            if what:  # its results are of a config the sweep no longer holds: replace them
                _say(f"== job {job.id}: config changed since it ran ({what}); running it again")
                shutil.rmtree(job.run_dir)
            records = run(cfg, Path(job.results), progress=True, log=_say, resume=True, lock_runs=True)
        except safe_io.InUseError as e:  # another process holds the run: its state is not ours to change
            msg = " ".join(str(e).split())
            _say(f"lamm-cl: not started: {msg}")
            _restore_state(out, job, before)
            return {"job": job.id, "state": "refused", "message": msg}
        except UserError as e:
            msg = " ".join(str(e).split())
            _say(f"lamm-cl: error: {msg}")
            write_state(out, job, "failed", msg)
            return {"job": job.id, "state": "failed", "message": msg}
        except (KeyboardInterrupt, SystemExit):
            _say(f"lamm-cl: job {job.id} interrupted; its finished work and last checkpoint are kept")
            write_state(out, job, "interrupted")
            raise
        except Exception as e:  # noqa: BLE001 - one job's crash must not stop the sweep
            traceback.print_exc()
            msg = f"{type(e).__name__}: {' '.join(str(e).split())}"
            write_state(out, job, "failed", msg)
            return {"job": job.id, "state": "failed", "message": msg}
        if records.failed:
            write_state(out, job, "failed", records.failed[0])
            return {"job": job.id, "state": "failed", "message": records.failed[0]}
        write_state(out, job, "done")
        _say(f"== job {job.id} done")
        return {"job": job.id, "state": "done", "message": ""}


def _state_bytes(output: Path, job: Job) -> Optional[bytes]:
    try:
        return state_path(output, job).read_bytes()
    except FileNotFoundError:
        return None


def _restore_state(output: Path, job: Job, data: Optional[bytes]) -> None:
    from lamm_cl.safe_io import atomic_write_bytes

    if data is None:
        state_path(output, job).unlink(missing_ok=True)
    else:
        atomic_write_bytes(state_path(output, job), data)


def changed(job: Job, cfg=None) -> str:
    """How the resolved config of ``job``'s finished run differs from the one the sweep would run now
    ('' when it does not, or the job has not finished).

    Compared as ``lamm-cl run --resume`` compares them (:func:`lamm_cl.runner.run_config`: what decides
    the run's numbers, not where it writes); an unreadable ``config.yaml`` counts as changed.
    """
    import yaml

    from lamm_cl.results import CONFIG_FILE, SUMMARY_FILE

    if not (job.run_dir / SUMMARY_FILE).is_file():
        return ""
    from lamm_cl.runner.record import run_config  # torch: only once a job has finished
    from lamm_cl.runner.validate import first_difference

    now = run_config((cfg if cfg is not None else _config(job)).to_dict(), job.strategy)
    try:
        then = run_config(yaml.safe_load((job.run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}, job.strategy)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return f"{job.run_dir / CONFIG_FILE} unreadable"
    return "" if now == then else first_difference(now, then)


def needs_features(cfg) -> bool:
    """True when a strategy of ``cfg`` reads cached image features (so a first stage can encode them once)."""
    from lamm_cl.registry import get_strategy

    return cfg.features.cache and any(get_strategy(e.name).inputs == "features" for e in cfg.strategies)


def reads_views(cfg) -> bool:
    """True when a strategy of ``cfg`` trains on cached augmented views (``features.train_views > 0`` and a
    features strategy registered with ``augmented_views``; SimpleCIL, RanPAC and RAPF read the centre crop)."""
    from lamm_cl.registry import get_strategy

    return needs_features(cfg) and cfg.features.train_views > 0 and any(
        get_strategy(e.name).inputs == "features" and get_strategy(e.name).augmented_views for e in cfg.strategies)


def feature_group(cfg) -> tuple:
    """Jobs whose configs agree on this read the same feature-store entries."""
    b, m, f = cfg.benchmark, cfg.model, cfg.features
    if b.sequence is not None:  # a sequence's datasets, each with its own root (in any order: the same entries)
        return (tuple(sorted((e.dataset, str(Path(e.root).expanduser())) for e in b.sequence)), "", m.arch,
                m.pretrained, f.cache_dir, f.dtype, f.train_views, m.precision)
    return (b.dataset, str(Path(b.root).expanduser()), m.arch, m.pretrained, f.cache_dir, f.dtype, f.train_views,
            m.precision)


def view_images(cfg, parts, seed: int, plan=None):
    """The training images whose augmented views the job of ``cfg`` (one seed) reads: its few-shot draw,
    as :func:`lamm_cl.runner.inputs.few_shot_images` gives the runner, or None for every training image.

    Args:
        plan: the job's plan, if already made (else it is made here).
    """
    from lamm_cl.runner.inputs import few_shot_images
    from lamm_cl.sequence import plan_for

    if cfg.features.train_views <= 0:
        return None
    return few_shot_images(cfg, {seed: plan if plan is not None else plan_for(parts, cfg.benchmark, seed)})


def view_sets(sweep: Sweep, group: tuple, parts) -> list:
    """The distinct training-image sets (index arrays; None: all) whose views the feature-reading jobs
    of ``group`` read. Each is its own store entry: a few-shot job's views are of its seed's draw."""
    seen: dict = {}
    for j, cfg in job_configs(sweep.jobs):
        if reads_views(cfg) and feature_group(cfg) == group:
            idx = view_images(cfg, parts, j.seed)
            seen.setdefault(None if idx is None else idx.tobytes(), idx)
    return list(seen.values())


def prepare_features(output: str, job_id: str) -> dict:
    """Encode, once, every image the jobs of ``job_id``'s feature group read, into the shared store.

    Train and test images at the centre crop, and with ``features.train_views > 0`` every
    augmented view of the training images each job reads (a few-shot job: its seed's draw, see
    :func:`view_sets`), under the keys the jobs look up. Jobs started afterwards find all of it
    in the store.
    """
    sweep = read_sweep(output)
    job = _job(sweep, job_id)
    log = Path(output) / JOBS_DIR / f"features__{job.benchmark}.log"
    with logging_to(log):
        hide_third_party_warnings()  # workers never run cli.main: the same rule, applied here
        try:
            from lamm_cl.features import FeatureExtractor
            from lamm_cl.model.clip import build_clip, resolve_device

            from lamm_cl.sequence import load_benchmark, member_samples

            cfg = _config(job)
            parts = load_benchmark(cfg.benchmark)
            clip = build_clip(cfg.model.arch, cfg.model.pretrained, resolve_device(cfg.device), cfg.model.precision)
            extractor = FeatureExtractor.from_config(clip, cfg.features)
            n = 0
            for samples in (parts.test, parts.train):
                for one in member_samples(samples) or [samples]:  # a sequence: each dataset under its own key
                    extractor.features(one)
                    extractor.forget()  # in the store now; ImageNet's views would not fit in memory together
                    n += len(one)
            views = cfg.features.train_views
            for idx in view_sets(sweep, feature_group(cfg), parts) if views > 0 else []:
                samples = parts.train if idx is None else parts.train.subset(idx)
                for v in range(views):  # the same samples and view as Inputs._features asks for
                    for one in member_samples(samples) or [samples]:
                        extractor.features(one, view=v)
                        extractor.forget()
                        n += len(one)
            _say(f"== features of {cfg.benchmark.describe()} ({cfg.model.arch} + {cfg.model.pretrained}): "
                 f"{n} images in the store")
            return {"job": f"features {job.benchmark}", "state": "done", "message": ""}
        except (UserError, OSError) as e:
            msg = " ".join(str(e).split())
            _say(f"lamm-cl: error: {msg}")
            return {"job": f"features {job.benchmark}", "state": "failed", "message": msg}
