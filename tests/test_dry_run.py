"""Every benchmark YAML validates; --dry-run prints the plan and stops at missing data with status 2."""
from pathlib import Path

import pytest

from lamm_cl import config
from lamm_cl.benchmark import dry_run
from lamm_cl.cli import main
from lamm_cl.errors import DataNotFoundError

YAMLS = sorted(Path("benchmarks").glob("*.yaml"))


def test_there_is_a_benchmark_per_dataset():
    names = {p.stem for p in YAMLS}
    assert {"quickstart", "split_cifar100"} <= names
    assert len([n for n in names if n.startswith("split_")]) == 12


@pytest.mark.parametrize("path", [p for p in YAMLS if p.stem != "quickstart"], ids=lambda p: p.stem)
def test_benchmark_yaml_validates_up_to_the_missing_data(path, tmp_path):
    cfg = config.load(path, [f"benchmark.root={tmp_path}"])
    assert cfg.model.arch == "ViT-B-16" and cfg.model.pretrained == "openai"
    with pytest.raises(DataNotFoundError) as e:
        dry_run(cfg)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_dry_run_prints_the_plan(capsys, tmp_path):
    assert main(["run", "benchmarks/quickstart.yaml", "--dry-run", "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "5 experiences of [2, 2, 2, 2, 2] classes" in out and "lamm-tiny + tinyworld" in out
    assert "RANDOM weights" not in out  # the quickstart's tiny CLIP is pretrained (on tinyworld)
    assert "experience 4: 2 classes" in out
    assert not (tmp_path / "o").exists()


def test_dry_run_of_missing_data_is_one_line_and_status_2(capsys, tmp_path):
    code = main(["run", "benchmarks/split_eurosat.yaml", "--dry-run", "--set", f"benchmark.root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "eurosat" in err


def test_uneven_split_is_explicit(digits):
    cfg = config.parse({"name": "u", "benchmark": {"dataset": "digits", "n_experiences": 3},
                        "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": [{"name": "zeroshot"}]})
    lines = dry_run(cfg)
    assert any("3 experiences of [4, 3, 3] classes" in line for line in lines)
