"""Augmented training views: CoOp's crop and flip drawn from a seed, and which view each epoch reads.

``features.train_views: V`` adds V augmented views of every training image
(CoOp's random resized crop + horizontal flip), each seeded by (view, the image's
index in its split) so that a view is the same in every run, whichever other
images are extracted beside it, and can be cached like the centre crop.
During training one view is drawn per epoch from the run's seed
(:func:`draw_view`), through a small shared :class:`ViewSchedule` that a
plugin (:class:`TrainViewPlugin`) sets before each epoch.
"""
from __future__ import annotations

import numpy as np
import torch

from avalanche.training.plugins import SupervisedPlugin

from lamm_cl.data.base import Samples
from lamm_cl.model.clip import FrozenCLIP


class AugmentedView:
    """CoOp's training augmentation -- random resized crop (scale 0.08-1, bicubic) and a horizontal
    flip, then CLIP's normalisation -- drawn from a seed, so ``(image, seed)`` always gives the same view.

    Args:
        size: output side in pixels (the model's input size).
        mean, std: CLIP's normalisation.
        scale: the crop's area range, as CoOp's ``RRCROP_SCALE``.
    """

    def __init__(self, size: int, mean, std, scale: tuple[float, float] = (0.08, 1.0)):
        from torchvision import transforms as T

        self.crop = T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)
        self.flip = T.RandomHorizontalFlip()
        self.tail = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    @classmethod
    def for_clip(cls, clip: FrozenCLIP) -> "AugmentedView":
        """The augmentation at ``clip``'s input size with the normalisation of its own preprocessing."""
        from torchvision import transforms as T

        norm = next((t for t in getattr(clip.preprocess, "transforms", []) if isinstance(t, T.Normalize)), None)
        if norm is None:
            raise ValueError("the model's preprocessing has no Normalize step to copy for augmented views")
        return cls(clip.image_size, norm.mean, norm.std)

    def __call__(self, image, seed: int) -> torch.Tensor:
        # torchvision draws crop and flip from the global RNG; fork it so the caller's stream is untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.tail(self.flip(self.crop(image)))

    def __repr__(self) -> str:
        return f"AugmentedView(seed=(view, index), crop={self.crop!r}, flip={self.flip!r}, tail={self.tail!r})"


def view_seed(view: int, index: int) -> int:
    """The seed of view ``view`` of the image at ``index`` in its split: fixed, so a view is the same in
    every run and in every subset that holds the image (a seed's few-shot draw, alone or beside others).

    Store keys name views by index only: changing this function means bumping :data:`lamm_cl.features.extractor.STORE_FORMAT`.
    """
    return int(np.random.SeedSequence([view, index]).generate_state(1)[0])


class ViewReader(torch.utils.data.Dataset):
    """``samples[i]`` as augmented view ``view`` (see :class:`AugmentedView`), seeded by the image's index
    in its split (``samples.index[i]``), not by its position in ``samples``."""

    def __init__(self, samples: Samples, augment: AugmentedView, view: int):
        self.samples = samples
        self.augment = augment
        self.view = view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.augment(self.samples.image(i), view_seed(self.view, int(self.samples.index[i])))


# ---------------------------------------------------------------------------
# training views, one per epoch
# ---------------------------------------------------------------------------

def draw_view(seed: int, experience: int, epoch: int, n_views: int) -> int:
    """The augmented view used in ``epoch`` of ``experience``: every view once per V epochs,
    in an order drawn from the run's seed (so consecutive epochs differ when V > 1)."""
    cycle, pos = divmod(epoch, n_views)
    order = np.random.default_rng([seed % 2**32, experience, cycle]).permutation(n_views)
    return int(order[pos])


class ViewSchedule:
    """Which augmented view training reads now; shared by the training reader and its plugin."""

    def __init__(self):
        self.view = 0


class TrainViewPlugin(SupervisedPlugin):
    """Before each training epoch, point the shared :class:`ViewSchedule` at that epoch's view."""

    def __init__(self, schedule: ViewSchedule, n_views: int, seed: int):
        super().__init__()
        self.schedule = schedule
        self.n_views = n_views
        self.seed = seed

    def before_training_epoch(self, strategy, **kwargs):
        self.schedule.view = draw_view(self.seed, strategy.experience.current_experience,
                                       strategy.clock.train_exp_epochs, self.n_views)
