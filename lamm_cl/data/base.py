"""What every dataset loader returns: class names, a train part and a test part.

A loader reads an index (paths or an in-memory array plus integer labels); the
images themselves are decoded lazily, so building a benchmark plan or a
``--dry-run`` never touches pixel data.
"""
from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from lamm_cl.errors import DataNotFoundError, UserError


class Samples:
    """An indexable list of labelled images.

    Attributes:
        labels: int64 array, the dataset's own label of each image.
        identity: a stable string naming exactly these images (used in feature-store keys).
        index: int64 array, each image's index in the split it was loaded as (``arange`` there; a
            :meth:`subset` keeps its images' indices), so that what is seeded per image (an augmented
            view) does not depend on which other images a subset holds.
    """

    labels: np.ndarray
    identity: str
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Return image ``i`` as an RGB PIL image."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Samples":
        """Return the samples at ``indices`` (in that order) as a new :class:`Samples`."""
        raise NotImplementedError


def _index(index: Sequence[int] | None, n: int) -> np.ndarray:
    """The split indices of ``n`` samples: ``index`` as int64, or ``0..n-1`` for a whole split."""
    if index is None:
        return np.arange(n, dtype=np.int64)
    out = np.asarray(index, dtype=np.int64)
    if out.shape != (n,):
        raise ValueError(f"{len(out)} indices for {n} samples")
    return out


def _digest(*parts: object) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def files_identity(files: Iterable[tuple[str, str | Path]], listed_in: str = "") -> str:
    """A digest of what sits at each listed file: its relative path, size and modification time.

    Only ``stat`` is called, never a read, so a dataset of 1.3 M files costs 1.3 M stats
    (``python -m lamm_cl.speed identity`` measures it); replacing or editing any image
    changes its size or mtime and so the digest, and with it the feature-store key.

    Args:
        files: ``(relative path, full path)`` pairs, in the dataset's order.
        listed_in: where the files are listed (a split file), for the error message.

    Raises:
        DataNotFoundError: a listed file is missing (named in the message).
        UserError: a listed file cannot be looked at (permissions, I/O error).
    """
    h = hashlib.sha1()
    chunk: list[str] = []
    where = f" listed in {listed_in}" if listed_in else ""
    for rel, full in files:
        try:
            st = os.stat(full)
        except FileNotFoundError:
            raise DataNotFoundError(f"image{where} not found: {full}") from None
        except OSError as e:
            raise UserError(f"image{where} cannot be read: {full} ({e.strerror or e})") from None
        chunk.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n")
        if len(chunk) >= 4096:  # one update per few thousand files: hashing is then far cheaper than the stats
            h.update("".join(chunk).encode("utf-8", "surrogateescape"))
            chunk.clear()
    h.update("".join(chunk).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


class ImageError(UserError):
    """An image file that cannot be decoded (truncated, not an image, unreadable); the message names it."""


def open_rgb(path: str | Path) -> Image.Image:
    """Decode the image at ``path`` as RGB.

    Raises:
        ImageError: it is missing, unreadable, truncated or not an image (one line naming the file).
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"image not found: {path} (it was there when the dataset was listed)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = e.strerror if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EIO) else str(e)
        raise ImageError(f"cannot decode image {path}: {' '.join(str(why).split()) or type(e).__name__}; "
                         "replace the file or remove it from the dataset") from None


class ArraySamples(Samples):
    """Images held in memory as a uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]``."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], identity: str,
                 index: Sequence[int] | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.identity = identity
        self.index = _index(index, len(self.labels))

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")

    def subset(self, indices: Sequence[int]) -> "ArraySamples":
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySamples(self.images[idx], self.labels[idx], f"{self.identity}[{_digest(idx.tolist())}]",
                            index=self.index[idx])


class FileSamples(Samples):
    """Images on disk, one path per sample."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], identity: str,
                 index: Sequence[int] | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.identity = identity
        self.index = _index(index, len(self.labels))

    def image(self, i: int) -> Image.Image:
        return open_rgb(self.paths[i])

    def subset(self, indices: Sequence[int]) -> "FileSamples":
        idx = [int(i) for i in indices]
        return FileSamples([self.paths[i] for i in idx], self.labels[idx], f"{self.identity}[{_digest(idx)}]",
                           index=self.index[idx])


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
    # stable ids of the classes by label (ImageNet's wnids), to match classes across datasets; None: match by name
    class_keys: Optional[list[str]] = None

    def __post_init__(self) -> None:
        n = len(self.classnames)
        for label, name in enumerate(self.classnames):
            if not str(name).strip():
                raise UserError(f"{self.name}: class {label} has an empty name; a prompt needs a class name")
        for part, s in (("train", self.train), ("test", self.test)):
            if len(s) and (s.labels.min() < 0 or s.labels.max() >= n):
                raise ValueError(f"{self.name} {part}: labels outside 0..{n - 1}")
