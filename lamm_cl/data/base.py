"""What every dataset loader returns: class names, a train part and a test part.

A loader reads an index (paths or an in-memory array plus integer labels); the
images themselves are decoded lazily, so building a benchmark plan or a
``--dry-run`` never touches pixel data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


class Samples:
    """An indexable list of labelled images.

    Attributes:
        labels: int64 array, the dataset's own label of each image.
        identity: a stable string naming exactly these images (used in feature-store keys).
    """

    labels: np.ndarray
    identity: str

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Return image ``i`` as an RGB PIL image."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Samples":
        """Return the samples at ``indices`` (in that order) as a new :class:`Samples`."""
        raise NotImplementedError


def _digest(*parts: object) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


class ArraySamples(Samples):
    """Images held in memory as a uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]``."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], identity: str):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.identity = identity

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")

    def subset(self, indices: Sequence[int]) -> "ArraySamples":
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySamples(self.images[idx], self.labels[idx], f"{self.identity}[{_digest(idx.tolist())}]")


class FileSamples(Samples):
    """Images on disk, one path per sample."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], identity: str):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.identity = identity

    def image(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")

    def subset(self, indices: Sequence[int]) -> "FileSamples":
        idx = [int(i) for i in indices]
        return FileSamples([self.paths[i] for i in idx], self.labels[idx], f"{self.identity}[{_digest(idx)}]")


@dataclass
class DatasetParts:
    """A loaded dataset, before any class order or split is applied.

    Attributes:
        name: the dataset's name as the YAML spells it (``digits``, ``oxford_pets`` ...).
        classnames: readable class names, indexed by the dataset's own labels.
        train: the training images.
        test: the test images.
        template: the dataset's own prompt template, with ``{}`` for the class name.
    """

    name: str
    classnames: list[str]
    train: Samples
    test: Samples
    template: str = "a photo of a {}."

    def __post_init__(self) -> None:
        n = len(self.classnames)
        for part, s in (("train", self.train), ("test", self.test)):
            if len(s) and (s.labels.min() < 0 or s.labels.max() >= n):
                raise ValueError(f"{self.name} {part}: labels outside 0..{n - 1}")
