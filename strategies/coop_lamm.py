"""CoOp + LAMM: CoOp's shared context and LAMM's per-class label vectors train together under LAMM's
hierarchical loss -- the combination the LAMM paper reports best (DESIGN section 3).

t0 (the target of the feature and logits terms) is the prompt with the *current* context and CLIP's own
name embeddings, encoded afresh every step. As in the reference (gaojingsheng/LAMM trainers/coop.py,
CustomCLIP._get_origin_feature, called without no_grad) it keeps its gradient: the logits term sends
gradient into the context through z0, and only the feature term detaches t0.
"""
from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.lamm import LammTemplate, lamm_model
from lamm_cl.strategy_kit.options import CoopLammOptions
from lamm_cl.strategy_kit.prompt_learning import prompt_plugins, shared_context
from lamm_cl.strategy_kit.recipe import placeholder_params, sgd


@register_strategy("coop_lamm", options=CoopLammOptions, scores_unseen=True)
def build(ctx: StrategyContext, opts: CoopLammOptions) -> SupervisedTemplate:
    """CoOp+LAMM: trains the shared context and the current classes' label vectors under LAMM's loss."""
    model = lamm_model(ctx, opts, context=shared_context(ctx, opts, "coop_lamm"))
    optimizer = sgd(placeholder_params(), opts)
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(prompt_plugins(opts, optimizer, "context"))
    return LammTemplate(model=model, optimizer=optimizer, weights=opts.weights(ctx.shots, ctx.n_experiences),
                        softmax=opts.softmax, **kw)
