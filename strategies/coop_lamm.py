"""CoOp + LAMM: CoOp's shared context and LAMM's per-class label vectors train together under LAMM's
hierarchical loss -- the combination the LAMM paper reports best (DESIGN section 3).

t0 (the target of the feature and logits terms) is the prompt with the *current* context and CLIP's own
name embeddings, encoded afresh every step. As in the reference (gaojingsheng/LAMM trainers/coop.py,
CustomCLIP._get_origin_feature, called without no_grad) it keeps its gradient: the logits term sends
gradient into the context through z0, and only the feature term detaches t0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.registry import register_strategy
from lamm_cl.strategies.coop import CoopOptions, context_plugins, shared_context
from lamm_cl.strategies.lamm import LammOptions, LammTemplate, lamm_model
from lamm_cl.training import StrategyContext, sgd


@dataclass
class CoopLammOptions(LammOptions, CoopOptions):
    """LAMM's options (label_tokens, label_init, softmax, loss) plus CoOp's (n_ctx, ctx_init, freeze_after_first).

    ``validate`` runs LAMM's checks, then CoOp's, then the base ones (which check the plugins).
    """


@register_strategy("coop_lamm", options=CoopLammOptions)
def build(ctx: StrategyContext, opts: CoopLammOptions) -> SupervisedTemplate:
    """CoOp+LAMM: trains the shared context and the current classes' label vectors under LAMM's loss."""
    model = lamm_model(ctx, opts, context=shared_context(ctx, opts, "coop_lamm"))
    optimizer = sgd([torch.nn.Parameter(torch.zeros(0))], opts)  # Avalanche refills it with the model's parameters
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(context_plugins(opts, optimizer))
    return LammTemplate(model=model, optimizer=optimizer, weights=opts.weights(ctx.shots),
                        softmax=opts.softmax, **kw)
