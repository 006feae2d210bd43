"""The paper's ablations as benchmark files (issue 25, item 3): on EuroSAT and DTD, LAMM with each loss term
removed in turn, CE only and random label init, beside zero-shot CLIP and full LAMM, in one config via
``label:``; each file dry-runs to the usual one-line missing-data error."""
from __future__ import annotations

from pathlib import Path

import pytest

from lamm_cl import cli, config
from lamm_cl.benchmark import dry_run
from lamm_cl.errors import DataNotFoundError

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "lamm_paper"
DATASETS = ["dtd", "eurosat"]
# (lambda_p, lambda_f, lambda_l, label_init) of each row, written out here
ROWS = {"lamm": (1.0, 1.0, 0.05, "name"), "lamm_no_param": (0.0, 1.0, 0.05, "name"),
        "lamm_no_feature": (1.0, 0.0, 0.05, "name"), "lamm_no_logits": (1.0, 1.0, 0.0, "name"),
        "lamm_ce_only": (0.0, 0.0, 0.0, "name"), "lamm_random_init": (1.0, 1.0, 0.05, "random")}


def test_the_ablation_files_are_there():
    assert sorted(p.stem for p in PAPER.glob("ablation_*.yaml")) == [f"ablation_{d}" for d in DATASETS]


@pytest.mark.parametrize("dataset", DATASETS)
def test_an_ablation_file_varies_one_thing_per_row_of_the_few_shot_setting(dataset, tmp_path):
    cfg = config.load(PAPER / f"ablation_{dataset}.yaml", [f"benchmark.root={tmp_path}"])
    base = config.load(PAPER / f"fewshot_{dataset}.yaml", [f"benchmark.root={tmp_path}"])
    assert cfg.benchmark == base.benchmark and cfg.features == base.features and cfg.seeds == base.seeds
    assert cfg.benchmark.sampling == "dassl"
    assert [e.run_label for e in cfg.strategies] == ["zeroshot", *ROWS]
    full = {e.name: e.options for e in base.strategies}["lamm"]
    for e in cfg.strategies[1:]:
        o = e.options
        assert e.name == "lamm"
        assert (o.loss.param, o.loss.feature, o.loss.logits, o.label_init) == ROWS[e.run_label], e.run_label
        # everything else is full LAMM's setting in the few-shot file
        assert (o.epochs, o.batch_size, o.lr, o.label_tokens, o.softmax, o.template, o.loss.temperature,
                o.loss.logits_kind) == (full.epochs, full.batch_size, full.lr, full.label_tokens, full.softmax,
                                        full.template, full.loss.temperature, full.loss.logits_kind)
    with pytest.raises(DataNotFoundError) as e:
        dry_run(cfg)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_the_cli_dry_run_of_an_ablation_file_is_one_line_and_status_2(capsys, tmp_path):
    code = cli.main(["run", str(PAPER / "ablation_eurosat.yaml"), "--dry-run", "--set", f"benchmark.root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "eurosat" in err
