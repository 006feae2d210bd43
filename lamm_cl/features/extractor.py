"""The feature extractor: image features of whole sample sets, from memory, the store, or the encoder.

A key names what a feature array depends on -- architecture + weights identity,
the images, the transform, the view -- so any change in them is a different
store entry.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from lamm_cl.data.base import ImageError, Samples
from lamm_cl.features.precision import arithmetic, autocast, extraction_batch_size
from lamm_cl.features.store import FeatureStore, default_cache_dir
from lamm_cl.features.views import AugmentedView, ViewReader
from lamm_cl.model.clip import FrozenCLIP

# Part of every key: bump it when the layout or the meaning changes. v2: a subset's augmented views are
# seeded by each image's index in its split, no longer by its position in the subset.
STORE_FORMAT = "lamm-cl features v2"
DTYPES = ("float32", "float16")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # function reprs carry a per-process address


def transform_identity(transform: Callable) -> str:
    """A string naming a transform pipeline by its parameters (stable across processes)."""
    return hashlib.sha1(_ADDRESS.sub("", repr(transform)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# what the encoder reads
# ---------------------------------------------------------------------------

class ImageReader(torch.utils.data.Dataset):
    """``samples[i]`` as a preprocessed image tensor."""

    def __init__(self, samples: Samples, transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.samples.image(i))


class _Checked(torch.utils.data.Dataset):
    """A reader whose undecodable images come back as their error message (see :func:`_collate_checked`).

    Raised in a DataLoader worker, the error would reach the user wrapped in the worker's traceback.
    """

    def __init__(self, reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        try:
            return self.reader[i]
        except ImageError as e:
            return str(e)


def _collate_checked(batch: list):
    """Stack a batch, or hand on the first error message in it."""
    bad = next((b for b in batch if isinstance(b, str)), None)
    return bad if bad is not None else torch.utils.data.default_collate(batch)



# ---------------------------------------------------------------------------
# the extractor
# ---------------------------------------------------------------------------

class FeatureExtractor:
    """Image features of whole sample sets, computed in batches, kept in memory and in the store.

    Args:
        clip: the frozen CLIP.
        cache_dir: the on-disk store's folder, or None to keep features in memory only.
        dtype: ``float32`` or ``float16`` -- how features are stored (fp16 halves the store;
            features are returned as stored and read as float32 by :class:`Inputs` readers).
        batch_size: images per encoder call; None sizes it to the device.
        progress: a ``(iterable, total, desc) -> iterable`` wrapper for progress bars, or None.
        num_workers: DataLoader workers that decode images; None: 0 on CPU, up to 8 on CUDA.
    """

    def __init__(self, clip: FrozenCLIP, cache_dir: Union[str, Path, None] = None, dtype: str = "float32",
                 batch_size: Optional[int] = None, progress: Optional[Callable] = None,
                 num_workers: Optional[int] = None):
        if dtype not in DTYPES:
            raise ValueError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.clip = clip
        self.store = FeatureStore(cache_dir) if cache_dir is not None else None
        self.dtype = dtype
        self.batch_size = batch_size or extraction_batch_size(clip.device)
        self.progress = progress
        self.num_workers = num_workers if num_workers is not None else (
            min(8, os.cpu_count() or 1) if clip.device.type == "cuda" else 0)
        self._memo: dict[str, torch.Tensor] = {}
        self.log: Optional[Callable[[str], None]] = None  # told when a store entry is discarded
        self._augment: Optional[AugmentedView] = None

    @classmethod
    def from_config(cls, clip: FrozenCLIP, features, progress: Optional[Callable] = None,
                    log: Optional[Callable[[str], None]] = None) -> "FeatureExtractor":
        """The extractor a run's ``features:`` section asks for.

        ``cache: false`` keeps features in memory only; ``cache_dir: null`` means
        :func:`default_cache_dir`. On CUDA this also allows TF32 matmuls. The store
        folder is checked (:meth:`FeatureStore.check`) and swept of stale temporary files.

        Args:
            log: where a discarded (garbled, mismatched) store entry is reported.
        """
        if clip.device.type == "cuda":
            # TF32: the encoders are frozen, features need no more -- unless the run asked for fp32 throughout
            torch.set_float32_matmul_precision("highest" if clip.precision == "fp32" else "high")
        cache_dir = (features.cache_dir or default_cache_dir()) if features.cache else None
        extractor = cls(clip, cache_dir=cache_dir, dtype=features.dtype, progress=progress)
        extractor.log = log
        if extractor.store is not None:
            extractor.store.check()
            extractor.store.sweep_temporaries()
        return extractor

    # -- keys ----------------------------------------------------------------
    def transform(self, view: Optional[int] = None):
        """The transform of the centre crop (``view=None``) or of augmented views."""
        if view is None:
            return self.clip.preprocess
        if self._augment is None:
            self._augment = AugmentedView.for_clip(self.clip)
        return self._augment

    def key(self, samples: Samples, view: Optional[int] = None) -> str:
        """The full text of a store key; any change in it is a different entry."""
        weights = self.clip.identity
        if self.clip.pretrained == "none":
            # random weights are only as fixed as the init code that draws them
            import open_clip

            weights += f" (open_clip {open_clip.__version__}, torch {torch.__version__.split('+')[0]})"
        return "\n".join([
            STORE_FORMAT,
            f"arch: {self.clip.arch}",
            f"weights: {weights}",
            f"images: {samples.identity} (n={len(samples)})",
            f"transform: {transform_identity(self.transform(view))}",
            f"view: {'center' if view is None else int(view)}",
            f"dim: {self.clip.embed_dim}",
            f"dtype: {self.dtype}",
            f"encoder: {arithmetic(self.clip.device, self.clip.precision)}",
        ])

    # -- features ------------------------------------------------------------
    def features(self, samples: Samples, view: Optional[int] = None, desc: str = "features") -> torch.Tensor:
        """``[N, D]`` CPU tensor (the store's dtype) of image features, not normalised.

        Args:
            samples: the images.
            view: None for the centre crop; ``v >= 0`` for augmented view v.
            desc: the progress bar's label.
        """
        k = self.key(samples, view)
        if k not in self._memo:
            self._memo[k] = self._load_or_extract(k, samples, view, desc)
        return self._memo[k]

    def forget(self) -> None:
        """Drop the features held in memory (the on-disk store keeps them): a process that only fills
        the store, one view after another, need not hold them all."""
        self._memo.clear()

    def _load_or_extract(self, key: str, samples: Samples, view: Optional[int], desc: str) -> torch.Tensor:
        shape = (len(samples), self.clip.embed_dim)
        if self.store is None:
            out = np.empty(shape, dtype=self.dtype)
            self._extract(samples, view, out, desc)
            return torch.from_numpy(out)
        arr = self.store.load(key, shape, self.dtype, discard=False)  # no lock: a valid entry never changes
        if arr is None:
            # One process computes, the others wait here and then read what it wrote.
            with self.store.locked(key):
                arr = self.store.load(key, shape, self.dtype)
                if arr is None:
                    with self.store.writer(key, shape, self.dtype) as out:
                        self._extract(samples, view, out, desc)
                    arr = self.store.load(key, shape, self.dtype)
            if arr is None:  # pragma: no cover - a store folder that loses files as we write
                raise OSError(f"feature store {self.store.root}: an entry vanished right after it was written")
        while self.store.discarded:
            line = self.store.discarded.pop(0)
            if self.log is not None:
                self.log(line)
        return torch.from_numpy(arr)

    @torch.no_grad()
    def _extract(self, samples: Samples, view: Optional[int], out: np.ndarray, desc: str) -> None:
        reader = ImageReader(samples, self.clip.preprocess) if view is None else \
            ViewReader(samples, self.transform(view), view)
        device = self.clip.device
        # Its own generator: a loader draws a seed when iterated, and the global stream must not
        # depend on whether features came from the store or were computed.
        loader = torch.utils.data.DataLoader(_Checked(reader), batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.num_workers, pin_memory=device.type == "cuda",
                                             collate_fn=_collate_checked, generator=torch.Generator())
        batches = loader if self.progress is None else self.progress(loader, len(loader), desc)
        row = 0
        for x in batches:
            if isinstance(x, str):  # an image that cannot be decoded: its one-line message (from a worker too)
                raise ImageError(x)
            with autocast(device, precision=self.clip.precision):
                f = self.clip.encode_images(x.to(device, non_blocking=True))
            out[row: row + len(f)] = f.float().cpu().numpy()
            row += len(f)
