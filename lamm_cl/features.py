"""Frozen image features, computed once and shared by every frozen-encoder strategy and seed.

Within a process the features of a (weights, images, transform) key are kept in
memory; DESIGN section 7's on-disk store builds on the same key.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Optional

import torch

from lamm_cl.data.base import Samples
from lamm_cl.model.clip import FrozenCLIP


def transform_identity(transform: Callable) -> str:
    """A string naming a torchvision transform pipeline by its parameters."""
    return hashlib.sha1(repr(transform).encode()).hexdigest()[:16]


class ImageReader(torch.utils.data.Dataset):
    """``samples[i]`` as a preprocessed image tensor."""

    def __init__(self, samples: Samples, transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.samples.image(i))


class FeatureExtractor:
    """Image features of whole sample sets, computed in batches and memoised by key.

    Args:
        clip: the frozen CLIP.
        batch_size: images per encoder call.
        progress: a ``(iterable, total, desc) -> iterable`` wrapper for progress bars, or None.
    """

    def __init__(self, clip: FrozenCLIP, batch_size: int = 256,
                 progress: Optional[Callable] = None):
        self.clip = clip
        self.batch_size = batch_size
        self.progress = progress
        self._memo: dict[str, torch.Tensor] = {}

    def key(self, samples: Samples, view: str = "center") -> str:
        return "|".join([self.clip.identity, samples.identity, transform_identity(self.clip.preprocess), view])

    @torch.no_grad()
    def features(self, samples: Samples, desc: str = "features") -> torch.Tensor:
        """``[N, D]`` float32 CPU tensor of centre-crop image features (not normalised)."""
        k = self.key(samples)
        if k not in self._memo:
            self._memo[k] = self._extract(samples, desc)
        return self._memo[k]

    def _extract(self, samples: Samples, desc: str) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ImageReader(samples, self.clip.preprocess),
                                             batch_size=self.batch_size, shuffle=False)
        batches = loader if self.progress is None else self.progress(loader, len(loader), desc)
        out = [self.clip.encode_images(x).float().cpu() for x in batches]
        if not out:
            return torch.empty(0, self.clip.embed_dim)
        return torch.cat(out)
