"""The results folder's guards: a non-empty folder refused, --overwrite only after the inputs check, the
folder lock (one holder at a time, a live holder named, a stale one taken over, a folder filled meanwhile),
and a full output disk as one line."""
from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lamm_cl import safe_io
from lamm_cl.cli import main
from lamm_cl.errors import UserError
from lamm_cl.runner import inputs as runner_inputs

from builders import (RESUMABLE, dtd_config_data, earlier_results, files_under, make_dtd, one_line,
                      snapshot, under_file_size_limit, write_digits_config, write_yaml)

# no report or plots after the in-process runs (seconds of matplotlib each; tested elsewhere)
pytestmark = pytest.mark.usefixtures("no_report")


def test_non_empty_output_refused_and_untouched(run_env, tmp_path, capsys):
    cfg = write_digits_config(run_env, tmp_path / "config.yaml", RESUMABLE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(cfg), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert files_under(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_lock_held_by_live_process_is_a_clear_error(run_env, tmp_path, capsys):
    cfg = write_digits_config(run_env, tmp_path / "config.yaml", RESUMABLE)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / safe_io.LOCK_FILE).write_text(f"{holder.pid} {os.uname().nodename}\n")
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main(["run", str(cfg), "--output", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "in use by another lamm-cl run" in err[0] and str(holder.pid) in err[0]
        with pytest.raises(Exception, match="in use"):
            with safe_io.lock_output(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and is taken over, then released.
    with safe_io.lock_output(out) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not (out / safe_io.LOCK_FILE).exists()


def test_overwrite_replaces_old_runs_only_after_input_checks(run_env, tmp_path, capsys):
    out = tmp_path / "out"
    old = out / "old_strategy" / "seed0"
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}")
    (out / "report.md").write_text("old report")
    (out / "notes.txt").write_text("mine")
    before = files_under(out)
    # Bad input (more experiences than digits has classes): refused, and the old results are untouched.
    # (More shots than a class has is no longer an error: the class trains on all its images.)
    bad = write_digits_config(run_env, tmp_path / "bad.yaml", [{"name": "zeroshot"}], n_experiences=20)
    assert main(["run", str(bad), "--output", str(out), "--overwrite"]) == 2
    assert files_under(out) == before
    capsys.readouterr()
    good = write_digits_config(run_env, tmp_path / "good.yaml", [{"name": "zeroshot"}])
    assert main(["run", str(good), "--output", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "old_strategy").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not lamm-cl's: left alone
    assert (out / "zeroshot" / "seed0" / "summary.json").is_file()


def test_a_run_that_filled_the_folder_meanwhile_is_not_overwritten(tmp_path, capsys, monkeypatch):
    # The first look finds the folder empty; another run finishes its results before this one takes the
    # lock (simulated where the weights are built): the second look, under the lock, must refuse.
    root, out = tmp_path / "data", tmp_path / "out"
    make_dtd(root)
    cfg = write_yaml(root / "config.yaml", dtd_config_data(root, out))
    build = runner_inputs.build_clip

    def other_run_finishes_meanwhile(*args, **kwargs):
        earlier_results(out)
        return build(*args, **kwargs)

    monkeypatch.setattr(runner_inputs, "build_clip", other_run_finishes_meanwhile)
    assert main(["run", str(cfg), "--no-progress"]) == 2
    snap = snapshot(out)
    one_line(capsys.readouterr().err, "is not empty")
    earlier = tmp_path / "earlier"
    earlier_results(earlier)
    assert snap == snapshot(earlier)


# Three processes contend for each folder's lock at once; they are forked from a small Python that imported
# only lamm_cl.safe_io (a fork of this test process, torch and all, costs far more per child).
CONTEND = textwrap.dedent('''
    import json, multiprocessing, os, sys, time
    from pathlib import Path

    from lamm_cl import safe_io
    from lamm_cl.errors import UserError

    def contend(out, barrier, results):
        barrier.wait()
        try:
            with safe_io.lock_output(Path(out)):
                start = time.monotonic()
                time.sleep(0.05)
                results.put(("held", os.getpid(), start, time.monotonic()))
        except UserError as e:
            results.put(("refused", os.getpid(), str(e), 0.0))

    ctx = multiprocessing.get_context("fork")
    trials = []
    for out in sys.argv[1:]:
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=contend, args=(out, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        trials.append([results.get(timeout=60) for _ in procs])
        for p in procs:
            p.join(timeout=60)
    print(json.dumps(trials))
''')


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale-lock"])
def test_lock_admits_one_holder_at_a_time(tmp_path, stale):
    dead = subprocess.Popen(["true"])
    dead.wait()
    outs = [tmp_path / f"out{trial}" for trial in range(15)]
    if stale:  # a lock left by a process that is gone: every contender may judge it stale at once
        for out in outs:
            out.mkdir()
            (out / safe_io.LOCK_FILE).write_text(f"{dead.pid} {os.uname().nodename}\n")
    proc = subprocess.run([sys.executable, "-c", CONTEND, *map(str, outs)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    trials = json.loads(proc.stdout)
    assert len(trials) == len(outs)
    overlaps = 0
    for out, got in zip(outs, trials):
        assert len({g[1] for g in got}) == 3, got  # three processes answered
        held = sorted((g[2], g[3]) for g in got if g[0] == "held")
        assert held, got
        overlaps += sum(b[0] < a[1] for a, b in zip(held, held[1:]))
        assert all("in use" in g[2] for g in got if g[0] == "refused"), got
        assert not (out / safe_io.LOCK_FILE).exists()
    assert overlaps == 0


def _lock(out: str) -> str:
    with safe_io.lock_output(Path(out)):
        return "held"


def test_full_output_filesystem_at_the_lock_is_one_line(tmp_path):
    ctx = multiprocessing.get_context("fork")
    status = ctx.Queue()
    child = ctx.Process(target=under_file_size_limit,  # 4 bytes: the pid and host do not fit
                        args=(4, functools.partial(_lock, str(tmp_path / "out")), status))
    child.start()
    child.join(timeout=60)
    msg = status.get(timeout=5)
    assert child.exitcode == 0 and msg.startswith("error: ") and "cannot write" in msg and "\n" not in msg, msg
    assert not (tmp_path / "out" / safe_io.LOCK_FILE).exists()


def test_full_output_filesystem_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    earlier_results(out)
    before = snapshot(out)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_io.os, "fsync", full)
    with pytest.raises(UserError, match="No space left") as e:
        safe_io.atomic_write_text(out / "summary.csv", "new")
    assert "summary.csv" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(safe_io.os, "fsync", real)
    assert snapshot(out) == before and not [p for p in out.rglob("*.tmp")]
