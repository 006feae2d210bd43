"""Tinyworld: the colour of shapes drawn by lamm_cl.tiny.world, under the benchmark's lamp. Generated, offline."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from lamm_cl.data.registry import register_dataset
from lamm_cl.data.base import ArraySamples, DatasetParts
from lamm_cl.tiny import world

TRAIN_PER_CLASS = 80
TEST_PER_CLASS = 50
TRAIN_SEED, TEST_SEED = 1001, 2002  # the split is fixed: two seeds, never a run's seed


@functools.lru_cache(maxsize=1)
def _parts() -> tuple[ArraySamples, ArraySamples]:
    out = []
    for part, per_class, seed in (("train", TRAIN_PER_CLASS, TRAIN_SEED), ("test", TEST_PER_CLASS, TEST_SEED)):
        images, labels = world.benchmark_images(per_class, seed)
        # the pixels' hash names the images, so a change to the generator never reads stale cached features
        digest = hashlib.sha1(images.tobytes()).hexdigest()[:16]
        out.append(ArraySamples(images, labels, f"tinyworld:{part}:{digest}"))
    return out[0], out[1]


@register_dataset("tinyworld")
def load_tinyworld(root: Path, download: bool) -> DatasetParts:
    """Tinyworld's benchmark: 10 colour classes ("red shape", ...), 80 train and 50 test images each;
    ``root`` and ``download`` are ignored (the images are drawn, with fixed seeds, on first use).

    Its images come from a distribution that pretraining (``python -m lamm_cl.tiny pretrain``)
    did not see: lit by a warm lamp, every (shape, colour) pair, a quarter of which pretraining
    held out, turned further, on a noisy textured background (see :mod:`lamm_cl.tiny.world`).
    """
    train, test = _parts()
    return DatasetParts(name="tinyworld", classnames=list(world.CLASS_NAMES), train=train, test=test,
                        template="a photo of a {}.")
