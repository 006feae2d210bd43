"""SimpleCIL: the prototype classifier on frozen image features.

Zhou, Cai, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", IJCV 2024 (arXiv 2303.07338); reference code
sun-hailong/LAMDA-PILOT ``models/simplecil.py`` (cited @3450184; ``backbone/linears.py`` @087e730).
Each class's prototype is the mean of its frozen image features over its training images
(``simplecil.py:48``, ``proto = embedding.mean(0)``); a test feature is scored by its cosine to every
prototype (PILOT's ``SimpleVitNet`` head is a ``CosineLinear`` that normalises both sides,
``linears.py:56``). Nothing is trained: one pass over each experience fills in the prototypes of its
classes, and those of earlier classes never change.

As in the reference (``replace_fc``, ``simplecil.py:27-50``), the prototype is the mean of the *raw*
features (not of normalised ones) and the pass reads the un-augmented view: PILOT builds the
prototypes from ``train_dataset_for_protonet`` (``simplecil.py:66-67``, ``mode="test"``), so this
strategy is registered with ``augmented_views=False`` and reads the centre crop even when
``features.train_views > 0`` (more epochs then only repeat the same pass: the means do not change).
The reference's ``CosineLinear`` multiplies the cosines by a learnable scale that SimpleCIL never
trains (it stays 1, ``linears.py:53``); here the scores are the cosines themselves. Deviation: the
features are CLIP's projected image embeddings from the shared feature store (PILOT's SimpleCIL runs
a timm ViT's pooled features).
"""
from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.model.clip import normalize
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import SimpleCILOptions
from lamm_cl.strategy_kit.recipe import idle_optimizer
from lamm_cl.strategy_kit.statistics import SeenClasses, StatisticsTemplate


class Prototypes(SeenClasses):
    """Per-class sums and counts of raw image features; scores are cosines to the class means.

    Args:
        n_classes: classes in the whole benchmark (buffers are sized for all of them up front, so a
            checkpoint's state fits a freshly built model).
        dim: feature width.
    """

    def __init__(self, n_classes: int, dim: int):
        super().__init__(n_classes)
        self.register_buffer("sums", torch.zeros(n_classes, dim, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n_classes, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of features ``x [B, dim]`` with labels ``y [B]`` to their classes' sums."""
        # float64 sums: a class mean over thousands of images does not drift with the batch order
        self.sums.index_add_(0, y, x.detach().to(self.sums.dtype))
        self.counts.index_add_(0, y, torch.ones(len(y), dtype=self.counts.dtype, device=y.device))

    @property
    def prototypes(self) -> torch.Tensor:
        """``[n_classes, dim]`` class means (zero rows for classes with no sample yet)."""
        return (self.sums / self.counts.clamp(min=1).unsqueeze(1)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = normalize(x.float()) @ normalize(self.prototypes).t()
        return self.restrict(scores)


@register_strategy("simplecil", options=SimpleCILOptions, augmented_views=False, trains=False)  # PILOT: mode="test" loader
def build(ctx: StrategyContext, opts: SimpleCILOptions) -> SupervisedTemplate:
    """SimpleCIL (Zhou et al., IJCV 2024): cosine to each class's mean frozen image feature; trains nothing."""
    model = Prototypes(len(ctx.class_names), ctx.clip.embed_dim)
    return StatisticsTemplate(model=model, optimizer=idle_optimizer(), **ctx.template_kwargs(opts))
