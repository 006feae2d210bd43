"""``benchmark.sampling: dassl`` draws the same training images as Dassl for a seed and a split list,
and every few-shot run writes the images it drew to ``fewshot.json`` (issue 25, item 4)."""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lamm_cl import config
from lamm_cl.benchmark import make_plan
from lamm_cl.data import load_dataset

NAMES = ["banded", "dotted", "striped", "zigzagged"]
# train images per label, and the order the split file lists them in: labels first appear as 2, 0, 3, 1,
# and label 3 has fewer than 4 images (Dassl then draws with repetition)
SIZES = {0: 6, 1: 5, 2: 7, 3: 3}
FIRST_SEEN = [2, 0, 3, 1]


def make_split(root: Path) -> dict:
    """A CoOp-layout DTD whose train list interleaves the labels; returns the split as written."""
    folder = root / "dtd"
    queues = {y: [f"{NAMES[y]}/{NAMES[y]}_{i}.png" for i in range(n)] for y, n in SIZES.items()}
    train = []
    while any(queues.values()):
        for y in FIRST_SEEN:  # round robin: the first row of each label comes in FIRST_SEEN order
            if queues[y]:
                train.append([queues[y].pop(0), y, NAMES[y]])
    test = [[f"{NAMES[y]}/{NAMES[y]}_test.png", y, NAMES[y]] for y in range(4)]
    for k, (rel, _, _) in enumerate(train + test):
        (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        rgb = np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / "images" / rel, format="PNG")
    split = {"train": train, "val": [], "test": test}
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return split


def dassl_by_hand(train: list, shots: int, seed: int) -> dict[int, list[str]]:
    """Dassl's draw, written out: set_random_seed(seed) (dassl/utils/tools.py), then
    generate_fewshot_dataset(train, num_shots=shots) with the default repeat=True
    (dassl/data/datasets/base_dataset.py): per label, in order of first appearance."""
    random.seed(seed)
    tracker = defaultdict(list)
    for item in train:
        tracker[item[1]].append(item)
    out = {}
    for label, items in tracker.items():
        picked = random.sample(items, shots) if len(items) >= shots else random.choices(items, k=shots)
        out[label] = [rel for rel, _, _ in picked]
    return out


def _bench(root: Path, **more) -> config.BenchmarkConfig:
    data = {"dataset": "dtd", "root": str(root), "n_experiences": 2, "class_order": "identity", "shots": 4,
            "sampling": "dassl", **more}
    return config.from_dict(config.BenchmarkConfig, data, "benchmark")


def _drawn(plan, parts, image_dir: Path) -> dict[int, list[str]]:
    out = {}
    for t, labels in enumerate(plan.experiences):
        for c in labels:
            orig = plan.class_order[c]
            idx = [int(i) for i in plan.train_index[t] if parts.train.labels[i] == orig]
            out[orig] = [str(Path(parts.train.paths[i]).relative_to(image_dir)) for i in idx]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dassl_sampling_draws_the_images_dassl_draws(tmp_path, seed):
    split = make_split(tmp_path)
    parts = load_dataset("dtd", str(tmp_path), False)
    want = dassl_by_hand(split["train"], 4, seed)
    assert list(want) == FIRST_SEEN and len(set(want[3])) <= 3 and len(want[3]) == 4  # repetition
    image_dir = tmp_path / "dtd" / "images"
    plan = make_plan(parts, _bench(tmp_path), seed)
    assert _drawn(plan, parts, image_dir) == want
    # the draw is made over every class before the split into experiences: another class order, the same images
    shuffled = make_plan(parts, _bench(tmp_path, class_order=[3, 1, 0, 2]), seed)
    assert _drawn(shuffled, parts, image_dir) == want
    assert [n for n, _ in plan.short_classes] == ["zigzagged"]
    assert "draw them with repetition (as Dassl)" in plan.shots_note(4)
    # numpy sampling, the global default, is another draw
    numpy_plan = make_plan(parts, _bench(tmp_path, sampling="numpy"), seed)
    assert numpy_plan.sampling == "numpy"
    assert _drawn(numpy_plan, parts, image_dir)[3] == [f"zigzagged/zigzagged_{i}.png" for i in range(3)]  # all it has


def test_dassl_sampling_leaves_the_global_random_stream_alone(tmp_path):
    make_split(tmp_path)
    parts = load_dataset("dtd", str(tmp_path), False)
    random.seed(7)
    make_plan(parts, _bench(tmp_path), 1)
    after = random.random()
    random.seed(7)
    assert random.random() == after


def test_the_default_is_numpy_and_sampling_is_checked():
    assert config.BenchmarkConfig(dataset="digits").sampling == "numpy"
    with pytest.raises(config.ConfigError, match=r"^benchmark\.sampling: "):
        config.parse({"name": "x", "benchmark": {"dataset": "digits", "n_experiences": 2, "sampling": "torch"},
                      "strategies": [{"name": "zeroshot"}]})


def test_every_few_shot_run_writes_the_images_it_drew(tmp_path):
    from lamm_cl.runner import run

    split = make_split(tmp_path)
    cfg = config.parse({"name": "fs", "seeds": [2], "device": "cpu",
                        "benchmark": {"dataset": "dtd", "root": str(tmp_path), "n_experiences": 2,
                                      "class_order": "identity", "shots": 4, "sampling": "dassl"},
                        "model": {"arch": "lamm-tiny", "pretrained": "none"}, "features": {"cache": False},
                        "strategies": [{"name": "zeroshot"}]})
    run(cfg, tmp_path / "out", progress=False)
    got = json.loads((tmp_path / "out" / "zeroshot" / "seed2" / "fewshot.json").read_text())
    assert (got["dataset"], got["shots"], got["seed"], got["sampling"]) == ("dtd", 4, 2, "dassl")
    want = dassl_by_hand(split["train"], 4, 2)
    image_dir = tmp_path / "dtd" / "images"
    assert [c["original_label"] for c in got["classes"]] == [0, 1, 2, 3]
    for c in got["classes"]:
        assert c["name"] == NAMES[c["original_label"]]
        assert c["images"] == [str(image_dir / rel) for rel in want[c["original_label"]]]
    # not few-shot: no fewshot.json
    whole = config.parse({
        "name": "fs", "seeds": [2], "device": "cpu",
        "benchmark": {"dataset": "dtd", "root": str(tmp_path), "n_experiences": 2, "class_order": "identity"},
        "model": {"arch": "lamm-tiny", "pretrained": "none"}, "features": {"cache": False},
        "strategies": [{"name": "zeroshot"}]})
    run(whole, tmp_path / "all", progress=False)
    assert not (tmp_path / "all" / "zeroshot" / "seed2" / "fewshot.json").exists()
