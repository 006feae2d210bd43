"""Linear probe: a growing linear head on CLIP's frozen image features -- the classic cheap baseline.

Features are L2-normalised, then standardised per dimension (MAE's BatchNorm probe): CLIP features share
a large common direction, and without standardisation a few epochs of Adam barely move the argmax.
Each experience appends one row per new class; every row keeps training on later experiences, so old
classes are forgotten unless a plugin (replay, LwF, EWC) holds them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from lamm_cl.model.clip import normalize
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.heads import GrowingHead
from lamm_cl.strategy_kit.options import LinearProbeOptions
from lamm_cl.strategy_kit.recipe import make_optimizer


class Standardize(nn.BatchNorm1d):
    """Per-dimension standardisation of features, as MAE's linear probe does (BatchNorm without affine).

    The statistics are a cumulative average over every training batch seen, in every experience
    (``momentum=None``), so they settle instead of following the latest experience. A training
    batch of one sample is standardised with the statistics so far (BatchNorm cannot use it).
    """

    def __init__(self, width: int):
        super().__init__(width, affine=False, momentum=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class LinearProbe(nn.Module):
    """Logits of cached image features: normalise, optionally standardise, then a :class:`GrowingHead` from zeros."""

    def __init__(self, in_features: int, standardize: bool = True):
        super().__init__()
        self.standardize = Standardize(in_features) if standardize else nn.Identity()
        self.head = GrowingHead(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardize(normalize(x.float())))


@register_strategy("linear_probe", options=LinearProbeOptions)
def build(ctx: StrategyContext, opts: LinearProbeOptions) -> SupervisedTemplate:
    """Linear probe: trains a growing linear head (one row per seen class) on frozen, standardised image features."""
    model = LinearProbe(ctx.clip.embed_dim, standardize=opts.standardize)
    optimizer = make_optimizer(opts.optimizer, opts.lr, opts.weight_decay)
    return SupervisedTemplate(model=model, optimizer=optimizer, **ctx.template_kwargs(opts))
