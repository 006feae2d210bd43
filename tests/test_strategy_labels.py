"""A strategy entry may carry ``label:``: variants of one strategy side by side in one config, their results
under ``<label>/seed<k>/`` and the label shown wherever a strategy name is (issue 25, item 3)."""
from __future__ import annotations

import json

import pytest
import yaml

from lamm_cl import api, cli, config
from lamm_cl.errors import ConfigError

BENCH = {"dataset": "digits", "n_experiences": 2, "class_order": "identity"}


def _parse(strategies):
    return config.parse({"name": "x", "benchmark": BENCH, "strategies": strategies})


def test_a_label_names_the_entry_and_an_unlabelled_entry_keeps_its_name():
    cfg = _parse([{"name": "lamm"}, {"name": "lamm", "label": "lamm_ce_only", "loss": {"feature": 0.0}}])
    assert [e.run_label for e in cfg.strategies] == ["lamm", "lamm_ce_only"]
    assert [e.name for e in cfg.strategies] == ["lamm", "lamm"]
    assert cfg.strategies[1].options.loss.feature == 0.0
    entries = cfg.to_dict()["strategies"]
    assert "label" not in entries[0] and entries[1]["label"] == "lamm_ce_only"
    again = config.parse({**cfg.to_dict(), "strategies": entries})  # the resolved config parses back
    assert [e.run_label for e in again.strategies] == ["lamm", "lamm_ce_only"]


@pytest.mark.parametrize("strategies, dup", [
    ([{"name": "lamm"}, {"name": "lamm"}], "lamm"),
    ([{"name": "lamm", "label": "a"}, {"name": "coop", "label": "a"}], "a"),
    ([{"name": "zeroshot"}, {"name": "lamm", "label": "zeroshot"}], "zeroshot"),  # a label taken by a name
])
def test_two_entries_with_one_effective_label_are_refused(strategies, dup):
    with pytest.raises(ConfigError, match=rf"^strategies: {dup} listed twice; results are kept per strategy label "
                                          r"\(give each entry its own `label:`\)$"):
        _parse(strategies)


@pytest.mark.parametrize("label", ["a/b", "..", " x", "", 3])
def test_a_label_must_be_usable_as_a_folder(label):
    with pytest.raises(ConfigError, match=r"^strategies\[0\]\.label: "):
        _parse([{"name": "lamm", "label": label}])


def test_the_cli_refuses_a_repeated_label_in_one_line_with_status_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "benchmark": BENCH, "model": {"arch": "lamm-tiny", "pretrained": "none"},
                                    "strategies": [{"name": "lamm", "label": "v"}, {"name": "coop", "label": "v"}]}))
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "v listed twice" in err


def test_two_lamm_entries_with_different_labels_run_in_one_config(tmp_path, no_plots):
    data = {"name": "labels", "seeds": [0], "device": "cpu", "benchmark": BENCH,
            "model": {"arch": "lamm-tiny", "pretrained": "none"},
            "strategies": [{"name": "lamm", "label": "lamm_full", "epochs": 1, "lr": 0.5, "batch_size": 256},
                           {"name": "lamm", "label": "lamm_ce", "epochs": 1, "lr": 0.5, "batch_size": 256,
                            "loss": {"param": 0.0, "feature": 0.0, "logits": 0.0}}]}
    out = tmp_path / "out"
    res = api.run(data, output=out, progress=False)
    for label in ("lamm_full", "lamm_ce"):
        run_dir = out / label / "seed0"
        assert json.loads((run_dir / "summary.json").read_text())["strategy"] == label
        entry = yaml.safe_load((run_dir / "config.yaml").read_text())["strategies"]
        assert [(e["name"], e.get("label")) for e in entry] == [("lamm", "lamm_full"), ("lamm", "lamm_ce")]
    assert not (out / "lamm").exists()
    assert sorted(res.summary.strategy) == ["lamm_ce", "lamm_full"]
    assert sorted(api.load_results(out).summary.strategy) == ["lamm_ce", "lamm_full"]
    report = (out / "report.md").read_text()
    assert report.index("lamm_full") < report.index("lamm_ce")  # in the config's order
    assert res.compare("lamm_ce", "lamm_full", metric="last").n_pairs == 1
    # --resume finds each labelled run by its label and keeps it
    lines = []
    cfg = config.parse(data)
    from lamm_cl.runner import run

    run(cfg, out, progress=False, log=lines.append, resume=True)
    assert "  lamm_full seed 0: already finished, kept" in lines and "  lamm_ce seed 0: already finished, kept" in lines
    # each label's own figure (recorded, not drawn: test_api and test_report draw real ones)
    assert [name for _, name, _ in no_plots if name.startswith("accuracy_matrix_")] == [
        "accuracy_matrix_lamm_full", "accuracy_matrix_lamm_ce"]
    # report --baseline takes a label
    assert cli.main(["report", str(out), "--baseline", "lamm_full"]) == 0
    assert "Each strategy minus `lamm_full`" in (out / "report.md").read_text()
