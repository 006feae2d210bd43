"""`lamm-cl run` end to end on a CoOp-layout folder and on an ImageFolder tree, with the tiny model."""
import json

import yaml

from lamm_cl.cli import main
from test_data_loaders import make_imagefolder, make_split_file_dataset


def _run(tmp_path, benchmark: dict, capsys) -> dict:
    cfg = {
        "name": "layout", "device": "cpu", "seeds": [0],
        "benchmark": benchmark,
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "features": {"cache_dir": str(tmp_path / "cache")},
        "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1, "batch_size": 2}],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    order = json.loads((out / "lamm" / "seed0" / "class_order.json").read_text())
    assert (out / "summary.csv").is_file() and (out / "report.md").is_file()
    return order


def test_coop_layout_end_to_end(tmp_path, capsys):
    make_split_file_dataset(tmp_path / "data", "dtd")
    order = _run(tmp_path, {"dataset": "dtd", "root": str(tmp_path / "data"), "classes_per_experience": [2, 1],
                            "class_order": [2, 0, 1], "shots": 2}, capsys)
    assert order["class_order"] == [2, 0, 1]
    assert order["class_names"] == ["zigzagged", "banded", "blotchy"]
    assert order["experiences"] == [[0, 1], [2]]
    assert order["test_counts"] == [4, 2]  # two test images per class in the miniature split


def test_imagefolder_end_to_end(tmp_path, capsys):
    make_imagefolder(tmp_path / "tree")
    order = _run(tmp_path, {"dataset": "imagefolder", "root": str(tmp_path / "tree"), "n_experiences": 2,
                            "class_order": [1, 0]}, capsys)
    assert order["class_names"] == ["tabby cat", "golden retriever"]
    assert order["experiences"] == [[0], [1]]
