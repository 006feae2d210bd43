"""MaPLe (Khattak et al., CVPR 2023, "MaPLe: Multi-modal Prompt Learning"): a learnable context at the text
input plus learnable text prompts at the next ``prompt_depth - 1`` layers, each coupled to the image tower by
its own ``Linear(text width -> vision width)`` that makes the vision prompt of the same layer. Both towers
stay frozen (lamm_cl.model.deep_prompts places the prompts exactly as MaPLe's code does).

Class-incrementally the shared prompts and couplings keep training on every experience, like CoOp's
context (``freeze_after_first: true`` stops them after the first). The vision prompts change the image
features, so this strategy reads images every step: no feature cache. With ``features.train_views > 0``
training reads each epoch's random resized crop + flip, as Dassl's TRANSFORMS (centre crop otherwise).

What trains is what MaPLe's ``build_model`` leaves trainable (muzairkhattak/multimodal-prompt-learning
trainers/maple.py:231-239: every parameter named ``prompt_learner``): the context, the deeper text
prompts and all couplings; the loss is cross-entropy of ``exp(logit_scale) * f t^T`` (:189-202).
Optimiser and schedule: Dassl's SGD (momentum 0.9, weight decay 5e-4, every parameter of the model
given, :253) with the config's warm-up + cosine (:254; see lamm_cl.strategy_kit.recipe.warmup_cosine).

Deliberate deviations from the reference (beside those in lamm_cl.model.deep_prompts):

* ``ctx_init`` with ``n_ctx > 4``: MaPLe ignores the words and draws a random context with "X"
  placeholders (trainers/maple.py:84 ``if ctx_init and (n_ctx) <= 4``); LAMM's copy of the trainer
  drops that condition (gaojingsheng/LAMM trainers/maple.py:103) and so does lamm-cl: the words are
  used whenever they are at least ``n_ctx`` tokens.
* ``ctx_init`` shorter than ``n_ctx`` tokens: the reference would slice EOT and name embeddings into
  the context (``embedding[0, 1: 1 + n_ctx]``, :91); here it is a config error.
* class-incrementally the warm-up + cosine schedule restarts at every experience while SGD's
  momentum carries over (Avalanche keeps the optimiser's state); the reference trains one task.
"""
from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from lamm_cl.model.deep_prompts import MapleClassifier
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import MapleOptions
from lamm_cl.strategy_kit.prompt_learning import MapleTemplate, maple_prompts, prompt_plugins
from lamm_cl.strategy_kit.recipe import placeholder_params, sgd


@register_strategy("maple", options=MapleOptions, inputs="images")
def build(ctx: StrategyContext, opts: MapleOptions) -> SupervisedTemplate:
    """MaPLe: trains deep text prompts coupled to vision prompts on every experience; reads images (no feature cache)."""
    prompts, learner = maple_prompts(ctx, opts)
    model = MapleClassifier(ctx.clip, prompts, learner)
    optimizer = sgd(placeholder_params(), opts)
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(prompt_plugins(opts, optimizer, "learner"))
    return MapleTemplate(model=model, optimizer=optimizer, **kw)
