"""`lamm-cl sweep`: the grid, the local / Ray / submitit launchers, job state, and the sweep table.

Every job here is a tiny offline run (digits, lamm-tiny with random weights, 1 epoch), so the
numbers mean nothing; what is checked is that a sweep job gives exactly what `lamm-cl run`
gives, that the image encoder runs once per image, and that the table adds up.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from builders import torch_threads

from lamm_cl.cli import main
from sweep_workers import count_encoder_calls  # worker initializers live in a light module

BENCH = """\
name: {name}
device: cpu
benchmark: {{dataset: digits, n_experiences: {T}, class_order: seeded, order_seed: 0}}
model: {{arch: lamm-tiny, pretrained: none}}
features: {{cache: true, cache_dir: {cache}}}
strategies:
  - name: zeroshot
  - name: linear_probe
    epochs: 1
    lr: 0.01
"""


def _write_benchmarks(folder: Path, cache: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "digits_a.yaml").write_text(BENCH.format(name="digits_a", T=2, cache=cache))
    (folder / "digits_b.yaml").write_text(BENCH.format(name="digits_b", T=5, cache=cache))


def _sweep_file(tmp: Path, launcher: dict, **extra) -> Path:
    data = {"name": "tiny", "benchmarks": ["bench/*.yaml"], "seeds": [1, 2], "output": str(tmp / "out"),
            "launcher": launcher, **extra}
    f = tmp / "sweep.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def _counting_worker():
    """A local-launcher initializer: count encoded images (count_encoder_calls), on one torch thread, as a
    worker of a 2-worker pool on 2 cores has; a reference run in this process is then run on one thread too
    (:func:`torch_threads`), so both reduce floats alike, with or without pytest-xdist."""
    import functools

    return functools.partial(count_encoder_calls, threads=1)


def _matrix(run_dir: Path) -> np.ndarray:
    return pd.read_csv(run_dir / "accuracy_matrix.csv", index_col=0).to_numpy()


def _last_avg(run_dir: Path) -> tuple[float, float]:
    """Last and Avg by hand: test-count-weighted rows of the accuracy matrix."""
    A = _matrix(run_dir)
    counts = np.array(json.loads((run_dir / "class_order.json").read_text())["test_counts"], dtype=float)
    rows = [float(np.dot(A[i, : i + 1], counts[: i + 1]) / counts[: i + 1].sum()) for i in range(len(A))]
    return rows[-1], float(np.mean(rows))


# --------------------------------------------------------------------------- the sweep file


def test_sweep_file_is_validated_and_expanded(tmp_path, capsys):
    from lamm_cl.errors import ConfigError
    from lamm_cl.sweep import load_sweep

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local", "workers": 2}, strategies=["linear_probe"],
                    grid={"benchmark.order_seed": [0, 3]})
    sweep = load_sweep(f)
    # 2 files x 2 grid cells x 1 strategy x 2 seeds, each with its own run folder
    assert len(sweep.jobs) == 8
    assert len({j.run_dir for j in sweep.jobs}) == 8
    job = next(j for j in sweep.jobs if j.benchmark == "digits_b" and j.cell == "order_seed=3" and j.seed == 2)
    assert job.run_dir == tmp_path / "out" / "digits_b" / "order_seed=3" / "linear_probe" / "seed2"
    assert job.run_overrides() == ["benchmark.order_seed=3", "seeds=[2]"]
    # what a dry run and the feature stage read: each (file, grid cell) loaded once, every job's config
    # the one its own file gives it with its cell's overrides and its seed (sweep.job.job_configs)
    from lamm_cl import config as config_mod
    from lamm_cl.sweep.job import job_configs

    loads = []
    real_load = config_mod.load
    with pytest.MonkeyPatch.context() as m:
        m.setattr(config_mod, "load", lambda path, overrides=(): loads.append(path) or real_load(path, overrides))
        pairs = list(job_configs(sweep.jobs))
    assert len(loads) == 4  # 2 files x 2 cells, for 8 jobs
    for j, cfg in pairs:
        alone = real_load(j.config, j.run_overrides())
        alone.strategies = [e for e in alone.strategies if e.run_label == j.strategy]
        assert cfg.to_dict() == alone.to_dict() and cfg.seeds == [j.seed], j.id
    assert {(j.seed, cfg.benchmark.order_seed) for j, cfg in pairs} == {(1, 0), (2, 0), (1, 3), (2, 3)}

    def error(**changes) -> str:
        bad = yaml.safe_load(f.read_text())
        bad.update(changes)
        f.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError) as e:
            load_sweep(f)
        f.write_text(yaml.safe_dump(yaml.safe_load(_sweep_file(tmp_path, {"name": "local"}).read_text())))
        return str(e.value)

    assert "workerz" in error(workerz=2) and "unknown key" in error(workerz=2)
    assert "matches no file" in error(benchmarks=["lamm_paper/*.yaml"])  # a glob that matches nothing yet
    assert "has no strategy coop" in error(strategies=["coop"])
    assert "seeds" in error(seeds="1")
    assert "grid.benchmark.shots" in error(grid={"benchmark.shots": 4})
    # and on the command line: one line, exit 2
    bad = yaml.safe_load(f.read_text())
    bad["launcher"] = {"name": "kubernetes"}
    f.write_text(yaml.safe_dump(bad))
    capsys.readouterr()
    assert main(["sweep", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown launcher 'kubernetes'" in err and "local, ray, slurm" in err


@pytest.mark.parametrize("launcher, module, extra", [("slurm", "submitit", "slurm"), ("ray", "ray", "ray")])
def test_missing_extra_is_one_line_naming_pip(tmp_path, capsys, monkeypatch, launcher, module, extra):
    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"])
    monkeypatch.setitem(sys.modules, module, None)  # `import submitit` / `import ray` now fails
    assert main(["sweep", str(f), "--launcher", launcher]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"pip install 'lamm-cl[{extra}]'" in err and module in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_status_reads_state_files(tmp_path, capsys):
    """A job whose process is gone is interrupted (resumable); a live one is running; done is results."""
    from lamm_cl.safe_io import process_start
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.spec import write_sweep
    from lamm_cl.sweep.state import log_path, state_path

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"])
    sweep = load_sweep(f)
    write_sweep(sweep)
    a, b, c = sweep.jobs[:3]
    for job, pid, line in ((a, os.getpid(), "zeroshot seed 1 experience 1/2"), (b, 2**22 + 12345, "killed here")):
        state_path(sweep.output, job).parent.mkdir(parents=True, exist_ok=True)
        state_path(sweep.output, job).write_text(json.dumps({"state": "running", "pid": pid,
                                                             "start": process_start(pid),
                                                             "host": os.uname().nodename}))
        log_path(sweep.output, job).write_text(f"first\n{line}\n")
    c.run_dir.mkdir(parents=True)
    (c.run_dir / "summary.json").write_text("{}")
    capsys.readouterr()
    assert main(["sweep", str(f), "--status"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs: 1 done, 1 running, 1 interrupted, 1 pending" in out
    assert f"running     {a.id}" in out and "experience 1/2" in out
    assert f"interrupted {b.id}" in out and "killed here" in out


# --------------------------------------------------------------------------- the local launcher


@pytest.mark.integration  # starts workers or runs whole jobs: left out of the fast set
def test_local_sweep_matches_single_runs_and_encodes_once(tmp_path, capsys, monkeypatch):
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.driver import run_sweep

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    # one worker runs the feature stage and all 8 jobs (the stage's store read by jobs in another process is
    # checked by the feature-stage test below). It forks from this process, which has torch, Avalanche and
    # open_clip imported: a spawned worker (the launcher's way, for CUDA) imports them again, ~10 CPU-s; the
    # signal tests below start spawned workers.
    import multiprocessing
    import types

    from lamm_cl.sweep import launch_local

    fork = multiprocessing.get_context("fork")
    monkeypatch.setattr(launch_local, "mp", types.SimpleNamespace(get_context=lambda _: fork))
    f = _sweep_file(tmp_path, {"name": "local", "workers": 1})
    counter = tmp_path / "encoded.txt"
    monkeypatch.setenv("SWEEP_TEST_ENCODER_LOG", str(counter))
    sweep = load_sweep(f)
    assert len(sweep.jobs) == 8  # 2 benchmarks x 2 strategies x 2 seeds
    init = _counting_worker()

    # the reports the driver writes once a benchmark's jobs are done: report.md and summary.csv for real,
    # their figures recorded, not drawn (seconds of matplotlib; `lamm-cl report` below draws the table's)
    from builders import record_plots

    figures_mp = pytest.MonkeyPatch()
    figures = record_plots(figures_mp)

    # --status while the jobs run: the sweep runs in a thread, the status is read beside it
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "outcome", run_sweep(sweep, launch_kwargs={"initializer": init})))
    t.start()
    def a_state_file_says_running() -> bool:  # a cheap look first: --status is asked once a job runs
        for state in (tmp_path / "out" / "_jobs").glob("*.json"):
            with contextlib.suppress(OSError):
                if '"running"' in state.read_text():
                    return True
        return False

    seen_running = False
    while t.is_alive() and not seen_running:  # once seen, stop: each read takes CPU from the worker
        if a_state_file_says_running():
            capsys.readouterr()
            assert main(["sweep", str(f), "--status"]) == 0
            seen_running |= " running " in capsys.readouterr().out
        time.sleep(0.1)
    t.join()
    figures_mp.undo()
    assert seen_running
    outcome = result["outcome"]
    assert outcome.exit_code == 0 and [s.state for s in outcome.statuses] == ["done"] * 8
    # each benchmark's report asked for its figures once, the table for its plot once
    assert [name for _, name, _ in figures].count("seen_accuracy") == 2
    assert [name for _, name, _ in figures].count("last_per_dataset") == 1

    # the image encoder ran once per image: digits' 1797 images, shared by both benchmarks
    from lamm_cl.data import load_dataset

    parts = load_dataset("digits")
    assert sum(int(n) for n in counter.read_text().split()) == len(parts.train) + len(parts.test)
    # ... by the sweep's feature stage, once for both files (one feature group), before the jobs: with one
    # worker the count alone would not tell the stage from a first job that encodes for the others
    jobs_dir = tmp_path / "out" / "_jobs"
    assert sorted(p.name for p in jobs_dir.glob("features__*.log")) == ["features__digits_a.log"]
    assert ": 1797 images in the store" in (jobs_dir / "features__digits_a.log").read_text()

    # each job's results are exactly those of `lamm-cl run` on the file alone (its report is not compared:
    # not drawn, seconds of matplotlib each)
    import lamm_cl.report

    for name in ("digits_a", "digits_b"):
        alone = tmp_path / "alone" / name
        with monkeypatch.context() as m, torch_threads(1):  # the worker's one thread (_counting_worker)
            m.setattr(lamm_cl.report, "build_report", lambda *a, **k: [])
            assert main(["run", str(tmp_path / "bench" / f"{name}.yaml"), "--output", str(alone), "--no-progress",
                         "--set", "seeds=[1, 2]", "--set", f"features.cache_dir={tmp_path / 'cache2'}"]) == 0
        for strategy in ("zeroshot", "linear_probe"):
            for seed in (1, 2):
                got = tmp_path / "out" / name / strategy / f"seed{seed}"
                np.testing.assert_array_equal(_matrix(got), _matrix(alone / strategy / f"seed{seed}"))
        assert (tmp_path / "out" / name / "summary.csv").is_file()  # built once its jobs were done
        assert (tmp_path / "out" / name / "report.md").is_file()

    # the combined table: Last and Avg by hand from the matrices, mean ± std over seeds
    assert main(["report", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False)
    for strategy in ("zeroshot", "linear_probe"):
        per = {d: [_last_avg(tmp_path / "out" / d / strategy / f"seed{s}") for s in (1, 2)]
               for d in ("digits_a", "digits_b")}
        for d, vals in per.items():
            row = table[(table.strategy == strategy) & (table.dataset == d)].iloc[0]
            last = [v[0] for v in vals]
            assert row.last_mean == pytest.approx((last[0] + last[1]) / 2)
            assert row.last_std == pytest.approx(abs(last[0] - last[1]) / math.sqrt(2))
            assert row.avg_mean == pytest.approx((vals[0][1] + vals[1][1]) / 2)
        # the mean column: per seed, the mean over the two benchmarks; then mean and std over seeds
        m = [(per["digits_a"][k][0] + per["digits_b"][k][0]) / 2 for k in (0, 1)]
        row = table[(table.strategy == strategy) & (table.dataset == "mean")].iloc[0]
        assert row.last_mean == pytest.approx(sum(m) / 2) and row.last_std == pytest.approx(abs(m[0] - m[1]) / 2**0.5)
    md = (tmp_path / "out" / "table.md").read_text()
    assert "| strategy | digits_a Last | digits_a Avg | digits_b Last | digits_b Avg | mean Last | mean Avg |" in md
    assert (tmp_path / "out" / "plots" / "last_per_dataset.png").stat().st_size > 1000
    logs = (tmp_path / "out" / "_jobs" / "digits_b__linear_probe__seed1.log").read_text()
    assert "\r" not in logs and "linear_probe experience 4 epoch 1/1: loss" in logs  # one line per epoch
    assert "Warning" not in logs  # no third-party warning (qpsolvers at Avalanche's import) in a job's log

    # a rerun skips every finished job and encodes nothing (the reports it rebuilds from the same files are
    # not drawn here: seconds of matplotlib, and the first run's are checked above)
    before = counter.read_text()
    with monkeypatch.context() as m:
        m.setattr(lamm_cl.report, "build_report", lambda *a, **k: [])
        again = run_sweep(load_sweep(f), launch_kwargs={"initializer": init})
    assert again.exit_code == 0 and set(again.shown.values()) == {"skipped"} and len(again.shown) == 8
    assert counter.read_text() == before
    assert "8 jobs: 8 skipped" in again.table()[0]


VIEWS_BENCH = """\
name: digits_v
device: cpu
benchmark: {{dataset: digits, n_experiences: 2, class_order: seeded, order_seed: 0, shots: 5}}
model: {{arch: lamm-tiny, pretrained: none}}
features: {{cache: true, cache_dir: {cache}, train_views: 2}}
strategies:
  - name: linear_probe
    epochs: 2
    lr: 0.01
"""


@pytest.mark.integration  # starts workers or runs whole jobs: left out of the fast set
def test_feature_stage_encodes_what_the_jobs_read_views_or_centre_crops_and_nothing_more(tmp_path, capsys,
                                                                                          monkeypatch, no_report):
    """Few-shot with 2 augmented views, two benchmark files, each with its own store (its own feature group):

    * digits_v, linear_probe: each job trains on views of its own seed's draw (5 shots x 10 digits = 50
      images), so the feature stage must encode exactly those -- 1,797 centre crops + 2 seeds x 50 x 2
      views = 1,997 images;
    * digits_s, SimpleCIL (like RanPAC and RAPF) builds its statistics from the centre crop even with
      train_views: 2 (it is registered with augmented_views=False), so the feature stage and --dry-run
      count the 1,797 centre crops only.

    The jobs after the stage encode nothing more. They run in this process (the driver's logic without
    workers, ~10 CPU-s of imports saved): what is counted is what they ask of the store, and a store entry
    read by another process than the one that wrote it is checked where processes are the claim
    (tests/test_feature_store_safety.py, and the submitit test, whose job reads the store its test process
    filled)."""
    import lamm_cl.sweep.driver as driver
    from lamm_cl.model.clip import FrozenCLIP
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.driver import run_sweep
    from lamm_cl.sweep.job import prepare_features
    from lamm_cl.sweep.spec import write_sweep

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "digits_v.yaml").write_text(VIEWS_BENCH.format(cache=tmp_path / "cache_v"))
    simplecil = VIEWS_BENCH.format(cache=tmp_path / "cache_s").split("strategies:")[0].replace(
        "name: digits_v", "name: digits_s") + "strategies:\n  - name: simplecil\n"
    (tmp_path / "bench" / "digits_s.yaml").write_text(simplecil)
    capsys.readouterr()
    f = _sweep_file(tmp_path, {"name": "local", "workers": 1}, benchmarks=["bench/digits_v.yaml"])
    assert main(["sweep", str(f), "--dry-run"]) == 0
    assert "images to encode once: 1,997 in 1 feature group(s), 200 of them augmented training views" in \
        capsys.readouterr().out
    f = _sweep_file(tmp_path, {"name": "local", "workers": 1}, benchmarks=["bench/digits_s.yaml"])
    assert main(["sweep", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "images to encode once: 1,797 in 1 feature group(s)" in out and "augmented" not in out

    # the stage of each file here, counting encoded images (in this process, where the jobs run too)
    f = _sweep_file(tmp_path, {"name": "local", "workers": 1})
    counter = tmp_path / "encoded.txt"
    monkeypatch.setenv("SWEEP_TEST_ENCODER_LOG", str(counter))
    original = FrozenCLIP.encode_images

    def counted(self, images):
        with open(counter, "a") as fh:
            fh.write(f"{len(images)}\n")
        return original(self, images)

    def encoded() -> int:
        return sum(int(n) for n in counter.read_text().split()) if counter.exists() else 0

    monkeypatch.setattr(FrozenCLIP, "encode_images", counted)
    sweep = load_sweep(f)
    write_sweep(sweep)
    stage = {}
    for name in ("digits_v", "digits_s"):
        before = encoded()
        first = next(j for j in sweep.jobs if j.benchmark == name)
        assert prepare_features(str(sweep.output), first.id)["state"] == "done"
        stage[name] = encoded() - before
    assert stage == {"digits_v": 1797 + 2 * 50 * 2, "digits_s": 1797}

    monkeypatch.setattr(driver, "get_launcher", lambda name: _in_process_launcher())
    outcome = run_sweep(sweep)
    assert outcome.exit_code == 0 and [s.state for s in outcome.statuses] == ["done"] * 4
    assert encoded() == sum(stage.values())  # the jobs encoded nothing
    for seed in (1, 2):
        assert "epoch 2/2" in (tmp_path / "out" / "_jobs" / f"digits_v__linear_probe__seed{seed}.log").read_text()


# --------------------------------------------------------------------------- Ray


# Ray's node waits a fixed 30 s (ray/_private/node.py, not a setting) for its raylet to register
# with the GCS, then raises this plain Exception. On a machine whose cores are taken by other jobs
# the raylet can miss that window; that says nothing about the launcher, so ray.init gets one
# more try for exactly this message. Any other failure, or a second time-out, fails the test.
RAY_STARTUP_TIMEOUT = "timed out during startup"


def _init_local_ray(ray) -> None:
    # one CPU: the sweep's jobs (num_cpus: 1 each) run one after the other in the one Ray worker, which
    # imports torch and the runner once (~10 CPU-s a worker)
    kwargs = {"num_cpus": 1, "include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for the time-out
        if RAY_STARTUP_TIMEOUT not in str(e):
            raise
        ray.shutdown()  # stop what the first try started (GCS, a half-started raylet)
        ray.init(**kwargs)


def test_init_local_ray_retries_the_startup_timeout_once_and_nothing_else():
    class FakeRay:
        def __init__(self, errors):
            self.errors, self.calls, self.shutdowns = list(errors), 0, 0

        def init(self, **kwargs):
            self.calls += 1
            assert kwargs["num_cpus"] == 1
            if self.errors:
                raise self.errors.pop(0)

        def shutdown(self):
            self.shutdowns += 1

    timeout = Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")
    once = FakeRay([timeout])
    _init_local_ray(once)
    assert (once.calls, once.shutdowns) == (2, 1)
    twice = FakeRay([timeout, Exception(timeout.args[0])])
    with pytest.raises(Exception, match=RAY_STARTUP_TIMEOUT):
        _init_local_ray(twice)
    assert twice.calls == 2
    other = FakeRay([RuntimeError("address already in use")])
    with pytest.raises(RuntimeError, match="address already in use"):
        _init_local_ray(other)
    assert (other.calls, other.shutdowns) == (1, 0)


def test_a_ray_started_by_the_launcher_keeps_the_processs_sigterm_handler(monkeypatch):
    """ray.init makes SIGTERM a bare sys.exit(15) in the driver; `lamm-cl sweep` must still answer it as
    the CLI does (finished work kept, exit 143), during the sweep and after. A Ray that only says what a
    real one does at init: the launch itself runs no task."""
    import types

    from lamm_cl.sweep import launch_ray

    ray_exit = lambda signum, frame: sys.exit(signum)  # noqa: E731 - what ray.init installs
    seen = {}

    class FakeRay(types.ModuleType):
        initialized = False

        def is_initialized(self):
            return self.initialized

        def init(self, **kwargs):
            self.initialized = True
            signal.signal(signal.SIGTERM, ray_exit)

        def cluster_resources(self):
            seen["during"] = signal.getsignal(signal.SIGTERM)
            return {"CPU": 1.0}

        def remote(self, **kwargs):
            return lambda f: f

        def shutdown(self):
            self.initialized = False

    ours = lambda signum, frame: None  # noqa: E731 - the handler the process had (the CLI's, say)
    before = signal.signal(signal.SIGTERM, ours)
    try:
        monkeypatch.setitem(sys.modules, "ray", FakeRay("ray"))
        launch_ray.launch([], launch_ray.Options(), "out", lambda c, r: None)
        assert seen["during"] is ours and signal.getsignal(signal.SIGTERM) is ours
        # a Ray the caller started is the caller's: its handler is left as it is
        ray = FakeRay("ray")
        ray.init()
        monkeypatch.setitem(sys.modules, "ray", ray)
        launch_ray.launch([], launch_ray.Options(), "out", lambda c, r: None)
        assert seen["during"] is ray_exit
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.integration  # starts workers or runs whole jobs: left out of the fast set
def test_ray_launcher_runs_jobs(tmp_path, no_report, digits_store):
    ray = pytest.importorskip("ray")  # installed by the `test` extra in CI
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.driver import run_sweep

    _write_benchmarks(tmp_path / "bench", digits_store)  # the sweep and the run below read the same store
    (tmp_path / "bench" / "digits_b.yaml").unlink()
    f = _sweep_file(tmp_path, {"name": "ray", "num_cpus": 1}, strategies=["linear_probe"])
    try:  # a Ray that fails to start (its agents time out on a crowded machine) is shut down all the same
        _init_local_ray(ray)
        outcome = run_sweep(load_sweep(f))
    finally:
        ray.shutdown()
    assert outcome.exit_code == 0 and [s.state for s in outcome.statuses] == ["done", "done"]
    alone = tmp_path / "alone"
    with torch_threads(1):  # as many as Ray gives a task of num_cpus: 1 (OMP_NUM_THREADS=1)
        assert main(["run", str(tmp_path / "bench" / "digits_a.yaml"), "--output", str(alone), "--no-progress",
                     "--set", "seeds=[1, 2]", "--set", "strategies=[{name: linear_probe, epochs: 1, lr: 0.01}]"]) == 0
    for seed in (1, 2):
        np.testing.assert_array_equal(_matrix(tmp_path / "out" / "digits_a" / "linear_probe" / f"seed{seed}"),
                                      _matrix(alone / "linear_probe" / f"seed{seed}"))


# --------------------------------------------------------------------------- submitit (SLURM's client), locally


@pytest.mark.integration  # starts workers or runs whole jobs: left out of the fast set
def test_submitit_job_killed_mid_experience_is_requeued_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.launch_slurm import Options, SweepTask, executor
    from lamm_cl.sweep.launchers import call
    from lamm_cl.sweep.spec import write_sweep

    bench = tmp_path / "bench"
    bench.mkdir()
    # 5 experiences: killed inside a later one, requeued, resumed (the margin: the signal must land before the
    # last experience ends, whatever the machine's speed)
    (bench / "long.yaml").write_text(BENCH.format(name="long", T=5, cache=tmp_path / "cache").replace(
        "epochs: 1", "epochs: 6"))
    f = _sweep_file(tmp_path, {"name": "slurm", "cluster": "local", "gpus_per_job": 0, "cpus_per_job": 1},
                    strategies=["linear_probe"], seeds=[3])
    sweep = load_sweep(f)
    write_sweep(sweep)
    (job,) = sweep.jobs
    # the reference: the same job, uninterrupted, through the same call a task makes, run in this process on
    # the task's one torch thread (CPU thread counts change float reductions; the task gets OMP_NUM_THREADS=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    ref_file = tmp_path / "ref.yaml"
    ref_file.write_text(f.read_text().replace(str(tmp_path / "out"), str(tmp_path / "ref")))
    ref = load_sweep(ref_file)
    write_sweep(ref)
    # first the sweep's feature stage, so both runs read the store (extracting in a run draws from torch's RNG)
    from lamm_cl.sweep.job import prepare_features

    assert prepare_features(str(sweep.output), job.id)["state"] == "done"
    ex = executor(Options(cluster="local", gpus_per_job=0, cpus_per_job=1, time_min=10), str(sweep.output))
    sj = ex.submit(SweepTask(("run_job", str(sweep.output), job.id)))
    ckpt = job.run_dir / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists():  # the first experience is done: the job is now inside a later one
        assert time.time() < deadline and not sj.done(), "the job finished or stalled before it could be killed"
        time.sleep(0.02)
    os.kill(sj._process.pid, signal.SIGTERM)  # what SLURM sends on pre-emption (forwarded to the task)
    # the reference runs here while the job is requeued and resumes (submitit polls it once a second)
    with torch_threads(1):
        assert call(("run_job", str(ref.output), ref.jobs[0].id))["state"] == "done"
    result = sj.result()
    assert result["state"] == "done"
    log = (sweep.output / "_jobs" / f"{job.id}.log").read_text()
    assert "interrupted" in log and "resuming at experience" in log  # it was stopped, requeued, resumed
    summary = json.loads((job.run_dir / "summary.json").read_text())
    assert summary["info"]["resumed"] is True
    np.testing.assert_array_equal(_matrix(job.run_dir), _matrix(ref.jobs[0].run_dir))


# --------------------------------------------------------------------------- the shipped sweeps


def test_shipped_sweeps_expand(capsys):
    from lamm_cl.errors import ConfigError
    from lamm_cl.sweep import load_sweep

    coop = load_sweep("benchmarks/sweeps/coop11.yaml")
    assert len({j.benchmark for j in coop.jobs}) == 11 and len(coop.jobs) == 11 * 11 * 3  # datasets x strategies x seeds
    # the shot grid (lamm_paper_fewshot.yaml) is expanded and dry-run in test_shot_curve.py
    if list(Path("benchmarks/lamm_paper").glob("*.yaml")):
        assert load_sweep("benchmarks/sweeps/lamm_paper.yaml").jobs
    else:  # the protocol files are not there yet: a clear error at sweep time
        with pytest.raises(ConfigError, match="lamm_paper/\\*.yaml' matches no file"):
            load_sweep("benchmarks/sweeps/lamm_paper.yaml")
    # the dry run counts the jobs and says which datasets it could not count
    capsys.readouterr()
    assert main(["sweep", "benchmarks/sweeps/coop11.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "363 jobs in 11 results folders" in out and "estimated GPU-hours" in out
    if "not here, counted from their known split sizes" in out:  # no CoOp data on this machine (issue 28, item 6)
        # the README's table, counted on stand-in folders of CoOp's split sizes: 16 shots of every class
        assert "images to encode once: 4,412,210 in 11 feature group(s), 2,886,000 of them" in out
        for name, steps in (("maple", "131,460"), ("lamm", "89,025"), ("rapf", "48,915"), ("finetune", "22,305"),
                            ("simplecil", "732")):
            assert f"{name:<16} {steps:>12} steps" in out, name
        assert "estimated GPU-hours: 9.5 (" in out


def test_dry_run_counts_steps_and_images(tmp_path, capsys):
    """digits: 1797 images; linear_probe, 1 epoch, batch 32, over 2 seeds of a 2- and a 5-experience split."""
    from lamm_cl.benchmark import make_plan
    from lamm_cl.config import load
    from lamm_cl.data import load_dataset

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, cost={"encode_image_s": 1.0, "feature_step_s": 10.0})
    parts = load_dataset("digits")
    steps = 0
    for name in ("digits_a", "digits_b"):
        b = load(tmp_path / "bench" / f"{name}.yaml").benchmark
        for seed in (1, 2):  # floor(images of the experience / 32), the last partial batch dropped
            steps += sum(len(i) // 32 for i in make_plan(parts, b, seed).train_index)
    capsys.readouterr()
    assert main(["sweep", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 jobs in 2 results folders" in out and "images to encode once: 1,797 in 1 feature group" in out
    assert f"{'linear_probe':<16} {steps:>12,} steps" in out
    assert f"estimated GPU-hours: {(1797 * 1.0 + steps * 10.0) / 3600:.1f}" in out
    assert not (tmp_path / "out").exists()


CALIBRATE_BENCH = """\
name: digits_c
device: cpu
seeds: [1]
benchmark: {{dataset: digits, n_experiences: 2, class_order: seeded, order_seed: 0}}
model: {{arch: lamm-tiny, pretrained: none}}
features: {{cache: true, cache_dir: {cache}}}
strategies:
  - name: zeroshot
  - name: lamm
    epochs: 2
    batch_size: 16
  - name: maple
    epochs: 1
    batch_size: 4
    n_ctx: 2
    prompt_depth: 1
"""


def test_calibrate_measures_costs_that_paste_back_and_drive_the_estimate(tmp_path, capsys):
    """lamm-tiny on CPU: three positive timings, a `cost:` line the sweep parser reads back to the same
    numbers, and an estimate that is images x encode + steps x step time, counted here by hand."""
    import re

    from lamm_cl.benchmark import make_plan
    from lamm_cl.config import load
    from lamm_cl.data import load_dataset
    from lamm_cl.sweep import load_sweep

    (tmp_path / "bench").mkdir()
    bench = tmp_path / "bench" / "digits_c.yaml"
    bench.write_text(CALIBRATE_BENCH.format(cache=tmp_path / "cache"))
    f = _sweep_file(tmp_path, {"name": "local"}, seeds=[1], cost={"encode_image_s": 9.0, "feature_step_s": 9.0,
                                                                  "image_step_s": 9.0})
    capsys.readouterr()
    assert main(["sweep", str(f), "--dry-run", "--calibrate"]) == 0
    out = capsys.readouterr().out
    # the sweep's own strategies were timed, at their benchmark file's batch sizes
    assert "lamm step (batch 16, 10 classes)" in out and "maple step (batch 4, 10 classes)" in out
    line = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("cost: {"))
    cost = yaml.safe_load(line)["cost"]
    assert set(cost) == {"encode_image_s", "feature_step_s", "image_step_s"}
    assert all(isinstance(v, float) and math.isfinite(v) and 0 < v < 9.0 for v in cost.values()), cost

    # pasted into the sweep file, the line parses back to exactly those values
    data = yaml.safe_load(f.read_text())
    f.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "cost"}) + line + "\n")
    assert vars(load_sweep(f).config.cost) == cost

    # by hand: digits' 1,797 images encoded once; lamm 2 epochs of floor(n / 16), maple 1 of floor(n / 4)
    plan = make_plan(load_dataset("digits"), load(bench).benchmark, 1)
    lamm_steps = sum(2 * (len(i) // 16) for i in plan.train_index)
    maple_steps = sum(len(i) // 4 for i in plan.train_index)
    seconds = 1797 * cost["encode_image_s"] + lamm_steps * cost["feature_step_s"] + maple_steps * cost["image_step_s"]
    assert f"{'lamm':<16} {lamm_steps:>12,} steps" in out and f"{'maple':<16} {maple_steps:>12,} steps" in out
    # measured on a CPU, the estimate is in that CPU's hours, not GPU-hours (issue 28, item 6)
    on_gpu = "measured on cuda" in out
    unit = "GPU-hours" if on_gpu else r"hours on cpu \(not GPU-hours\)"
    printed = re.search(rf"estimated {unit}: ([0-9.]+) \(([0-9,]+) s;", out)
    assert printed is not None, out
    assert on_gpu or "estimated GPU-hours" not in out
    assert printed.group(1) == f"{seconds / 3600:.1f}"
    assert abs(int(printed.group(2).replace(",", "")) - seconds) <= 0.5 + 1e-6
    # and a plain --dry-run with the pasted line prints the very same estimate
    assert main(["sweep", str(f), "--dry-run"]) == 0
    again = capsys.readouterr().out
    assert re.search(r"estimated GPU-hours: ([0-9.]+) \(([0-9,]+) s;", again).groups() == printed.groups()


def test_calibrate_cost_line_is_yaml_numbers_even_when_tiny():
    """1e-05 written as such would be a string to YAML 1.1 (no dot): the line must stay positional."""
    from lamm_cl.sweep.calibrate import Calibration, Timing
    from lamm_cl.sweep.spec import CostConfig

    t = Timing("x", 1.0, 1)
    cal = Calibration("cpu", "m", t, t, None, CostConfig(encode_image_s=1e-05, feature_step_s=0.000123,
                                                         image_step_s=2.5))
    assert yaml.safe_load(cal.cost_line())["cost"] == {"encode_image_s": 1e-05, "feature_step_s": 0.000123,
                                                        "image_step_s": 2.5}


def test_calibrate_without_dry_run_is_one_line_and_status_2(tmp_path, capsys):
    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"})
    assert main(["sweep", str(f), "--calibrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--calibrate goes with --dry-run" in err
    assert not (tmp_path / "out").exists()


def test_table_one_per_grid_cell_with_published_figures(tmp_path):
    """Hand-made results: a constant matrix v gives Last = Avg = v, so every cell is known in advance."""
    from lamm_cl.results import RunRecord, write_run
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.spec import write_sweep
    from lamm_cl.sweep.table import build_table

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["linear_probe"], grid={"benchmark.order_seed": [0, 3]})
    sweep = load_sweep(f)
    write_sweep(sweep)
    # the runs claim CIFAR-100, 10 experiences, ViT-B-16 + openai: Continual-CLIP's published figures match
    config = {"benchmark": {"dataset": "cifar100", "shots": None}, "model": {"arch": "ViT-B-16", "pretrained": "openai"},
              "strategies": [{"name": "linear_probe"}]}

    def value(j) -> float:
        return 10.0 * j.seed + (50.0 if j.benchmark == "digits_b" else 0.0) + (1.0 if j.cell == "order_seed=3" else 0.0)

    for j in sweep.jobs:
        A = np.full((10, 10), np.nan)
        A[np.tril_indices(10)] = value(j)
        write_run(j.run_dir, RunRecord(benchmark=j.benchmark, strategy="linear_probe", seed=j.seed, matrix=A,
                                       test_counts=[3] * 10, experiences=[[i] for i in range(10)],
                                       class_names=[str(i) for i in range(10)], class_order=list(range(10)),
                                       per_class_accuracy=[value(j)] * 10, config=config, matrix_task_aware=A,
                                       info={"weights": {"arch": "ViT-B-16", "pretrained": "openai",
                                                         "file": "ViT-B-16-openai.pt", "sha256": "0" * 64}}))
    build_table(sweep.output)
    table = pd.read_csv(sweep.output / "table.csv", keep_default_na=False)
    ours = table[table.strategy == "linear_probe"]
    got = {(r.cell, r.dataset): (float(r.last_mean), float(r.last_std), float(r.avg_mean)) for r in ours.itertuples()}
    sd = 10 / math.sqrt(2)  # two seeds 10 apart
    assert got[("order_seed=0", "digits_a")] == pytest.approx((15.0, sd, 15.0))
    assert got[("order_seed=0", "digits_b")] == pytest.approx((65.0, sd, 65.0))
    assert got[("order_seed=0", "mean")] == pytest.approx((40.0, sd, 40.0))
    assert got[("order_seed=3", "mean")] == pytest.approx((41.0, sd, 41.0))
    published = table[table.strategy.str.startswith("published: Continual-CLIP")]
    assert set(published.dataset) == {"digits_a", "digits_b"}
    assert {float(x) for x in published.last_mean} == {66.72} and {float(x) for x in published.avg_mean} == {75.17}
    md = (sweep.output / "table.md").read_text()
    assert "## order_seed=0" in md and "## order_seed=3" in md
    assert "| linear_probe | 15.00 ± 7.07 | 15.00 ± 7.07 | 65.00 ± 7.07 | 65.00 ± 7.07 | 40.00 ± 7.07 |" in md
    assert (sweep.output / "plots" / "last_per_dataset_order_seed_3.png").is_file()


# --------------------------------------------------------------------------- failures and reruns


@pytest.fixture(scope="session")
def digits_store(feature_store) -> Path:
    """The session's feature store (conftest), for this file's sweeps of digits whose claims are about jobs,
    states and files: digits' 1,797 images are encoded once per xdist worker, by whichever test of the
    session comes first. The tests that count encoded images keep stores of their own."""
    return feature_store


def _in_process_launcher():
    """A launcher that runs every call right here, in order: the driver's logic without processes."""
    from types import SimpleNamespace

    from lamm_cl.sweep.launch_local import Options
    from lamm_cl.sweep.launchers import call

    def launch(phases, options, output, on_done):
        for calls in phases:
            for c in calls:
                on_done(c, call(c))

    return SimpleNamespace(Options=Options, launch=launch)


@pytest.mark.integration  # starts workers or runs whole jobs: left out of the fast set
def test_failed_job_does_not_stop_others_and_is_retried_only_when_asked(tmp_path, capsys, monkeypatch, digits_store,
                                                                         no_report):
    import lamm_cl.sweep.driver as driver

    bench = tmp_path / "bench"
    _write_benchmarks(bench, digits_store)
    (bench / "digits_b.yaml").unlink()
    broken = BENCH.format(name="broken", T=2, cache=digits_store).replace(
        "dataset: digits", f"dataset: imagefolder, root: {tmp_path / 'nowhere'}")
    (bench / "broken.yaml").write_text(broken)
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"], seeds=[1])
    monkeypatch.setattr(driver, "get_launcher", lambda name: _in_process_launcher())
    capsys.readouterr()
    assert main(["sweep", str(f)]) == 1
    captured = capsys.readouterr()
    assert "2 jobs: 1 done, 1 failed" in captured.out
    err = captured.err.strip()
    assert err.count("\n") == 0 and "broken__zeroshot__seed1:" in err and str(tmp_path / "nowhere") in err
    assert (tmp_path / "out" / "digits_a" / "zeroshot" / "seed1" / "summary.json").is_file()
    log = tmp_path / "out" / "_jobs" / "broken__zeroshot__seed1.log"
    assert log.read_text().count("== job broken__zeroshot__seed1") == 1

    assert main(["sweep", str(f)]) == 1  # a rerun skips the done job and leaves the failed one alone
    assert "2 jobs: 1 skipped, 1 failed" in capsys.readouterr().out
    assert log.read_text().count("== job broken__zeroshot__seed1") == 1
    assert main(["sweep", str(f), "--retry-failed"]) == 1  # asked: it runs (and fails) again
    assert log.read_text().count("== job broken__zeroshot__seed1") == 2


# --------------------------------------------------------------------------- grid cells, bad input (issue 29)


def _refused(argv, tmp_path, *phrases) -> str:
    """``lamm-cl ARGV`` is refused in one line with exit 2, naming ``phrases``, and writes no output folder."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    text = err.getvalue().strip()
    assert code == 2, text
    assert text.count("\n") == 0 and "Traceback" not in text, text
    for phrase in phrases:
        assert phrase in text, text
    assert not (tmp_path / "out").exists()
    return text


def test_distinct_grid_values_get_distinct_stable_cells(tmp_path):
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.spec import CELL_MAX, cell_name

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    templates = ["a photo of a {}!", "a photo of a {}?", "x" * 400 + " {}"]
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"], seeds=[1],
                    grid={"benchmark.template": templates})
    jobs = [j for j in load_sweep(f).jobs if j.benchmark == "digits_a"]
    assert len({j.cell for j in jobs}) == len({j.id for j in jobs}) == len({j.run_dir for j in jobs}) == 3
    assert jobs[0].cell.startswith("template=a-photo-of-a-") and len(jobs[2].cell) <= CELL_MAX
    assert [j.cell for j in load_sweep(f).jobs if j.benchmark == "digits_a"] == [j.cell for j in jobs]  # stable
    # a plain value keeps its plain name; the string '16' is not the number 16; a list is not its flattening
    assert cell_name({"benchmark.shots": 16}) == "shots=16"
    assert len({cell_name({"k": v}) for v in (16, "16", [1, 6], "1-6")}) == 4


def test_a_collision_that_still_happens_is_refused_before_anything_runs(tmp_path, monkeypatch):
    import lamm_cl.sweep.spec as spec

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"], grid={"benchmark.order_seed": [0, 3]})
    monkeypatch.setattr(spec, "cell_name", lambda values: "same" if values else "")
    _refused(["sweep", str(f)], tmp_path, "both get the folder 'same'")


@pytest.mark.parametrize("change, phrases", [
    ({"strategies": ["zeroshot", "zeroshot"]}, ["strategies: zeroshot listed twice"]),
    ({"grid": {"benchmark.order_seed": [1, 1]}}, ["grid.benchmark.order_seed: the value 1 is listed twice"]),
    ({"seeds": [1, float("nan")]}, ["seeds[1]: expected an integer, got nan"]),
    ({"cost": {"encode_image_s": float("nan")}}, ["cost.encode_image_s", "got nan"]),
    ({"cost": {"feature_step_s": -0.4}}, ["cost.feature_step_s", "got -0.4"]),
    ({"launcher": {"name": "local", "workers": 0}}, ["launcher.workers", "got 0"]),
    ({"launcher": {"name": "slurm", "time_min": 0}}, ["launcher.time_min", "got 0"]),
])
def test_bad_sweep_input_is_one_line_exit_2_and_writes_nothing(tmp_path, change, phrases):
    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    change = {"strategies": ["zeroshot"], **change}
    f = _sweep_file(tmp_path, change.pop("launcher", {"name": "local"}), **change)
    _refused(["sweep", str(f)], tmp_path, *phrases)
    _refused(["sweep", str(f), "--dry-run"], tmp_path, *phrases)  # checked at load time, dry run included


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "_jobs"])
def test_a_benchmark_name_that_is_not_one_folder_is_refused(tmp_path, name):
    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    (tmp_path / "bench" / "digits_b.yaml").unlink()
    text = (tmp_path / "bench" / "digits_a.yaml").read_text().replace("name: digits_a", f"name: '{name}'")
    (tmp_path / "bench" / "digits_a.yaml").write_text(text)
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"])
    _refused(["sweep", str(f), "--dry-run"], tmp_path, f"name {name!r} cannot be a folder")
    assert not (tmp_path / "escaped").exists()


def test_without_a_gpu_device_file_the_local_launcher_counts_no_gpu_without_torch(monkeypatch):
    """The driver only orchestrates: on a Linux machine with no /dev/nvidia<N> (nor ROCm's /dev/kfd) it finds
    no GPU without importing torch; with a device file it asks torch, and CUDA_VISIBLE_DEVICES wins over both."""
    import glob

    from lamm_cl.sweep import launch_local

    class FakeCuda:  # a torch that would say 2: an answer of none means it was not asked
        @staticmethod
        def device_count():
            return 2

    monkeypatch.setitem(sys.modules, "torch", type("FakeTorch", (), {"cuda": FakeCuda}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(launch_local.sys, "platform", "linux")
    monkeypatch.setattr(launch_local.os.path, "exists", lambda p: False)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    assert launch_local.visible_gpus() == []
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1"])
    assert launch_local.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert launch_local.visible_gpus() == ["3"]


def test_slurm_where_there_is_none_is_refused_unless_local_is_asked(tmp_path, monkeypatch):
    import shutil

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"])
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None)
    _refused(["sweep", str(f), "--launcher", "slurm"], tmp_path, "no SLURM reachable", "cluster: local")


@pytest.mark.parametrize("kind", ["file", "under a file", "read-only", "a run's results", "_jobs a file"])
def test_an_output_the_sweep_cannot_own_is_refused(tmp_path, kind):
    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    out = tmp_path / "place"
    target = {"file": out, "under a file": out / "deeper", "read-only": out / "new",
              "a run's results": out, "_jobs a file": out}[kind]
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"], output=str(target))
    if kind in ("file", "under a file"):
        out.write_text("x")
    elif kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        out.mkdir()
        out.chmod(0o500)
    elif kind == "a run's results":
        (out / "zeroshot" / "seed0").mkdir(parents=True)
    else:
        out.mkdir()
        (out / "sweep.json").write_text("{}")
        (out / "_jobs").write_text("")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        _refused(["sweep", str(f)], tmp_path, "output", str(target))
    finally:
        out.chmod(0o700) if out.is_dir() else None
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("file, content, phrase", [
    ("sweep.json", "JOB_RESULTS_NULL", "jobs[0].results"),
    ("sweep.json", "[]", "malformed"),
    ("state", {"state": "running", "pid": "abc"}, "pid 'abc'"),
    ("state", [], "malformed job state"),
    ("state", {"state": "bogus"}, "malformed job state"),
])
def test_malformed_sweep_json_or_job_state_is_one_line(tmp_path, file, content, phrase):
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.spec import write_sweep
    from lamm_cl.sweep.state import state_path

    _write_benchmarks(tmp_path / "bench", tmp_path / "cache")
    f = _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"])
    sweep = load_sweep(f)
    write_sweep(sweep)
    if file == "sweep.json":
        data = json.loads((sweep.output / "sweep.json").read_text())
        data["jobs"][0]["results"] = None
        (sweep.output / "sweep.json").write_text(json.dumps(data) if content == "JOB_RESULTS_NULL" else content)
    else:
        state_path(sweep.output, sweep.jobs[0]).parent.mkdir()
        state_path(sweep.output, sweep.jobs[0]).write_text(json.dumps(content))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["sweep", str(f), "--status"]) == 2
    assert err.getvalue().count("\n") == 1 and phrase in err.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- job liveness, exit status


def test_running_means_the_very_process_that_wrote_the_state(tmp_path):
    """A job is running only while the process that recorded it (pid and start time) lives."""
    import socket

    from lamm_cl.safe_io import process_start
    from lamm_cl.sweep.spec import Job
    from lamm_cl.sweep.state import job_status, state_path

    job = Job(id="j", benchmark="b", config="c.yaml", overrides=[], cell="", strategy="zeroshot", seed=0,
              results=str(tmp_path / "b"))
    here = socket.gethostname()
    cases = {
        "this process": ({"pid": os.getpid(), "start": process_start(os.getpid())}, "running"),
        "after a reboot: pid 1 now": ({"pid": 1, "start": "another-boot:12"}, "interrupted"),
        "no pid": ({}, "interrupted"),
        "pid now another process": ({"pid": 1, "start": process_start(os.getpid())}, "interrupted"),
        "dead pid": ({"pid": 2**22 + 12345, "start": "x:1"}, "interrupted"),
    }
    for why, (info, expected) in cases.items():
        state_path(tmp_path, job).parent.mkdir(exist_ok=True)
        state_path(tmp_path, job).write_text(json.dumps({"state": "running", "host": here, **info}))
        assert job_status(tmp_path, job).state == expected, why


def _tiny_sweep(tmp_path, cache: Path | None = None, **extra) -> Path:
    """One job (digits_a, zeroshot, seed 1), its features in ``cache`` (default: a store of its own)."""
    bench = tmp_path / "bench"
    _write_benchmarks(bench, cache or tmp_path / "cache")
    (bench / "digits_b.yaml").unlink()
    return _sweep_file(tmp_path, {"name": "local"}, strategies=["zeroshot"], seeds=[1], **extra)


def _run_cli(argv) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_exit_is_not_0_while_jobs_are_pending_or_running_elsewhere(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import lamm_cl.sweep.driver as driver
    from lamm_cl.safe_io import process_start
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.launch_local import Options
    from lamm_cl.sweep.state import state_path

    f = _tiny_sweep(tmp_path)
    lost = SimpleNamespace(Options=Options, launch=lambda phases, options, output, on_done: None)  # runs nothing
    monkeypatch.setattr(driver, "get_launcher", lambda name: lost)
    code, out, err = _run_cli(["sweep", str(f)])
    assert code == 1 and "1 jobs: 1 pending" in out and "1 job(s) not run" in err
    job = load_sweep(f).jobs[0]  # now "running" in a live process that is not this sweep's
    state_path(tmp_path / "out", job).parent.mkdir()
    state_path(tmp_path / "out", job).write_text(json.dumps({"state": "running", "pid": os.getpid(),
                                                             "start": process_start(os.getpid()),
                                                             "host": os.uname().nodename}))
    code, out, err = _run_cli(["sweep", str(f)])
    assert code == 1 and "0 to run" in out and "still running in another process" in err


def test_a_table_that_could_not_be_rebuilt_is_said_stale_and_not_0(tmp_path, monkeypatch, digits_store, no_report):
    import lamm_cl.sweep.driver as driver
    import lamm_cl.sweep.table as table

    f = _tiny_sweep(tmp_path, digits_store)
    monkeypatch.setattr(driver, "get_launcher", lambda name: _in_process_launcher())
    assert _run_cli(["sweep", str(f)])[0] == 0
    assert (tmp_path / "out" / "table.md").is_file()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(table, "build_table", broken)
    code, out, err = _run_cli(["sweep", str(f)])
    assert code == 1 and "table.md was not rebuilt (OSError: disk full); the one there is stale" in err


def test_a_finished_job_whose_config_changed_runs_again(tmp_path, monkeypatch, digits_store, no_report):
    import lamm_cl.sweep.driver as driver

    f = _tiny_sweep(tmp_path, digits_store)
    monkeypatch.setattr(driver, "get_launcher", lambda name: _in_process_launcher())
    assert _run_cli(["sweep", str(f)])[0] == 0
    run_dir = tmp_path / "out" / "digits_a" / "zeroshot" / "seed1"
    bench = tmp_path / "bench" / "digits_a.yaml"
    bench.write_text(bench.read_text().replace("order_seed: 0", "order_seed: 5"))
    code, out, _ = _run_cli(["sweep", str(f)])
    assert code == 0
    assert "config changed, runs again: digits_a__zeroshot__seed1 (benchmark.order_seed: 5 now, 0 there)" in out
    assert "1 jobs: 1 done" in out
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["benchmark"]["order_seed"] == 5
    code, out, _ = _run_cli(["sweep", str(f)])  # unchanged now: skipped
    assert code == 0 and "1 jobs: 1 skipped" in out


# --------------------------------------------------------------------------- locks: one driver, one writer per run


HOLD = "import sys, time; from lamm_cl.safe_io import lock_output\nwith lock_output(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(120)\n"


@pytest.fixture
def holder():
    """Start a process that holds the lamm-cl lock of a folder (as a live `lamm-cl run` or sweep would)."""
    import subprocess

    procs = []

    def hold(folder: Path):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_driver_into_a_held_output_is_refused(tmp_path, holder):
    f = _tiny_sweep(tmp_path)
    (tmp_path / "out").mkdir()
    p = holder(tmp_path / "out")
    code, _, err = _run_cli(["sweep", str(f)])
    assert code == 2 and err.count("\n") == 1 and f"another lamm-cl sweep is running into it (pid {p.pid})" in err
    assert not (tmp_path / "out" / "sweep.json").exists()


def test_run_and_sweep_job_take_the_same_per_run_lock(tmp_path, holder):
    from lamm_cl.safe_io import InUseError, lock_run

    results = tmp_path / "bench_results"
    holder(results)  # a `lamm-cl run` writing the results folder
    with pytest.raises(InUseError, match="in use"):
        with lock_run(results / "lamm" / "seed0"):
            pass
    holder(results / "coop" / "seed0")  # a sweep job writing one run
    with pytest.raises(InUseError, match="in use"):
        with lock_run(results / "coop" / "seed0"):
            pass


def test_a_job_refused_by_the_lock_leaves_the_state_as_it_was(tmp_path, monkeypatch, holder, digits_store):
    import lamm_cl.sweep.driver as driver
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.state import job_status, state_path

    f = _tiny_sweep(tmp_path, digits_store)
    monkeypatch.setattr(driver, "get_launcher", lambda name: _in_process_launcher())
    from lamm_cl.sweep.spec import write_sweep

    job = load_sweep(f).jobs[0]
    write_sweep(load_sweep(f))
    holder(tmp_path / "out" / "digits_a")  # a `lamm-cl run` is writing this benchmark's results folder
    code, out, err = _run_cli(["sweep", str(f)])
    assert code == 1 and "refused" in out and "in use" in out
    assert not state_path(tmp_path / "out", job).exists()  # it never ran: still pending, not "failed"
    assert job_status(tmp_path / "out", job).state == "pending" and not job.run_dir.exists()


# --------------------------------------------------------------------------- signals


# The driver starts as from a user's shell, whatever this test process's signal state: SIGINT and SIGTERM
# unblocked and at their defaults (a blocked or ignored SIGINT is inherited across exec, and the SIGINT case
# once ended as if the driver never got the signal while its workers did).
DRIVER = """\
import functools, signal, sys
signal.pthread_sigmask(signal.SIG_SETMASK, set())
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
sys.path.insert(0, {tests!r})
import sweep_workers
import lamm_cl.sweep.launch_local as local
local.launch = functools.partial(local.launch, initializer=sweep_workers.fake_jobs)
from lamm_cl.cli import main
sys.exit(main(["sweep", {sweep!r}]))
"""


def _signal_masks(pid: int) -> str:
    """The Sig* lines of /proc/<pid>/status (pending, blocked, ignored, caught), or why they are not there."""
    try:
        return "; ".join(line.strip() for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
    except OSError as e:
        return f"unreadable ({e})"


def _started(path: Path) -> list[tuple[str, int]]:
    text = path.read_text() if path.exists() else ""
    return [(line.split()[0], int(line.split()[1])) for line in text.splitlines()]


def _live_in_group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` that still run (zombies, which run nothing, left out)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            live.append(int(stat.parent.name))
    return live


def _gone(pid: int) -> bool:
    from lamm_cl.safe_io import pid_alive

    try:  # a child of ours that exited is a zombie until reaped
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    if not pid_alive(pid):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except OSError:
        return True


SIGNAL_STORM = """\
import faulthandler, multiprocessing as mp, signal, sys, threading, time
import lamm_cl.sweep.launch_local as local
faulthandler.dump_traceback_later(20, exit=True)  # a handler stuck on a lock: exit with the stacks, not hang
local._stop = local._stop_flag(mp.get_context("spawn"))
local._stop.value = 1
signal.signal(signal.SIGTERM, local._interrupt)
main = threading.main_thread().ident

def storm():
    for _ in range(300):
        signal.pthread_kill(main, signal.SIGTERM)
        time.sleep(0.0005)

t = threading.Thread(target=storm)
t.start()
runs = 0
while t.is_alive():  # a worker whose queued calls meet a stopped sweep, read the flag, and are signalled meanwhile
    assert local._run(("run_job", "out", "j"))["state"] == "pending"
    runs += 1
print("ran", runs)
"""


def test_a_workers_signal_handler_takes_no_lock_the_code_it_interrupts_may_hold():
    """SIGTERMs land on a worker's main thread while it reads the stop flag, over and over: every call still
    returns and the handler never waits. With the stop flag a multiprocessing Event (a lock behind each read
    and write) the handler, interrupting a read, waited for the lock the read held: the worker hung, and the
    driver hung shutting the pool down (a sweep stopped by a SIGINT to its group that never ended)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", SIGNAL_STORM], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ran "), r.stderr[-3000:]


@pytest.mark.parametrize("how, code", [("SIGTERM", 143), ("SIGINT to the group", 130), ("SIGKILL", None),
                                       ("a worker SIGKILLed", 1)])
@pytest.mark.integration  # starts workers or runs whole jobs: left out of the fast set
def test_no_job_starts_after_a_signal_and_workers_end_with_their_driver(tmp_path, how, code):
    import subprocess

    from lamm_cl.sweep import read_sweep
    from lamm_cl.sweep.state import job_status

    bench = tmp_path / "bench"
    bench.mkdir()
    light = BENCH.format(name="digits_a", T=2, cache=tmp_path / "cache").replace("cache: true", "cache: false")
    (bench / "digits_a.yaml").write_text(light)
    f = _sweep_file(tmp_path, {"name": "local", "workers": 2}, strategies=["zeroshot"], seeds=[1, 2, 3, 4, 5])
    started = tmp_path / "started.txt"
    env = {**os.environ, "SWEEP_TEST_STARTED": str(started)}
    script = DRIVER.format(tests=str(Path(__file__).parent), sweep=str(f))
    p = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_started(started)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_started(started)) == 2, p.stderr.read() if p.poll() is not None else "workers did not start"
        t0 = time.monotonic()
        # the driver's signal masks as the signal goes out, for the failure message (this case used to hang
        # now and then: see test_a_workers_signal_handler_takes_no_lock_the_code_it_interrupts_may_hold)
        driver_signals = _signal_masks(p.pid)
        if how == "SIGINT to the group":
            os.killpg(p.pid, signal.SIGINT)
        elif how == "a worker SIGKILLed":
            os.kill(_started(started)[0][1], signal.SIGKILL)
        else:
            p.send_signal(getattr(signal, how))
        out, err = p.communicate(timeout=30)
        if code is not None:
            assert p.returncode == code, f"{err}\ndriver at the signal: {driver_signals}"
            assert time.monotonic() - t0 < 15
        if code in (130, 143):
            assert "no further job was started" in err
        if how == "a worker SIGKILLed":  # what the table says is what the files say: nothing finished
            assert "5 jobs: 2 interrupted, 3 pending" in out, out
        workers = [pid for _, pid in _started(started)]
        deadline = time.monotonic() + 30
        while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(w) for w in workers), "a worker outlived its driver"
        # the driver and every process it started (workers, the pool's resource tracker) are in its process
        # group: once none of them runs, no job can start any more
        deadline = time.monotonic() + 30
        while _live_in_group(p.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _live_in_group(p.pid), f"processes of the sweep outlived it: {_live_in_group(p.pid)}"
        assert len(_started(started)) == 2  # the three queued jobs never started
        sweep = read_sweep(tmp_path / "out")
        states = sorted(job_status(sweep.output, j).state for j in sweep.jobs)
        assert states == ["interrupted", "interrupted", "pending", "pending", "pending"]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for _, w in _started(started):
            with __import__("contextlib").suppress(OSError):
                os.kill(w, signal.SIGKILL)
