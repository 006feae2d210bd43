"""LAMM (arXiv 2312.08212): trainable label vectors in place of each class name, held close to CLIP
by the hierarchical loss; each experience appends vectors for its classes and freezes the earlier ones."""
from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.lamm import LammTemplate, lamm_model
from lamm_cl.strategy_kit.options import LammPromptOptions
from lamm_cl.strategy_kit.recipe import lr_schedule_plugin, placeholder_params, sgd


@register_strategy("lamm", options=LammPromptOptions, scores_unseen=True)
def build(ctx: StrategyContext, opts: LammPromptOptions) -> SupervisedTemplate:
    """LAMM: trains the label vectors of the current classes; CLIP and the prompt stay frozen."""
    model = lamm_model(ctx, opts)
    optimizer = sgd(placeholder_params(), opts)
    kw = ctx.template_kwargs(opts)
    kw["plugins"].append(lr_schedule_plugin(optimizer, opts.epochs, opts.lr))
    return LammTemplate(model=model, optimizer=optimizer, weights=opts.weights(ctx.shots, ctx.n_experiences),
                        softmax=opts.softmax, **kw)
