"""Running one strategy again (issue 28, item 3): ``--only NAME[,NAME]`` reruns just those strategies and
leaves every other strategy's files byte for byte, then rebuilds the summary; ``--resume`` keeps each
finished (strategy, seed) whose own resolved config is unchanged and reruns, one line each, those whose
config changed (a checkpoint of another config starts over)."""
from __future__ import annotations

import shutil

import pytest
import torch

from lamm_cl import checkpoint
from lamm_cl.cli import main

from builders import files_under, one_line, snapshot, write_digits_config

# two cheap strategies on 2 experiences of digits: zero-shot (trains nothing) and a linear probe
STRATEGIES = [{"name": "zeroshot"}, {"name": "linear_probe", "epochs": 1, "batch_size": 16, "lr": 0.01}]
RESULT_FILES = ("accuracy_matrix.csv", "accuracy_matrix_task_aware.csv", "per_class_accuracy.csv", "metrics.csv")


@pytest.fixture(scope="module")
def full(run_env, tmp_path_factory):
    """The config and one complete run of it (both strategies, seed 0), its report skipped."""
    import lamm_cl.report

    root = tmp_path_factory.mktemp("only")
    cfg = write_digits_config(run_env, root / "config.yaml", STRATEGIES, n_experiences=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lamm_cl.report, "build_report", lambda *a, **k: [])
        assert main(["run", str(cfg), "--output", str(root / "out"), "--no-progress"]) == 0
    return cfg, root / "out"


@pytest.fixture
def copied(full, tmp_path):
    """A copy of the module's complete run (its output folder) and the copy's snapshot, before a test changes it."""
    out = tmp_path / "out"
    shutil.copytree(full[1], out)
    return out, snapshot(out)


def _under(snap: dict, prefix: str) -> dict:
    return {k: v for k, v in snap.items() if k.startswith(prefix)}


@pytest.mark.integration
def test_only_reruns_one_strategy_keeps_the_others_and_rebuilds_the_summary(full, copied, capsys, no_plots):
    out, before = copied
    (out / "linear_probe" / "seed0" / "stray.txt").write_text("mine")  # not lamm-cl's: left alone
    capsys.readouterr()
    assert main(["run", str(full[0]), "--output", str(out), "--no-progress", "--only", "linear_probe"]) == 0
    log = capsys.readouterr().out
    assert "linear_probe seed 0: replacing its earlier results (--only)" in log
    assert "zeroshot seed 0" not in log  # not run, not even looked at
    after = snapshot(out)
    assert _under(after, "zeroshot/") == _under(before, "zeroshot/")  # byte for byte
    # run again from scratch, on CPU deterministically: the same numbers as the first time
    for name in RESULT_FILES:
        assert after[f"linear_probe/seed0/{name}"] == before[f"linear_probe/seed0/{name}"], name
    assert after["linear_probe/seed0/stray.txt"] == b"mine"
    summary = (out / "summary.csv").read_text()  # rebuilt from both strategies' runs
    assert "zeroshot" in summary and "linear_probe" in summary and "summary.csv" not in before


def _run_lines(full, out, capsys, *args: str) -> list[str]:
    """``lamm-cl run`` of the module's config into ``out`` with ``args``; what it printed, line by line."""
    capsys.readouterr()
    assert main(["run", str(full[0]), "--output", str(out), "--no-progress", *args]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_resume_reruns_only_the_run_whose_config_changed(full, copied, capsys):
    out, before = copied
    log = _run_lines(full, out, capsys, "--resume", "--set", "strategies.linear_probe.lr=0.5")
    assert "  zeroshot seed 0: already finished, kept" in log
    assert ("  linear_probe seed 0: its config changed since it ran (strategy.lr: 0.5 now, 0.01 there); "
            "running it again") in log
    after = snapshot(out)
    assert _under(after, "zeroshot/") == _under(before, "zeroshot/")
    assert "lr: 0.5" in after["linear_probe/seed0/config.yaml"].decode()
    # a second --resume with the same change keeps everything
    log = _run_lines(full, out, capsys, "--resume", "--set", "strategies.linear_probe.lr=0.5")
    assert "  linear_probe seed 0: already finished, kept" in log and not any("running it again" in x for x in log)
    assert snapshot(out) == after


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_resume_with_save_model_keeps_runs_made_without_it_and_says_how_to_get_the_model(full, copied, capsys):
    out, before = copied
    log = _run_lines(full, out, capsys, "--resume", "--set", "save_model=true")
    for name in ("zeroshot", "linear_probe"):  # kept (the model changes no number), and the line says so
        assert (f"  {name} seed 0: already finished, kept (without a saved model: it ran without save_model; "
                f"--only {name} runs it again to keep one)") in log
    assert snapshot(out) == before
    # as the line says: --only reruns that one, now with its model; the next --resume keeps it, plainly
    _run_lines(full, out, capsys, "--only", "linear_probe", "--set", "save_model=true")
    assert (out / "linear_probe" / "seed0" / "model.pt").is_file()
    log = _run_lines(full, out, capsys, "--resume", "--set", "save_model=true")
    assert "  linear_probe seed 0: already finished, kept" in log
    assert any(line.startswith("  zeroshot seed 0: already finished, kept (without a saved model") for line in log)
    # a run made with save_model whose model.pt is gone since is named for what it is
    (out / "linear_probe" / "seed0" / "model.pt").unlink()
    log = _run_lines(full, out, capsys, "--resume", "--set", "save_model=true")
    assert ("  linear_probe seed 0: already finished, kept (without a saved model: its model.pt is not there; "
            "--only linear_probe runs it again to keep one)") in log
    # without save_model the line is the plain one
    log = _run_lines(full, out, capsys, "--resume")
    assert "  zeroshot seed 0: already finished, kept" in log


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_a_checkpoint_of_another_config_starts_over(full, tmp_path, capsys):
    out = tmp_path / "out"
    run_dir = out / "linear_probe" / "seed0"
    run_dir.mkdir(parents=True)
    meta = {"strategy": "linear_probe", "seed": 0, "config": {"different": True}}
    torch.save({"format": checkpoint.FORMAT, "meta": meta}, run_dir / checkpoint.CHECKPOINT_FILE)
    capsys.readouterr()
    assert main(["run", str(full[0]), "--output", str(out), "--no-progress", "--resume",
                 "--only", "linear_probe"]) == 0
    log = capsys.readouterr().out
    assert "linear_probe seed 0: its checkpoint is of another config (" in log and "starting it over" in log
    assert not (run_dir / checkpoint.CHECKPOINT_FILE).exists()
    for name in RESULT_FILES:  # the same numbers as the uninterrupted run
        assert (run_dir / name).read_bytes() == (full[1] / "linear_probe" / "seed0" / name).read_bytes(), name
    assert not (out / "zeroshot").exists()


@pytest.mark.parametrize("only, extra, culprit", [
    ("coop", [], "no strategy 'coop'"),
    ("zeroshot,nope", [], "no strategy 'nope'"),
    (",", [], "--only: expected strategy names"),
    ("zeroshot", ["--overwrite"], "--only keeps the other strategies' results"),
])
def test_a_bad_only_is_one_line_and_writes_nothing(run_env, tmp_path, capsys, only, extra, culprit):
    cfg = write_digits_config(run_env, tmp_path / "config.yaml", STRATEGIES, n_experiences=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(cfg), "--output", str(out), "--only", only, *extra]) == 2
    one_line(capsys.readouterr().err, culprit)
    assert files_under(out) == ["notes.txt"]


def test_the_api_names_a_bad_only_too(run_env, tmp_path):
    import lamm_cl

    cfg = write_digits_config(run_env, tmp_path / "config.yaml", STRATEGIES, n_experiences=2)
    with pytest.raises(lamm_cl.ConfigError, match=r"^only: no strategy 'lamm' in .*its strategies: zeroshot, linear_probe$"):
        lamm_cl.run(cfg, output=tmp_path / "out", only=["zeroshot", "lamm"], progress=False)
    assert not (tmp_path / "out").exists()
