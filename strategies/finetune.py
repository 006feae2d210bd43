"""Fine-tuning: CLIP's image encoder trains end to end (all of it, or its last N blocks) under a linear
head started from the seen classes' zero-shot text features -- the catastrophic-forgetting baseline.

The runner shares one frozen CLIP across strategies and seeds (and caches image features from it),
so this strategy trains a deep copy of the image tower; the shared model is never touched.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from lamm_cl.errors import ConfigError
from lamm_cl.model.clip import normalize
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.heads import GrowingHead
from lamm_cl.strategy_kit.options import FinetuneOptions
from lamm_cl.strategy_kit.recipe import lr_schedule_plugin, make_optimizer

# parts of an open_clip VisionTransformer after its blocks; they train with the last blocks
_VIT_TAIL = ("attn_pool", "ln_post", "proj")


def trainable_encoder(visual: nn.Module, last_blocks: Optional[int]) -> nn.Module:
    """A deep copy of ``visual`` with the parameters to fine-tune set trainable.

    Args:
        visual: the shared CLIP's image tower (left untouched).
        last_blocks: None trains every parameter; N trains only the last N transformer
            blocks and what follows them (``ln_post``, ``proj``, any attention pool).
    Raises:
        ConfigError: ``last_blocks`` on an encoder without transformer blocks, or more blocks than it has.
    """
    encoder = copy.deepcopy(visual)
    if last_blocks is None:
        encoder.requires_grad_(True)
        return encoder
    blocks = getattr(getattr(encoder, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ConfigError(f"finetune.last_blocks: the image encoder ({type(visual).__name__}) has no "
                          "transformer blocks; use trainable: all")
    if last_blocks > len(blocks):
        raise ConfigError(f"finetune.last_blocks: {last_blocks} asked, the image encoder has {len(blocks)} blocks")
    encoder.requires_grad_(False)
    for block in list(blocks)[len(blocks) - last_blocks:]:
        block.requires_grad_(True)
    for name in _VIT_TAIL:
        part = getattr(encoder, name, None)  # a module, a parameter (proj), or absent
        if part is not None:
            part.requires_grad_(True)
    return encoder


def zeroshot_rows(ctx: StrategyContext) -> torch.Tensor:
    """``[C, D]`` CLIP's zero-shot classifier for every class: normalised text features of the
    benchmark's prompts times the logit scale, so that ``normalize(f) @ rows.T`` are CLIP's logits."""
    prompts = [ctx.template.format(name) for name in ctx.class_names]
    return normalize(ctx.clip.encode_text(prompts)).float() * ctx.clip.logit_scale


class FinetunedCLIP(nn.Module):
    """Logits of images: a trainable image encoder, normalised, under a growing linear head.

    The head's rows start at CLIP's zero-shot classifier (normalised text feature times the
    logit scale), so before any step the model predicts exactly as zero-shot CLIP does.
    """

    def __init__(self, encoder: nn.Module, zeroshot: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.head = GrowingHead(zeroshot.shape[1], init=zeroshot)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(normalize(self.encoder(images).float()))


@register_strategy("finetune", options=FinetuneOptions, inputs="images")
def build(ctx: StrategyContext, opts: FinetuneOptions) -> SupervisedTemplate:
    """Fine-tuning: trains CLIP's image encoder (all, or the last N blocks) and a text-initialised growing head."""
    model = FinetunedCLIP(trainable_encoder(ctx.clip.model.visual, opts.last_blocks), zeroshot_rows(ctx))
    optimizer = make_optimizer("adamw", opts.lr, opts.weight_decay)
    kw = ctx.template_kwargs(opts)
    kw["plugins"].append(lr_schedule_plugin(optimizer, opts.epochs, opts.lr))
    return SupervisedTemplate(model=model, optimizer=optimizer, **kw)
