"""`loggers:` attaches Avalanche's own loggers by name; a missing package is one line naming pip."""
from __future__ import annotations

import sys

import pytest

from lamm_cl.cli import main

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


def test_csv_tensorboard_and_offline_wandb_loggers_write_their_files(tmp_path, monkeypatch):
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
