"""Tinyworld shapes: the *shape* of the pictures lamm_cl.tiny.world draws (10 classes, "circle", ...), in the
benchmark's shifted style. Generated, offline; with tinyworld (colours) and digits it makes the tiny sequence
of datasets the tests run (a second task on the same pictures, with its own label space)."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from lamm_cl.data.base import ArraySamples, DatasetParts
from lamm_cl.data.registry import register_dataset
from lamm_cl.tiny import world

TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 20
TRAIN_SEED, TEST_SEED = 3003, 4004  # fixed: the split is the dataset's, never a run's seed


def _draw(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(world.SHAPES)), per_class)
    images = np.empty((len(labels), world.SIZE, world.SIZE, 3), dtype=np.uint8)
    for i, shape in enumerate(labels):
        scene = world.sample_scene(rng, shape=int(shape), shifted=True)
        images[i] = world.render(scene, rng, shifted=True, noise=world.BENCHMARK_NOISE, light=tuple(world.lamp(rng)))
    return images, labels


@functools.lru_cache(maxsize=1)
def _parts() -> tuple[ArraySamples, ArraySamples]:
    out = []
    for part, per_class, seed in (("train", TRAIN_PER_CLASS, TRAIN_SEED), ("test", TEST_PER_CLASS, TEST_SEED)):
        images, labels = _draw(per_class, seed)
        digest = hashlib.sha1(images.tobytes()).hexdigest()[:16]  # a changed generator never reads stale features
        out.append(ArraySamples(images, labels, f"tinyworld_shapes:{part}:{digest}"))
    return out[0], out[1]


@register_dataset("tinyworld_shapes")
def load_tinyworld_shapes(root: Path, download: bool) -> DatasetParts:
    """Tinyworld's shapes: 10 shape classes, 40 train and 20 test images each; ``root`` and ``download``
    are ignored (drawn with fixed seeds on first use)."""
    train, test = _parts()
    return DatasetParts(name="tinyworld_shapes", classnames=list(world.SHAPES), train=train, test=test,
                        template="a photo of a {}.")
