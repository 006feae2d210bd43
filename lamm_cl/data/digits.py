"""The 1,797 real 8x8 handwritten digits that ship inside scikit-learn: offline, no download."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lamm_cl.data.registry import register_dataset
from lamm_cl.data.base import ArraySamples, DatasetParts

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_FRACTION = 0.3
SPLIT_SEED = 0  # the train/test split is part of the dataset's identity, not of a run's seed


@register_dataset("digits")
def load_digits(root: Path, download: bool) -> DatasetParts:
    """Load scikit-learn's digits; ``root`` and ``download`` are ignored (the data is embedded).

    The 0..16 grey levels are scaled to 0..255; CLIP's preprocessing then resizes
    the 8x8 images to the model's input size. The split is stratified: 30% of
    each class goes to test, drawn with a fixed seed.
    """
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * TEST_FRACTION))
        test_idx.extend(idx[:n_test].tolist())
        train_idx.extend(idx[n_test:].tolist())
    train_idx.sort()
    test_idx.sort()
    return DatasetParts(
        name="digits",
        classnames=list(CLASSNAMES),
        train=ArraySamples(images[train_idx], labels[train_idx], "sklearn-digits:train"),
        test=ArraySamples(images[test_idx], labels[test_idx], "sklearn-digits:test"),
        template="a photo of the number {}.",
    )
