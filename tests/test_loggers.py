"""`loggers:` attaches Avalanche's own loggers by name; a missing package is one line naming pip."""
from __future__ import annotations

import sys

import pytest

from lamm_cl.cli import main
from lamm_cl.results import read_run

CONFIG = """\
name: logged
device: cpu
benchmark: {{dataset: digits, n_experiences: 2, class_order: seeded, order_seed: 0}}
model: {{arch: lamm-tiny, pretrained: none}}
loggers: {loggers}
strategies:
  - name: linear_probe
    epochs: 2
    lr: 0.01
"""


def test_csv_tensorboard_and_offline_wandb_loggers_write_their_files(tmp_path, monkeypatch, no_plots):
    loggers = "[{name: csv}, {name: tensorboard}]"
    if "wandb" not in sys.modules:
        try:
            import wandb  # noqa: F401
            loggers = "[{name: csv}, {name: tensorboard}, {name: wandb, params: {mode: offline}}]"
        except ImportError:
            pass
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(loggers=loggers))
    pytest.importorskip("tensorboard")
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    run = tmp_path / "out" / "linear_probe" / "seed0"
    rows = (run / "csv_logs" / "training_results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2  # header + 2 experiences x 2 epochs
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    if "wandb" in loggers:
        assert list((run / "wandb").glob("offline-run-*"))
    assert (run / "summary.json").is_file()
    # eval_results.csv: (eval_exp, training_exp, accuracy, loss, forgetting), accuracies as fractions.
    # Its forgetting is Avalanche's: the accuracy right after training an experience minus the accuracy now,
    # so experience 0's after experience 1 is A[0][0] - A[1][0] of our own matrix (0 without the metric).
    A = read_run(run).matrix / 100
    rows = {(int(r[0]), int(r[1])): [float(v) for v in r[2:]]
            for r in (line.split(",") for line in (run / "csv_logs" / "eval_results.csv").read_text().splitlines()[1:])}
    assert sorted(rows) == [(0, 0), (0, 1), (1, 1)]
    for (j, i), (acc, _loss, _forgetting) in rows.items():
        assert acc == pytest.approx(A[i][j], abs=1e-4)
    assert A[0][0] - A[1][0] > 0.05  # the probe forgets experience 0: a column of zeros would be wrong
    assert rows[0, 1][2] == pytest.approx(A[0][0] - A[1][0], abs=1e-4)
    assert rows[0, 0][2] == 0 and rows[1, 1][2] == 0  # just trained: nothing forgotten yet


def test_missing_logger_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(loggers="[{name: wandb, params: {mode: offline}}]"))
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loggers[0]" in err and "pip install wandb" in err
    cfg.write_text(CONFIG.format(loggers="[{name: csv, folder: x}]"))
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "loggers[0].folder: unknown parameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
