"""MaPLe + LAMM: MaPLe's deep multi-modal prompts and LAMM's per-class label vectors train together under
LAMM's hierarchical loss -- the third prompt family of the LAMM paper (reference: ``trainers/maple.py`` in
gaojingsheng/LAMM).

t0, the target of the feature and logits terms, is the same prompt through the same deep prompts with the
words in place of the label vectors; it is encoded in the same text pass as t and carries gradient into the
shared prompts (only the feature term detaches it), as the reference's ``_get_origin_feature`` does
(gaojingsheng/LAMM at d4e7d02, trainers/maple.py:304-309, ``forward_test`` :272-288, outside any
``no_grad``; line numbers below are of that copy).

The loss, with ``--triplet-loss`` as scripts/maple/base_train_maple_lamm_all.sh passes it
(trainers/maple.py:323-337): ``CE(z) + (1 / shots) * L_param + L_feat + 0.05 * L_logits`` where

* z = exp(logit_scale) f t^T and z0 = exp(logit_scale) f t0^T, with f the image feature through the
  same vision prompts (:313, :321, :328);
* L_logits = ``distillation(z, z0, T=2)`` (helpers.py ``distillation``: the LAMM logits z are the
  soft target and keep their gradient);
* L_feat = ``FeatureLoss`` (:67-86): mean of 1 - cos(t_y, stopgrad(t0_y)) over the samples whose
  batch holds another class;
* L_param = ``F.mse_loss(token_classes, fix_token, reduction="sum")`` (:333), the sum of squares;
  here over the trainable classes only -- the frozen classes' terms are constants;
* ``shots`` is train.py's ``--shots`` (default 1), which the MaPLe+LAMM script does not pass: lambda_p 1.

What trains (``build_model``, :369-377: every parameter named ``prompt_learner``): MaPLe's context, deeper prompts and
couplings, and the label vectors (``token_classes``, :198-201: the name's first BPE piece, or
N(0, 0.02^2) with ``--random-init``, which ``fix_token`` then anchors to, :202).

Two layouts:

* ``name`` (default): label vectors in place of the name's first k pieces, as ``lamm`` places them.
* ``reference``: what produced the published MaPLe+LAMM figure. The reference hard-codes k = 1
  (``self.min_len = 1``, :147) and builds ``[SOS] ctx [M_c] token_suffix`` (``construct_prompts_v2``,
  :229-248) with ``token_suffix = embedding[:, 1 + 1 + n_ctx:]`` (:172): with n_ctx 2 and
  "a photo of a", the label vector takes the place of the word "of" and the whole name follows
  ("a" name "."). Its t0 is the plain MaPLe
  prompt (``token_suffix_test = embedding[:, 1 + n_ctx:]``, :173), i.e. the word "of" back in that slot,
  while L_param still anchors M_c to the name's first piece.

Class-incrementally the shared prompts and couplings train on every experience (``freeze_after_first``
as in coop); each experience appends label vectors for its classes and freezes the earlier ones.
Reads images every step: no feature cache.
"""
from __future__ import annotations

from avalanche.training.templates import SupervisedTemplate

from lamm_cl.model.deep_prompts import MapleClassifier
from lamm_cl.model.labels import LabelTable
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.lamm import LammCriterion
from lamm_cl.strategy_kit.options import MapleLammOptions
from lamm_cl.strategy_kit.prompt_learning import MapleTemplate, maple_prompts, prompt_plugins
from lamm_cl.strategy_kit.recipe import placeholder_params, sgd


class MapleLammTemplate(LammCriterion, MapleTemplate):
    """MaPLe's template whose training criterion is the LAMM objective (plain CE in evaluation)."""


def maple_lamm_model(ctx: StrategyContext, opts: MapleLammOptions) -> MapleClassifier:
    """The MaPLe classifier with a growing label table in the chosen layout."""
    prompts, learner = maple_prompts(ctx, opts, "maple_lamm")
    k = 1 if opts.layout == "reference" else opts.label_tokens
    table = LabelTable(ctx.clip.model.token_embedding.weight, prompts, k, opts.label_init)
    model = MapleClassifier(ctx.clip, prompts, learner, labels=table, label_slot=opts.layout)
    model.keep_original = True
    return model


@register_strategy("maple_lamm", options=MapleLammOptions, inputs="images", scores_unseen=True)
def build(ctx: StrategyContext, opts: MapleLammOptions) -> SupervisedTemplate:
    """MaPLe+LAMM: trains MaPLe's prompts and the current classes' label vectors under LAMM's loss; reads images."""
    model = maple_lamm_model(ctx, opts)
    optimizer = sgd(placeholder_params(), opts)
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(prompt_plugins(opts, optimizer, "learner"))
    return MapleLammTemplate(model=model, optimizer=optimizer, weights=opts.weights(ctx.shots, ctx.n_experiences),
                             softmax=opts.softmax, **kw)
