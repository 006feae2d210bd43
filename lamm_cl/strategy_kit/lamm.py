"""LAMM for any prompt family: its options, its objective, and the templates that train with it.

:class:`LossOptions` are the loss weights; :class:`LammKeys` the keys every LAMM strategy shares
(mixed into a family's options, e.g. ``LammKeys`` + ``MapleOptions``); :class:`LammOptions` those keys
on their own. :func:`lamm_objective` is CE plus LAMM's three terms for a model with a label table,
CoOp's/LAMM's :class:`PromptClassifier` or MaPLe's classifier alike; :class:`LammCriterion` makes it a
template's training criterion (:class:`LammTemplate`: with Dassl's dropped last batch).
:func:`lamm_model` builds the LAMM classifier on cached features.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.errors import ConfigError
from lamm_cl.losses import LammWeights, lamm_loss
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.clip import normalize
from lamm_cl.model.labels import LabelTable
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import StrategyOptions
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.recipe import DropLastPartialBatch


@dataclass
class LossOptions:
    param: Union[float, Literal["auto"]] = "auto"  # lambda_p; auto: 1/shots when few-shot and incremental, else 1
    feature: float = 1.0  # lambda_f
    logits: float = 0.05  # lambda_l
    temperature: float = 2.0  # T of the logits term
    logits_kind: Literal["reference", "kl"] = "reference"  # reference: what LAMM's code computes; kl: standard KD

    def check(self, path: str) -> None:
        """Raise ConfigError for a non-positive temperature or a negative weight (``path``: the key's path)."""
        if self.temperature <= 0:
            raise ConfigError(f"{path}.temperature: expected a positive number, got {self.temperature}")
        for key in ("param", "feature", "logits"):
            v = getattr(self, key)
            if v != "auto" and v < 0:
                raise ConfigError(f"{path}.{key}: expected 0 or more, got {v}")

    def weights(self, shots: Optional[int], n_experiences: int = 1) -> LammWeights:
        """The loss weights, ``param: auto`` resolved as the reference's scripts set lambda_p.

        The reference weighs L_param by ``1 / args.shots`` (gaojingsheng/LAMM trainers/coop.py and
        trainers/maple.py), and ``--shots`` defaults to 1: its incremental (base -> new) scripts pass
        ``--shots 16`` (scripts/lamm/base2new_train_set*_lamm_all.sh), its few-shot scripts, one task
        of every class at 1 to 16 shots, pass none (scripts/lamm/base_train_lamm_all.sh). So ``auto`` is
        1/shots for a few-shot benchmark of more than one experience, and 1 otherwise (one experience,
        at any shot count, or the full training data).

        Args:
            shots: training images per class, or None for the full training data.
            n_experiences: the benchmark's number of experiences.
        """
        lp = self.param
        if lp == "auto":
            lp = 1.0 / shots if shots and n_experiences > 1 else 1.0
        return LammWeights(param=float(lp), feature=self.feature, logits=self.logits,
                           temperature=self.temperature, logits_kind=self.logits_kind)


@dataclass
class LammKeys:
    """The keys of every LAMM strategy, to mix in before a :class:`StrategyOptions` subclass (its keys come
    first, these after). The options class adds ``loss`` (a :class:`LossOptions`) after its own keys; a
    family may narrow ``label_tokens``'s choices by redeclaring it."""

    # vectors per class: shortest name length (of the benchmark | of the class's experience) | whole name | k
    label_tokens: Union[Literal["min", "min_experience", "all"], int] = "min"
    label_init: Literal["name", "random"] = "name"  # from the name's embeddings, or N(0, 0.02^2)
    softmax: Literal["seen", "current"] = "seen"  # training softmax over every seen class, or the current task's

    def check_label_tokens(self, path: str) -> None:
        """Raise ConfigError for a ``label_tokens`` below 1 (the message lists this class's named choices)."""
        if isinstance(self.label_tokens, int) and self.label_tokens < 1:
            named = typing.get_args(typing.get_args(typing.get_type_hints(type(self))["label_tokens"])[0])
            raise ConfigError(f"{path}.label_tokens: expected {', '.join(named)} or a positive integer, "
                              f"got {self.label_tokens}")

    def validate(self, path: str) -> None:
        super().validate(path)
        self.check_label_tokens(path)
        self.loss.check(f"{path}.loss")

    def weights(self, shots: Optional[int], n_experiences: int = 1) -> LammWeights:
        """Resolve ``auto`` (see :meth:`LossOptions.weights`) and return the loss weights."""
        return self.loss.weights(shots, n_experiences)


@dataclass
class LammOptions(LammKeys, StrategyOptions):
    """The options of LAMM on cached features: the base keys, :class:`LammKeys`, ``loss``."""

    loss: LossOptions = field(default_factory=LossOptions)


# LAMM's prompt: the reference trains every dataset on "a photo of a" + name + "." (CTX_INIT "a photo of a"
# in configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml, kept frozen by --origin-clip in scripts/lamm/*.sh;
# PromptLearner builds prompt_prefix + " " + name + "." in gaojingsheng/LAMM trainers/coop.py).
LAMM_TEMPLATE = "a photo of a {}."


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
