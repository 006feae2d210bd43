"""CoOp (Zhou et al., IJCV 2022): one shared context of n_ctx vectors in front of the fixed class names,
trained with cross-entropy over every class seen so far. The context keeps training on every experience,
so it drifts away from what earlier classes were learnt with: the forgetting this baseline shows."""
from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import CoopOptions
from lamm_cl.strategy_kit.prompt_learning import PromptTemplate, prompt_plugins, shared_context
from lamm_cl.strategy_kit.recipe import placeholder_params, sgd


@register_strategy("coop", options=CoopOptions)
def build(ctx: StrategyContext, opts: CoopOptions) -> SupervisedTemplate:
    """CoOp: trains one shared context (n_ctx vectors) in front of the fixed class names, on every experience."""
    prompts, context = shared_context(ctx, opts)
    model = PromptClassifier(ctx.clip, prompts, context=context)
    optimizer = sgd(placeholder_params(), opts)
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(prompt_plugins(opts, optimizer, "context"))
    return PromptTemplate(model=model, optimizer=optimizer, **kw)
