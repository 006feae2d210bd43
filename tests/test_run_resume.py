"""`lamm-cl run` interrupted and resumed: SIGKILL then --resume (bit-identical to an uninterrupted run),
Ctrl-C (status 130) and SIGTERM (143) keeping finished work, determinism, a checkpoint of another config
refused, a non-finite loss failing one strategy only, and what a checkpoint's config identity ignores.

Runs use the tiny random-weight CLIP on the embedded digits (the quickstart's data and split) few-shot, so
an experience takes about a second; image features are cached once per session (conftest's ``run_env``).
The SIGKILL and SIGTERM tests signal a `lamm-cl` child process, forked from this one (builders.forked_command:
a real process without a fresh interpreter's imports); the rest call ``lamm_cl.cli.main`` here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from lamm_cl import checkpoint, safe_io
from lamm_cl.cli import main
from lamm_cl.results import read_run
from lamm_cl.runner import execute
from lamm_cl.runner.record import run_config

from builders import (RESUMABLE, dtd_config_data, files_under, forked_command, make_dtd, record_plots, snapshot,
                      torch_threads, write_digits_config, write_yaml)


def matrix(out: Path, strategy: str) -> np.ndarray:
    return read_run(out / strategy / "seed0").matrix


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, experience: int, timeout: float = 150) -> None:
    """Poll until ``path`` holds the checkpoint of ``experience`` (0-based)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"lamm-cl ended (status {proc.returncode}) before checkpoint {experience}:\n{out}\n{err}")
        if path.is_file():
            try:
                if checkpoint.load(path)["experience"] >= experience:
                    return
            except Exception:  # noqa: BLE001 - replaced while read; poll again
                pass
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint of experience {experience} after {timeout} s")


@contextmanager
def capture_final_states(states: list):
    """Append each run's model state_dict after its last experience to ``states`` (by wrapping
    execute.evaluate): the trained label vectors, far more sensitive than random-weight accuracies."""
    evaluate = execute.evaluate

    def spy(template, test_stream, upto, plan, acc):
        result = evaluate(template, test_stream, upto, plan, acc)
        if upto == plan.n_experiences - 1:
            states.append({k: v.clone() for k, v in template.model.state_dict().items()})
        return result

    execute.evaluate = spy
    try:
        yield states
    finally:
        execute.evaluate = evaluate


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for the whole module, with or without xdist: a forked child runs on one thread
    (builders.forked_command), and the SIGKILL test compares its work, resumed here, bit for bit with the
    uninterrupted run made here."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def uninterrupted(one_torch_thread, run_env, tmp_path_factory):
    """One uninterrupted run of the resumable config (shared by the resume and determinism tests)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    cfg = write_digits_config(run_env, folder / "config.yaml", RESUMABLE)
    # its report is written, without drawing its figures (test_plots.py and test_report.py draw them)
    with capture_final_states([]) as states, pytest.MonkeyPatch.context() as mp:
        figures = record_plots(mp)
        assert main(["run", str(cfg), "--output", str(folder / "out"), "--no-progress"]) == 0
    assert (folder / "out" / "report.md").is_file()
    assert [name for _, name, _ in figures] == ["seen_accuracy", "final_accuracy_forgetting", "old_new_accuracy",
                                                "accuracy_matrices", "accuracy_matrix_zeroshot",
                                                "accuracy_matrix_lamm_replay"]
    return folder / "out", states[-1]  # the lamm_replay model after its last experience


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_sigkill_during_third_experience_then_resume_matches(run_env, tmp_path, uninterrupted, capsys):
    cfg = write_digits_config(run_env, tmp_path / "config.yaml", RESUMABLE)
    out = tmp_path / "out"
    ckpt = out / "lamm_replay" / "seed0" / checkpoint.CHECKPOINT_FILE
    proc = forked_command("run", str(cfg), "--output", str(out), "--no-progress", folder=tmp_path / "child")
    wait_for_checkpoint(proc, ckpt, experience=1)  # experience 2 of 5 is done: the third is running
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.load(ckpt)["experience"] == 1
    assert (out / "zeroshot" / "seed0" / "summary.json").is_file()
    assert not (out / "lamm_replay" / "seed0" / "summary.json").exists()

    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 2  # not empty: refused
    assert "--resume" in capsys.readouterr().err

    with capture_final_states([]) as final_states:
        assert main(["run", str(cfg), "--output", str(out), "--no-progress", "--resume"]) == 0
    log = capsys.readouterr().out
    assert "zeroshot seed 0: already finished, kept" in log
    assert "lamm_replay seed 0: resuming at experience 2 of 0-4" in log
    assert "lamm_replay seed 0 experience 1 of 0-4" not in log  # nothing before the checkpoint was redone

    reference, reference_state = uninterrupted
    for strategy in ("zeroshot", "lamm_replay"):
        np.testing.assert_array_equal(matrix(out, strategy), matrix(reference, strategy))
    # Stronger than the (coarse, random-weight) accuracies: the trained label vectors are bit-identical,
    # which needs the optimiser, the replay buffer, the RNG and the model's caches all restored.
    (state,) = final_states
    assert state.keys() == reference_state.keys()
    for name in state:
        assert torch.equal(state[name], reference_state[name]), name
    assert not ckpt.exists()  # removed once the results were written
    assert not [p for p in files_under(out) if p.endswith(".tmp") or ".lamm-cl.lock" in p]
    assert read_run(out / "lamm_replay" / "seed0").info["resumed"] is True


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_same_seed_gives_identical_results(run_env, tmp_path, uninterrupted):
    cfg = write_digits_config(run_env, tmp_path / "config.yaml", RESUMABLE)
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    reference, _ = uninterrupted
    for strategy in ("zeroshot", "lamm_replay"):
        np.testing.assert_array_equal(matrix(tmp_path / "out", strategy), matrix(reference, strategy))
    info = read_run(tmp_path / "out" / "lamm_replay" / "seed0").info
    assert info["seed"] == 0 and {"torch", "avalanche", "open_clip", "numpy", "python"} <= set(info["versions"])


@pytest.fixture
def default_sigint():
    """SIGINT raising KeyboardInterrupt, as in an interactive shell, however pytest was launched.

    Python installs that handler only when SIGINT is not ignored at start-up; a suite started in the
    background (`nohup pytest &`) inherits SIGINT ignored, and the test's own Ctrl-C would be lost.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_sigint_exits_130_and_keeps_finished_files(run_env, tmp_path, capsys, monkeypatch, default_sigint):
    # A real SIGINT to this process, sent right after the first checkpoint of the second strategy:
    # Python turns it into KeyboardInterrupt in the middle of the run, as Ctrl-C in a terminal does.
    cfg = write_digits_config(run_env, tmp_path / "config.yaml", RESUMABLE)
    out = tmp_path / "out"
    save = checkpoint.save

    def save_then_interrupt(path, **kwargs):
        written = save(path, **kwargs)
        if kwargs["meta"]["strategy"] == "lamm_replay":
            os.kill(os.getpid(), signal.SIGINT)
        return written

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "--resume" in err[0], err
    assert read_run(out / "zeroshot" / "seed0").n_experiences == 5  # the finished run, intact
    ckpt = out / "lamm_replay" / "seed0" / checkpoint.CHECKPOINT_FILE
    assert checkpoint.load(ckpt)["experience"] == 0  # the last checkpoint, kept
    assert not (out / "lamm_replay" / "seed0" / "summary.json").exists()
    assert not (out / safe_io.LOCK_FILE).exists()


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_nan_loss_fails_that_strategy_and_keeps_the_others(run_env, tmp_path, capsys):
    cfg = write_digits_config(run_env, tmp_path / "config.yaml",
                       [{"name": "nan_loss", "epochs": 1, "batch_size": 8}, {"name": "zeroshot"}])
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "nan_loss seed 0 failed" in captured.err and "loss became nan" in captured.err
    assert "Traceback" not in captured.err
    assert "zeroshot" in captured.out.split("strategy")[-1]  # the summary table of the others
    assert read_run(out / "zeroshot" / "seed0").n_experiences == 5
    assert not (out / "nan_loss" / "seed0" / "summary.json").exists()
    assert not (out / "nan_loss" / "seed0" / checkpoint.CHECKPOINT_FILE).exists()


@pytest.mark.usefixtures("no_report")
def test_checkpoint_roundtrip_refuses_garbage(tmp_path):
    bad = tmp_path / checkpoint.CHECKPOINT_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="unreadable checkpoint"):
        checkpoint.load(bad)


@pytest.mark.usefixtures("no_report")
def test_run_config_ignores_output_seeds_and_other_strategies():
    a = {"name": "x", "output": "a", "seeds": [0], "strategies": [{"name": "lamm", "epochs": 1}],
         "features": {"cache": True, "train_views": 0}}
    b = {"name": "x", "output": "b", "seeds": [0, 1], "features": {"cache": False, "train_views": 0},
         "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}]}
    assert run_config(a, "lamm") == run_config(b, "lamm")
    b["strategies"][1]["epochs"] = 2
    assert run_config(a, "lamm") != run_config(b, "lamm")


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_sigterm_keeps_finished_work_releases_the_lock_and_resume_continues(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    make_dtd(root)
    cfg = write_yaml(root / "config.yaml", dtd_config_data(
        root, out, strategies=[{"name": "zeroshot"}, {"name": "lamm", "epochs": 30, "batch_size": 2}],
        **{"benchmark.n_experiences": 2}))
    ckpt = out / "lamm" / "seed0" / checkpoint.CHECKPOINT_FILE
    proc = forked_command("run", str(cfg), "--no-progress", folder=tmp_path / "child")
    deadline = time.monotonic() + 240
    while not ckpt.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = err.splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and "--resume" in lines[0], err
    assert not (out / safe_io.LOCK_FILE).exists()
    assert read_run(out / "zeroshot" / "seed0").n_experiences == 2
    assert checkpoint.load(ckpt)["experience"] == 0
    finished = snapshot(out / "zeroshot")

    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 0
    log = capsys.readouterr().out
    assert "lamm seed 0: resuming at experience 1 of 0-1" in log
    assert read_run(out / "lamm" / "seed0").n_experiences == 2
    assert snapshot(out / "zeroshot") == finished
