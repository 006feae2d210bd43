"""A seed's result does not depend on the other seeds of its config (issue 25, item 1).

With ``benchmark.shots`` and ``features.train_views > 0`` the augmented views are made of the few-shot
images only; a view must be seeded by the image's index in its split (not by its position among the
images extracted beside it), and a seed's views must come from its own draw's entry, so that seed 0 trains
on the same crops whether the config lists ``seeds: [0]`` or ``[0, 1]``.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from lamm_cl import config
from lamm_cl.features import AugmentedView, ViewReader, view_seed

BYTE_EQUAL = ["class_order.json", "accuracy_matrix.csv", "accuracy_matrix_task_aware.csv", "metrics.csv",
              "per_class_accuracy.csv"]


def _cfg(seeds, cache_dir):
    return config.parse({
        "name": "views", "seeds": seeds, "device": "cpu",
        "benchmark": {"dataset": "tinyworld", "n_experiences": 2, "class_order": "identity", "shots": 2},
        "model": {"arch": "lamm-tiny", "pretrained": "tinyworld"},
        "features": {"train_views": 2, "cache_dir": str(cache_dir)},
        # a linear probe on few images, with a large lr: its decision boundaries follow the exact crops
        "strategies": [{"name": "linear_probe", "epochs": 2, "lr": 0.5, "batch_size": 2}]})


def test_seed_zero_is_byte_identical_whichever_other_seeds_run(tmp_path):
    from lamm_cl.runner import run

    # separate stores: seed 0's entry must not simply be read back from the first run
    run(_cfg([0], tmp_path / "c1"), tmp_path / "alone", progress=False)
    run(_cfg([0, 1], tmp_path / "c2"), tmp_path / "both", progress=False)
    alone, both = (tmp_path / d / "linear_probe" / "seed0" for d in ("alone", "both"))
    for name in BYTE_EQUAL:
        assert (alone / name).read_bytes() == (both / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (alone, both))
    for s in (a, b):
        s["info"].pop("seconds")
        s.pop("config", None)  # it lists the seeds
    assert a == b
    assert (tmp_path / "both" / "linear_probe" / "seed1" / "summary.json").is_file()


def test_a_view_is_seeded_by_the_images_split_index_in_any_subset(digits, tiny_clip):
    augment = AugmentedView.for_clip(tiny_clip)
    whole = ViewReader(digits.train, augment, view=1)
    for picked in ([7, 3, 250], [250], [1, 250, 9, 4]):
        sub = digits.train.subset(picked)
        assert sub.index.tolist() == picked
        reader = ViewReader(sub, augment, view=1)
        at = picked.index(250)
        torch.testing.assert_close(reader[at], whole[250], rtol=0, atol=0)
        torch.manual_seed(view_seed(1, 250))
        want = augment.tail(augment.flip(augment.crop(digits.train.image(250))))
        assert torch.equal(reader[at], want)
    nested = digits.train.subset([10, 20, 30]).subset([2, 0])
    assert nested.index.tolist() == [30, 10] and np.array_equal(nested.labels, digits.train.labels[[30, 10]])
