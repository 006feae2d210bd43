"""A run's inputs, prepared once and shared by every strategy and seed: the dataset, each seed's
plan, the frozen CLIP, and :class:`Inputs`, which hands each strategy the readers of its samples
(cached features or preprocessed images, centre crop or the epoch's augmented view)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch

from lamm_cl.benchmark import Plan
from lamm_cl.config import Config
from lamm_cl.data.base import DatasetParts
from lamm_cl.features import (AugmentedView, AutocastPlugin, FeatureExtractor, ImageReader, TrainViewPlugin,
                              ViewSchedule, view_seed)
from lamm_cl.model.clip import FrozenCLIP, build_clip
from lamm_cl.runner.progress import progress_bar
from lamm_cl.data.targets import load_targets
from lamm_cl.runner.validate import check_templates
from lamm_cl.sequence import load_benchmark, member_samples, plan_for


@dataclass
class Inputs:
    """How a strategy reads samples: cached features, or preprocessed images.

    Features come from the shared extractor (and its on-disk store). With
    ``train_views > 0`` a "features" strategy trains on augmented views: the
    training reader returns the view that :meth:`plugins`' view plugin picked
    for the current epoch (each view extracted the first time it is drawn).
    Test features are always the centre crop. An "images" strategy with ``train_views > 0``
    trains on the same per-epoch view, augmented from the image at each read (nothing cached).
    """

    parts: DatasetParts
    clip: FrozenCLIP
    extractor: FeatureExtractor
    train_views: int = 0  # augmented views per training image; 0: centre crop only
    # few-shot: the sorted training indices a seed draws; augmented views are made of these only
    # (the centre crop still covers the whole split, so it stays shared between runs and shot counts)
    views_of: Optional[np.ndarray] = None
    schedule: ViewSchedule = field(default_factory=ViewSchedule)
    targets: list = field(default_factory=list)  # benchmark.evaluate_on, loaded (lamm_cl.runner.targets.Target)
    _feats: dict = field(default_factory=dict)

    def features(self, split: str, view: Optional[int] = None) -> torch.Tensor:
        """The image features of ``split`` (``"train"`` or ``"test"``): the centre crop, or augmented
        view ``view`` (of :attr:`views_of` only, when set); extracted on first use."""
        if (split, view) not in self._feats:
            samples = self.parts.train if split == "train" else self.parts.test
            if view is not None and self.views_of is not None:
                samples = samples.subset(self.views_of)
            desc = f"{split} image features" + ("" if view is None else f" (view {view})")
            members = member_samples(samples)
            if members is None:
                self._feats[split, view] = self.extractor.features(samples, view=view, desc=desc)
            else:  # a sequence: each dataset's features under the key a split benchmark of it uses
                self._feats[split, view] = torch.cat([self.extractor.features(m, view=view, desc=f"{name} {desc}")
                                                      for name, m in zip(samples.names, members)])
        return self._feats[split, view]

    def views_for(self, views_of: Optional[np.ndarray]) -> "Inputs":
        """These inputs with augmented views made of ``views_of`` only (one seed's few-shot draw, from
        :func:`few_shot_images`), sharing the dataset, CLIP and the extractor (so the centre crop is
        extracted once for every seed).

        One entry per seed, not one over every seed's draw: a view's features then come from the same
        encoder batches whichever other seeds the config lists, so a seed's result does not depend on them.
        """
        kept = {k: v for k, v in self._feats.items() if k[1] is None}
        return replace(self, views_of=views_of, schedule=ViewSchedule(), _feats=kept)

    def _view_rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows of the view features that hold training images ``idx``."""
        if self.views_of is None:
            return idx
        rows = np.searchsorted(self.views_of, idx)
        if np.any(rows >= len(self.views_of)) or np.any(self.views_of[np.minimum(rows, len(self.views_of) - 1)] != idx):
            raise ValueError("a training image outside Inputs.views_of was asked for")
        return rows

    def reader(self, kind: str, split: str, views: bool = True):
        """``(experience, indices) -> (i -> tensor)`` for :func:`make_streams`.

        ``views=False``: training features are the centre crop even when ``train_views > 0``.
        """
        if kind == "features" and split == "train" and self.train_views > 0 and views:
            at = self.features  # the view is looked up per item: it changes between epochs
            dt = self.clip.dtype  # float16 with model.precision fp16: features held as the reference holds them
            return lambda t, idx: (lambda i, r=self._view_rows(idx): at("train", self.schedule.view)[r[i]].to(dt))
        if kind == "features":
            feats, dt = self.features(split), self.clip.dtype
            return lambda t, idx: (lambda i, idx=idx: feats[idx[i]].to(dt))
        samples = self.parts.train if split == "train" else self.parts.test
        if split == "train" and self.train_views > 0:
            # An image strategy (maple, maple_lamm, finetune) trains on the epoch's augmented view made
            # afresh from the image, not on the centre crop: Dassl draws a random resized crop + flip at
            # every step (MaPLe's configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml:13, TRANSFORMS),
            # and each image is read once per epoch, so a new view per epoch is the same draw. The view
            # is looked up per item: it changes between epochs.
            augment, schedule, dt = AugmentedView.for_clip(self.clip), self.schedule, self.clip.dtype
            return lambda t, idx: (lambda i, idx=idx: augment(samples.image(int(idx[i])),
                                                              view_seed(schedule.view, int(idx[i]))).to(dt))
        images, dt = ImageReader(samples, self.clip.preprocess), self.clip.dtype  # the reference: image.type(dtype)
        return lambda t, idx: (lambda i, idx=idx: images[int(idx[i])].to(dt))

    def plugins(self, seed: int, views: bool = True) -> list:
        """Plugins a strategy run on these inputs needs: the per-epoch view choice (unless ``views`` is
        False: the strategy reads the centre crop), CUDA autocast."""
        out = []
        if self.train_views > 0 and views:
            out.append(TrainViewPlugin(self.schedule, self.train_views, seed))
        if self.clip.device.type == "cuda" and self.clip.precision == "bf16-autocast":
            out.append(AutocastPlugin(self.clip.device))
        return out


def few_shot_images(cfg: Config, plans: dict[int, Plan]) -> Optional[np.ndarray]:
    """The training images that any of ``plans`` draws (sorted), or None when not few-shot or without
    augmented views: with ``train_views`` V, only these get V views each, instead of every image of
    the split (16 shots x 1,000 classes instead of ImageNet's 1.28 M images). The runner asks for one
    seed's plan at a time (:meth:`Inputs.views_for`)."""
    if not cfg.benchmark.shots or cfg.features.train_views <= 0:
        return None
    return np.unique(np.concatenate([i for p in plans.values() for i in p.train_index]))


def prepare_inputs(cfg: Config, device: torch.device, progress: bool,
                   log: Callable[[str], None]) -> tuple[dict[int, Plan], Inputs]:
    """Load the dataset, make each seed's plan, build CLIP and check every prompt against its context.

    Returns:
        The plan of each seed of ``cfg``, and the inputs every strategy reads (before a seed's
        few-shot draw narrows its augmented views: :meth:`Inputs.views_for`).

    Raises:
        UserError: missing or bad data, a bad split, weights that do not load, a prompt too long.
    """
    parts = load_benchmark(cfg.benchmark)
    plans = {seed: plan_for(parts, cfg.benchmark, seed) for seed in cfg.seeds}  # fail on bad splits before any work
    targets = load_targets(cfg)  # a missing target fails here too, before any work
    clip = build_clip(cfg.model.arch, cfg.model.pretrained, device, cfg.model.precision)
    check_templates(cfg, plans, clip)
    extractor = FeatureExtractor.from_config(clip, cfg.features, progress=progress_bar if progress else None, log=log)
    return plans, Inputs(parts, clip, extractor, train_views=cfg.features.train_views, targets=targets)
