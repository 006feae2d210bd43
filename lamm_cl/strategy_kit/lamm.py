"""LAMM for any prompt family: its options, its objective, and the templates that train with it.

:class:`LossOptions` are the loss weights; :class:`LammKeys` the keys every LAMM strategy shares
(mixed into a family's options, e.g. ``LammKeys`` + ``MapleOptions``); :class:`LammOptions` those keys
on their own. :func:`lamm_objective` is CE plus LAMM's three terms for a model with a label table,
CoOp's/LAMM's :class:`PromptClassifier` or MaPLe's classifier alike; :class:`LammCriterion` makes it a
template's training criterion (:class:`LammTemplate`: with Dassl's dropped last batch).
:func:`lamm_model` builds the LAMM classifier on cached features.
"""
from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.losses import LammWeights, lamm_loss
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.clip import normalize
from lamm_cl.model.labels import LabelTable
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import LAMM_TEMPLATE, LammOptions
from lamm_cl.strategy_kit.recipe import DropLastPartialBatch


def lamm_template(ctx: StrategyContext, opts: LammOptions) -> str:
    """The prompt LAMM's label vectors are trained in: ``opts.template``, where ``dataset`` means the
    benchmark's own template (``ctx.template``); options without the key get :data:`LAMM_TEMPLATE`."""
    template = getattr(opts, "template", LAMM_TEMPLATE)
    return ctx.template if template == "dataset" else template


def lamm_objective(model: torch.nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                   weights: LammWeights, softmax: str = "seen"):
    """CE + the three LAMM terms for one batch, given the model's forward output ``logits`` on ``x``.

    The softmax runs over every class the model knows (``seen``) or over the current
    experience's classes plus any class present in the batch (``current``).

    t0 (the prompts with the words in place of the label vectors) and the image features come
    from the model in either of two ways: a model that encodes t0 in its forward pass leaves it in
    ``last_original`` beside its image features ``last_image`` (MaPLe's deep prompts); otherwise
    ``x`` are image features and t0 comes from ``model.original_text_features`` (CoOp and LAMM
    prompts, :class:`PromptClassifier`).

    Returns:
        ``(loss, parts)`` as :func:`lamm_cl.losses.lamm_loss` does.
    """
    table = model.labels
    classes = list(model.classes)
    if softmax == "current":
        keep = set(table.trainable) | {int(c) for c in y.unique()}
        classes = [c for c in classes if c in keep]
    col = {c: i for i, c in enumerate(model.classes)}
    cols = torch.tensor([col[c] for c in classes], device=logits.device)
    z = logits[:, cols]
    pos = torch.full((max(model.classes) + 1,), -1, dtype=torch.long, device=y.device)
    pos[torch.tensor(classes, device=y.device)] = torch.arange(len(classes), device=y.device)
    target = pos[y]
    if getattr(model, "last_original", None) is not None:
        t0, f = model.last_original[cols], model.last_image
    else:
        t0 = model.original_text_features(classes)
        f = normalize(x.to(t0.dtype))
    z0 = model.logit_scale * f @ t0.t()
    t = model.last_text[cols]
    # the anchor: M0, or with label_init random the random start (LAMM trainers/maple.py:198-202 copies
    # fix_token after normal_)
    pairs = [(table.vectors[str(c)], table.anchor(c)) for c in table.trainable]
    return lamm_loss(z, z0, target, t[target], t0[target], pairs, weights)


class LammCriterion:
    """Template mixin: the LAMM objective (:func:`lamm_objective`) is the criterion in training, plain CE
    in evaluation; the last loss terms stay in ``loss_parts``. Put it before the Avalanche template in
    the bases."""

    def __init__(self, *, weights: LammWeights, softmax: str = "seen", **kwargs):
        super().__init__(**kwargs)
        self.weights = weights
        self.softmax = softmax
        self.loss_parts: dict[str, float] = {}

    def criterion(self):
        if not self.is_training:
            return torch.nn.functional.cross_entropy(self.mb_output, self.mb_y)
        loss, self.loss_parts = lamm_objective(self.model, self.mb_x, self.mb_output, self.mb_y, self.weights,
                                               self.softmax)
        return loss


class LammTemplate(LammCriterion, DropLastPartialBatch, SupervisedTemplate):
    """A SupervisedTemplate whose criterion is the LAMM objective during training (plain CE in eval);
    the last partial training batch is dropped as Dassl does (:class:`DropLastPartialBatch`)."""


def lamm_model(ctx: StrategyContext, opts: LammOptions, context=None) -> PromptClassifier:
    """The LAMM classifier: LAMM's prompts (:func:`lamm_template`), or a shared context's, with a growing
    label table."""
    prompts = ClassPrompts(ctx.clip, ctx.class_names, lamm_template(ctx, opts)) if context is None else context[0]
    table = LabelTable(ctx.clip.model.token_embedding.weight, prompts, opts.label_tokens, opts.label_init)
    return PromptClassifier(ctx.clip, prompts, labels=table, context=None if context is None else context[1])
