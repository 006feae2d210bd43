"""Reliability of `lamm-cl run`: resume after SIGKILL, Ctrl-C, the results folder's guards,
determinism, a non-finite loss, and every bad input answered with one line and status 2.

Runs use the tiny random-weight CLIP on the embedded digits (the quickstart's data and
split) few-shot, so an experience takes about a second; image features are cached once
per session. Two tests start a `lamm-cl` subprocess (to kill it); the rest call
``lamm_cl.cli.main`` in this process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lamm_cl import checkpoint, runner, safe_io
from lamm_cl.cli import main
from lamm_cl.results import read_run
from lamm_cl.runner import execute
from lamm_cl.runner.record import run_config

PLUGIN = '''
"""Test strategies: LAMM with a small replay buffer, and LAMM whose training loss is NaN."""
import dataclasses

from lamm_cl.registry import get_strategy, register_strategy
from lamm_cl.strategy_kit.context import StrategyContext

LAMM = get_strategy("lamm")


@register_strategy("lamm_replay", options=LAMM.options)
def build_replay(ctx: StrategyContext, opts):
    """LAMM with Avalanche replay (30 samples)."""
    return LAMM.build(ctx, dataclasses.replace(opts, plugins=[{"name": "replay", "mem_size": 30}]))


@register_strategy("nan_loss", options=LAMM.options)
def build_nan(ctx: StrategyContext, opts):
    """LAMM whose training loss is NaN."""
    template = LAMM.build(ctx, opts)
    criterion = template.criterion
    template.criterion = lambda: criterion() * float("nan") if template.is_training else criterion()
    return template
'''


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """A folder with the test plugin file and a feature cache shared by every run of the session."""
    root = tmp_path_factory.mktemp("reliability")
    (root / "test_strategies.py").write_text(PLUGIN)
    return root


def write_config(env: Path, path: Path, strategies, **benchmark) -> Path:
    """A quickstart-sized config: digits, 5 experiences of 2 classes, tiny random CLIP, 8 shots."""
    data = {
        "name": "reliability",
        "seeds": [0],
        "device": "cpu",
        "plugins": [str(env / "test_strategies.py")],
        "benchmark": {"dataset": "digits", "n_experiences": 5, "class_order": "seeded", "order_seed": 0,
                      "shots": 8, **benchmark},
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "features": {"cache": True, "cache_dir": str(env / "features")},
        "strategies": strategies,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


RESUMABLE = [{"name": "zeroshot"}, {"name": "lamm_replay", "epochs": 2, "batch_size": 8}]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def matrix(out: Path, strategy: str) -> np.ndarray:
    return read_run(out / strategy / "seed0").matrix


def child(*args: str) -> subprocess.Popen:
    """`lamm-cl ARGS` in a subprocess."""
    return subprocess.Popen([sys.executable, "-c", "import sys; from lamm_cl.cli import main; sys.exit(main())",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


@pytest.fixture(autouse=True)
def no_report(monkeypatch):
    """Skip the report and plots after in-process runs (seconds of matplotlib each; tested elsewhere).
    The module's uninterrupted run is set up before this and does build its report."""
    import lamm_cl.report

    monkeypatch.setattr(lamm_cl.report, "build_report", lambda *a, **k: [])


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


# --------------------------------------------------------------------------- resume, determinism


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    """One uninterrupted run of the resumable config (shared by the resume and determinism tests)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    cfg = write_config(env, folder / "config.yaml", RESUMABLE)
    with capture_final_states([]) as states:
        assert main(["run", str(cfg), "--output", str(folder / "out"), "--no-progress"]) == 0
    assert (folder / "out" / "report.md").is_file()
    return folder / "out", states[-1]  # the lamm_replay model after its last experience


def test_sigkill_during_third_experience_then_resume_matches(env, tmp_path, uninterrupted, capsys):
    cfg = write_config(env, tmp_path / "config.yaml", RESUMABLE)
    out = tmp_path / "out"
    ckpt = out / "lamm_replay" / "seed0" / checkpoint.CHECKPOINT_FILE
    proc = child("run", str(cfg), "--output", str(out), "--no-progress")
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
    assert "lamm_replay seed 0: resuming after experience 2/5" in log
    assert "lamm_replay seed 0 experience 2/5" not in log  # nothing before the checkpoint was redone

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


def test_same_seed_gives_identical_results(env, tmp_path, uninterrupted):
    cfg = write_config(env, tmp_path / "config.yaml", RESUMABLE)
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    reference, _ = uninterrupted
    for strategy in ("zeroshot", "lamm_replay"):
        np.testing.assert_array_equal(matrix(tmp_path / "out", strategy), matrix(reference, strategy))
    info = read_run(tmp_path / "out" / "lamm_replay" / "seed0").info
    assert info["seed"] == 0 and {"torch", "avalanche", "open_clip", "numpy", "python"} <= set(info["versions"])


def test_checkpoint_of_other_config_is_refused(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "config.yaml", RESUMABLE)
    run_dir = tmp_path / "out" / "lamm_replay" / "seed0"
    run_dir.mkdir(parents=True)
    meta = {"strategy": "lamm_replay", "seed": 0, "config": {"different": True}}
    torch.save({"format": checkpoint.FORMAT, "meta": meta}, run_dir / checkpoint.CHECKPOINT_FILE)
    before = files_under(tmp_path / "out")
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config" in err[0]
    assert files_under(tmp_path / "out") == before


# --------------------------------------------------------------------------- Ctrl-C


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


def test_sigint_exits_130_and_keeps_finished_files(env, tmp_path, capsys, monkeypatch, default_sigint):
    # A real SIGINT to this process, sent right after the first checkpoint of the second strategy:
    # Python turns it into KeyboardInterrupt in the middle of the run, as Ctrl-C in a terminal does.
    cfg = write_config(env, tmp_path / "config.yaml", RESUMABLE)
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


# --------------------------------------------------------------------------- the results folder


def test_non_empty_output_refused_and_untouched(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "config.yaml", RESUMABLE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(cfg), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert files_under(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_lock_held_by_live_process_is_a_clear_error(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "config.yaml", RESUMABLE)
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


def test_overwrite_replaces_old_runs_only_after_input_checks(env, tmp_path, capsys):
    out = tmp_path / "out"
    old = out / "old_strategy" / "seed0"
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}")
    (out / "report.md").write_text("old report")
    (out / "notes.txt").write_text("mine")
    before = files_under(out)
    # Bad input (more experiences than digits has classes): refused, and the old results are untouched.
    # (More shots than a class has is no longer an error: the class trains on all its images.)
    bad = write_config(env, tmp_path / "bad.yaml", [{"name": "zeroshot"}], n_experiences=20)
    assert main(["run", str(bad), "--output", str(out), "--overwrite"]) == 2
    assert files_under(out) == before
    capsys.readouterr()
    good = write_config(env, tmp_path / "good.yaml", [{"name": "zeroshot"}])
    assert main(["run", str(good), "--output", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "old_strategy").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not lamm-cl's: left alone
    assert (out / "zeroshot" / "seed0" / "summary.json").is_file()


# --------------------------------------------------------------------------- NaN loss


def test_nan_loss_fails_that_strategy_and_keeps_the_others(env, tmp_path, capsys):
    cfg = write_config(env, tmp_path / "config.yaml",
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


# --------------------------------------------------------------------------- bad input

BASE = {
    "name": "bad",
    "seeds": [0],
    "device": "cpu",
    "benchmark": {"dataset": "digits", "n_experiences": 5},
    "model": {"arch": "lamm-tiny", "pretrained": "none"},
    "features": {"cache": False},
    "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}],
}


def _with(path: str, value):
    """BASE with the value at dotted ``path`` set (``...`` deletes it)."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    *head, last = path.split(".")
    node = data
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return yaml.safe_dump(data)


BASE_TEXT = yaml.safe_dump(BASE)

# (id, config text, extra arguments)
MALFORMED = [
    ("broken-yaml", "name: [unclosed\nseeds: [0\n", []),
    ("broken-yaml-indent", "name: x\n  seeds: - [\n", []),
    ("tab-indent", "name: x\n\tseeds: [0]\n", []),
    ("not-a-mapping", "- just\n- a list\n", []),
    ("empty-file", "", []),
    ("unknown-top-key", _with("nmae", "x"), []),
    ("unknown-benchmark-key", _with("benchmark.n_experiment", 5), []),
    ("unknown-strategy-key", _with("strategies.1.epoch", 1), []),
    ("unknown-loss-key", _with("strategies.1.loss", {"feture": 1.0}), []),
    ("seeds-wrong-type", _with("seeds", "zero"), []),
    ("seed-item-wrong-type", _with("seeds", [0, "a"]), []),
    ("seeds-repeated", _with("seeds", [1, 1]), []),
    ("device-wrong-type", _with("device", 5), []),
    ("device-unknown", _with("device", "gpu9"), []),
    ("n-experiences-wrong-type", _with("benchmark.n_experiences", "five"), []),
    ("shots-float", _with("benchmark.shots", 1.5), []),
    ("epochs-wrong-type", _with("strategies.1.epochs", "many"), []),
    ("epochs-negative", _with("strategies.1.epochs", -1), []),
    ("lr-wrong-type", _with("strategies.1.lr", "fast"), []),
    ("label-tokens-wrong", _with("strategies.1.label_tokens", "some"), []),
    ("cache-wrong-type", _with("features.cache", "yes"), []),
    ("model-not-mapping", _with("model", "ViT-B-16"), []),
    ("strategies-not-list", _with("strategies", {"name": "lamm"}), []),
    ("strategies-empty", _with("strategies", []), []),
    ("template-without-braces", _with("benchmark.template", "a photo"), []),
    ("missing-name", _with("name", ...), []),
    ("missing-benchmark", _with("benchmark", ...), []),
    ("missing-dataset", _with("benchmark.dataset", ...), []),
    ("missing-strategies", _with("strategies", ...), []),
    ("strategy-without-name", _with("strategies.1.name", ...), []),
    ("more-experiences-than-classes", _with("benchmark.n_experiences", 11), []),
    ("shots-below-one", _with("benchmark.shots", 0), []),  # more shots than a class has is fine (issue 11.7)
    ("split-does-not-add-up", _with("benchmark", {"dataset": "digits", "classes_per_experience": [5, 4]}), []),
    ("class-order-out-of-range", _with("benchmark.class_order", [0, 1, 99]), []),
    ("unknown-strategy", _with("strategies.1.name", "lamz"), []),
    ("unknown-avalanche-plugin", _with("strategies.1.plugins", [{"name": "replya"}]), []),
    ("plugin-file-missing", _with("plugins", ["no_such_plugin.py"]), []),
    ("unknown-dataset", _with("benchmark.dataset", "mnistt"), []),
    ("missing-data", _with("benchmark", {"dataset": "imagefolder", "root": "/nonexistent/data",
                                         "n_experiences": 2}), []),
    ("missing-weights", _with("model.pretrained", "/nonexistent/weights.pt"), []),
    ("unknown-arch", _with("model.arch", "ViT-Q-99"), []),
    ("set-without-equals", BASE_TEXT, ["--set", "seeds"]),
    ("set-bad-index", BASE_TEXT, ["--set", "strategies.7.epochs=1"]),
    ("set-wrong-type", BASE_TEXT, ["--set", "benchmark.n_experiences=abc"]),
    ("set-unknown-key", BASE_TEXT, ["--set", "benchmark.foo=1"]),
    ("resume-and-overwrite", BASE_TEXT, ["--resume", "--overwrite"]),
    ("unknown-flag", BASE_TEXT, ["--frobnicate"]),
]


def _case(name, text, extra):
    return pytest.param(text, extra, id=name)


@pytest.mark.parametrize("text,extra", [_case(*c) for c in MALFORMED])
def test_bad_input_is_one_line_status_2_and_writes_nothing(tmp_path, capsys, text, extra):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamm-cl: error: "), err
    assert "Traceback" not in err
    assert not out.exists()
    assert files_under(tmp_path) == ["config.yaml"]


def test_unknown_avalanche_plugin_is_refused_before_any_work(tmp_path):
    from lamm_cl import config
    from lamm_cl.errors import ConfigError

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(BASE_TEXT)
    cfg = config.load(cfg_path)
    cfg.strategies[1].options.plugins = [{"name": "replya"}]  # what `plugins: [{name: replya}]` should parse to
    with pytest.raises(ConfigError, match=r"strategies\[1\]\.plugins\[0\]\.name: unknown plugin 'replya'"):
        runner.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_output_folders(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE_TEXT)
    (tmp_path / "a_file").write_text("x")
    missing = tmp_path / "nope.yaml"
    for args in (["--output", str(tmp_path / "a_file")], ["--output", str(tmp_path / "a_file" / "sub")]):
        assert main(["run", str(cfg), "--no-progress", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "a_file" in lines[0]
    assert main(["run", str(missing), "--output", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "x" and files_under(tmp_path) == ["a_file", "config.yaml"]


def test_unwritable_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; permissions cannot be tested")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE_TEXT)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", str(cfg), "--output", str(locked / "out")]) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_checkpoint_roundtrip_refuses_garbage(tmp_path):
    bad = tmp_path / checkpoint.CHECKPOINT_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="unreadable checkpoint"):
        checkpoint.load(bad)


def test_run_config_ignores_output_seeds_and_other_strategies():
    a = {"name": "x", "output": "a", "seeds": [0], "strategies": [{"name": "lamm", "epochs": 1}],
         "features": {"cache": True, "train_views": 0}}
    b = {"name": "x", "output": "b", "seeds": [0, 1], "features": {"cache": False, "train_views": 0},
         "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}]}
    assert run_config(a, "lamm") == run_config(b, "lamm")
    b["strategies"][1]["epochs"] = 2
    assert run_config(a, "lamm") != run_config(b, "lamm")

