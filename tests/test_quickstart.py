"""End to end: the quickstart config through the CLI writes every result file."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lamm_cl.cli import main
from lamm_cl.metrics import summarize

from builders import record_plots


def draw_only_seen_accuracy(mp: pytest.MonkeyPatch) -> list:
    """The report draws its seen-accuracy figure (the one this test opens) and records the other eleven
    (builders.record_plots; ~0.5 s of matplotlib each, drawn for real by test_plots.py and test_report.py)."""
    from lamm_cl import plots

    draw, save = plots.plot_seen_accuracy, plots.save_figure
    figures = record_plots(mp)
    record = plots.save_figure
    mp.setattr(plots, "plot_seen_accuracy", draw)
    mp.setattr(plots, "save_figure", lambda fig, stem, formats=("png",):
               (save if Path(stem).name == "seen_accuracy" else record)(fig, stem, formats))
    return figures


@pytest.mark.integration
def test_quickstart_end_to_end(tmp_path, capsys, monkeypatch):
    figures = draw_only_seen_accuracy(monkeypatch)
    cfg = yaml.safe_load(open("benchmarks/quickstart.yaml"))
    assert cfg["model"] == {"arch": "lamm-tiny", "pretrained": "tinyworld"}
    assert cfg["benchmark"]["dataset"] == "tinyworld"
    sets = [f"strategies.{i}.epochs=1" for i, s in enumerate(cfg["strategies"]) if s.get("epochs", 0) > 0]
    out = tmp_path / "qs"
    assert main(["run", "benchmarks/quickstart.yaml", "--output", str(out), "--no-progress", *sum(
        (["--set", s] for s in sets), [])]) == 0
    printed = capsys.readouterr().out
    assert "tinyworld, lamm-tiny + tinyworld" in printed and "RANDOM" not in printed and "Avg" in printed
    names = [s["name"] for s in cfg["strategies"]]
    for name in names:
        run = out / name / "seed0"
        for f in ("config.yaml", "class_order.json", "accuracy_matrix.csv", "metrics.csv",
                  "per_class_accuracy.csv", "summary.json"):
            assert (run / f).is_file(), f"{name}: {f} missing"
        order = json.loads((run / "class_order.json").read_text())
        assert sorted(order["class_order"]) == list(range(10)) and len(order["experiences"]) == 5
        A = pd.read_csv(run / "accuracy_matrix.csv", index_col=0).to_numpy()
        assert A.shape == (5, 5) and np.isnan(A[0, 1]) and not np.isnan(np.tril(A)).any()
        summary = json.loads((run / "summary.json").read_text())
        expect = summarize(A, order["test_counts"])
        assert summary["last_accuracy"] == expect["last_accuracy"]
        assert f"{name:<16}" in printed
    summary = pd.read_csv(out / "summary.csv")
    assert set(names) <= set(summary["strategy"])
    assert (out / "plots" / "seen_accuracy.png").stat().st_size > 1000
    assert [name for _, name, _ in figures] == ["final_accuracy_forgetting", "old_new_accuracy", "accuracy_matrices",
                                                *(f"accuracy_matrix_{n}" for n in names)]
    assert (out / "report.md").is_file()
    # every cell is a count of correct test images over that experience's test images
    counts = np.array(json.loads((out / "zeroshot" / "seed0" / "class_order.json").read_text())["test_counts"])
    A = pd.read_csv(out / "zeroshot" / "seed0" / "accuracy_matrix.csv", index_col=0).to_numpy()
    correct = np.tril(np.nan_to_num(A)) * counts[None, :] / 100
    assert np.allclose(correct, np.round(correct), atol=1e-6)
