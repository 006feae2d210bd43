"""LAMM (arXiv 2312.08212): trainable label vectors in place of each class name, held close to CLIP
by the hierarchical loss; each experience appends vectors for its classes and freezes the earlier ones."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.errors import ConfigError
from lamm_cl.losses import LammWeights, lamm_loss
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.labels import LabelTable
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import StrategyOptions, register_strategy
from lamm_cl.training import DropLastPartialBatch, StrategyContext, lr_schedule_plugin, sgd


@dataclass
class LossOptions:
    param: Union[float, Literal["auto"]] = "auto"  # lambda_p; auto: 1/shots when few-shot, else 1
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

    def weights(self, shots: Optional[int]) -> LammWeights:
        """The loss weights, ``param: auto`` resolved to 1/shots when few-shot, else 1."""
        lp = self.param
        if lp == "auto":
            lp = 1.0 / shots if shots else 1.0
        return LammWeights(param=float(lp), feature=self.feature, logits=self.logits,
                           temperature=self.temperature, logits_kind=self.logits_kind)


@dataclass
class LammOptions(StrategyOptions):
    # vectors per class: shortest name length (of the benchmark | of the class's experience) | whole name | k
    label_tokens: Union[Literal["min", "min_experience", "all"], int] = "min"
    label_init: Literal["name", "random"] = "name"  # from the name's embeddings, or N(0, 0.02^2)
    softmax: Literal["seen", "current"] = "seen"  # training softmax over every seen class, or the current task's
    loss: LossOptions = field(default_factory=LossOptions)

    def validate(self, path: str) -> None:
        super().validate(path)
        if isinstance(self.label_tokens, int) and self.label_tokens < 1:
            raise ConfigError(f"{path}.label_tokens: expected min, min_experience, all or a positive integer, "
                              f"got {self.label_tokens}")
        self.loss.check(f"{path}.loss")

    def weights(self, shots: Optional[int]) -> LammWeights:
        """Resolve ``auto`` and return the loss weights."""
        return self.loss.weights(shots)


# LAMM's prompt: the reference trains every dataset on "a photo of a" + name + "." (CTX_INIT "a photo of a"
# in configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml, kept frozen by --origin-clip in scripts/lamm/*.sh;
# PromptLearner builds prompt_prefix + " " + name + "." in gaojingsheng/LAMM trainers/coop.py).
LAMM_TEMPLATE = "a photo of a {}."


@dataclass
class LammPromptOptions(LammOptions):
    """LAMM's options plus the prompt its label vectors sit in (the ``lamm`` strategy's keys)."""

    template: str = LAMM_TEMPLATE  # LAMM's prompt for every dataset; `dataset`: the benchmark's own template

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.template != "dataset" and self.template.count("{}") != 1:
            raise ConfigError(f"{path}.template: expected a prompt with exactly one {{}} (e.g. "
                              f"{LAMM_TEMPLATE!r}) or dataset, got {self.template!r}")


def lamm_template(ctx: StrategyContext, opts: LammOptions) -> str:
    """The prompt LAMM's label vectors are trained in: ``opts.template``, where ``dataset`` means the
    benchmark's own template (``ctx.template``); options without the key get :data:`LAMM_TEMPLATE`."""
    template = getattr(opts, "template", LAMM_TEMPLATE)
    return ctx.template if template == "dataset" else template


class LammCriterion:
    """Template mixin: the LAMM objective is the criterion in training, plain CE in evaluation. A
    template gives :meth:`objective` (its model's LAMM loss on the current minibatch); the last
    loss terms stay in ``loss_parts``. Put it before the Avalanche template in the bases."""

    def __init__(self, *, weights: LammWeights, softmax: str = "seen", **kwargs):
        super().__init__(**kwargs)
        self.weights = weights
        self.softmax = softmax
        self.loss_parts: dict[str, float] = {}

    def objective(self) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def criterion(self):
        if not self.is_training:
            return torch.nn.functional.cross_entropy(self.mb_output, self.mb_y)
        loss, self.loss_parts = self.objective()
        return loss


class LammTemplate(LammCriterion, DropLastPartialBatch, SupervisedTemplate):
    """A SupervisedTemplate whose criterion is the LAMM objective during training (plain CE in eval);
    the last partial training batch is dropped as Dassl does (:class:`DropLastPartialBatch`)."""

    def objective(self) -> tuple[torch.Tensor, dict[str, float]]:
        return lamm_objective(self.model, self.mb_x, self.mb_output, self.mb_y, self.weights, self.softmax)


def lamm_objective(model: PromptClassifier, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                   weights: LammWeights, softmax: str = "seen"):
    """CE + the three LAMM terms for one batch, given the model's forward output on ``x``.

    The softmax runs over every class the model knows (``seen``) or over the current
    experience's classes plus any class present in the batch (``current``).
    """
    table = model.labels
    classes = list(model.classes)
    if softmax == "current":
        keep = set(table.trainable) | set(int(c) for c in y.unique())
        classes = [c for c in classes if c in keep]
    col = {c: i for i, c in enumerate(model.classes)}
    cols = torch.tensor([col[c] for c in classes], device=logits.device)
    z = logits[:, cols]
    pos = torch.full((max(model.classes) + 1,), -1, dtype=torch.long, device=y.device)
    pos[torch.tensor(classes, device=y.device)] = torch.arange(len(classes), device=y.device)
    target = pos[y]
    t0 = model.original_text_features(classes)
    f = torch.nn.functional.normalize(x.to(t0.dtype), dim=-1)
    z0 = model.logit_scale * f @ t0.t()
    t = model.last_text[cols]
    pairs = [(table.vectors[str(c)], table.anchor(c)) for c in table.trainable]  # M0 or the random start
    return lamm_loss(z, z0, target, t[target], t0[target], pairs, weights)


def lamm_model(ctx: StrategyContext, opts: LammOptions, context=None) -> PromptClassifier:
    """The LAMM classifier: LAMM's prompts (:func:`lamm_template`), or a shared context's, with a growing
    label table."""
    prompts = ClassPrompts(ctx.clip, ctx.class_names, lamm_template(ctx, opts)) if context is None else context[0]
    table = LabelTable(ctx.clip.model.token_embedding.weight, prompts, opts.label_tokens, opts.label_init)
    return PromptClassifier(ctx.clip, prompts, labels=table, context=None if context is None else context[1])


@register_strategy("lamm", options=LammPromptOptions)
def build(ctx: StrategyContext, opts: LammPromptOptions) -> SupervisedTemplate:
    """LAMM: trains the label vectors of the current classes; CLIP and the prompt stay frozen."""
    model = lamm_model(ctx, opts)
    optimizer = sgd([torch.nn.Parameter(torch.zeros(0))], opts)  # Avalanche refills it with the model's parameters
    kw = ctx.template_kwargs(opts)
    kw["plugins"].append(lr_schedule_plugin(optimizer, opts.epochs, opts.lr))
    return LammTemplate(model=model, optimizer=optimizer, weights=opts.weights(ctx.shots),
                        softmax=opts.softmax, **kw)
