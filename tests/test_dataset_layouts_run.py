"""`lamm-cl run` end to end on a CoOp-layout folder and on an ImageFolder tree, with the tiny model."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from lamm_cl.cli import main
from lamm_cl.data.folder import TEMPLATE

from builders import make_imagefolder, make_split_file_dataset


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


def zero_shot_matrix(clip, images: dict, names: list, template: str, experiences: list) -> np.ndarray:
    """A[t][j]: % of experience j's test images that zero-shot CLIP puts in their own class among the
    classes seen after experience t, from the image files. ``images``: label -> its image paths."""
    def unit(v):
        return v / v.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        text = unit(clip.encode_text([template.format(n) for n in names]))
        feats = {c: unit(clip.encode_images(torch.stack([clip.preprocess(Image.open(p).convert("RGB"))
                                                         for p in paths]))) for c, paths in images.items()}
    A = np.full((len(experiences), len(experiences)), np.nan)
    for t in range(len(experiences)):
        seen = [c for e in experiences[: t + 1] for c in e]
        for j in range(t + 1):
            hits = [int(seen[int(k)] == c) for c in experiences[j] for k in (feats[c] @ text[seen].t()).argmax(-1)]
            A[t, j] = 100 * sum(hits) / len(hits)
    return A


@pytest.mark.integration
def test_coop_layout_end_to_end(tmp_path, capsys, tiny_clip, no_plots):
    split = make_split_file_dataset(tmp_path / "data", "dtd")
    order = _run(tmp_path, {"dataset": "dtd", "root": str(tmp_path / "data"), "classes_per_experience": [2, 1],
                            "class_order": [2, 0, 1], "shots": 2}, capsys)
    assert order["class_order"] == [2, 0, 1]
    assert order["class_names"] == ["zigzagged", "banded", "blotchy"]
    assert order["experiences"] == [[0, 1], [2]]
    assert order["test_counts"] == [4, 2]  # two test images per class in the miniature split
    # the zero-shot accuracies, recomputed from the files: label i's test images are class order[i]'s
    test = json.loads(split.read_text())["test"]  # [relative path, original label, name]
    images = {c: [split.parent / "images" / rel for rel, label, _ in test if label == orig]
              for c, orig in enumerate([2, 0, 1])}
    expected = zero_shot_matrix(tiny_clip, images, ["zigzagged", "banded", "blotchy"], "{} texture.", [[0, 1], [2]])
    A = pd.read_csv(tmp_path / "out" / "zeroshot" / "seed0" / "accuracy_matrix.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(A, expected, equal_nan=True)


@pytest.mark.integration
def test_imagefolder_end_to_end(tmp_path, capsys, tiny_clip, no_plots):
    make_imagefolder(tmp_path / "tree")
    order = _run(tmp_path, {"dataset": "imagefolder", "root": str(tmp_path / "tree"), "n_experiences": 2,
                            "class_order": [1, 0]}, capsys)
    assert order["class_names"] == ["tabby cat", "golden retriever"]
    assert order["experiences"] == [[0], [1]]
    # class 1 (folders sorted: golden_retriever, tabby_cat) is label 0
    images = {c: sorted(p for p in (tmp_path / "tree" / "test" / folder).iterdir() if p.suffix != ".txt")
              for c, folder in enumerate(["tabby_cat", "golden_retriever"])}
    expected = zero_shot_matrix(tiny_clip, images, ["tabby cat", "golden retriever"], TEMPLATE, [[0], [1]])
    A = pd.read_csv(tmp_path / "out" / "zeroshot" / "seed0" / "accuracy_matrix.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(A, expected, equal_nan=True)
