"""Zero-shot CLIP: the benchmark's prompt per class, nothing trained -- the floor every method must beat."""
from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import ZeroShotOptions
from lamm_cl.strategy_kit.recipe import idle_optimizer


class EnsembleClassifier(PromptClassifier):
    """A prompt classifier whose class feature is the mean of several templates' normalised features."""

    def __init__(self, ctx: StrategyContext, templates: list[str]):
        super().__init__(ctx.clip, ClassPrompts(ctx.clip, ctx.class_names, templates[0]))
        self.members = [ClassPrompts(ctx.clip, ctx.class_names, t) for t in templates]

    def encode(self, classes: list[int], original: bool = False) -> torch.Tensor:
        from lamm_cl.model.clip import normalize
        from lamm_cl.model.prompts import PromptEncoder

        feats = [normalize(PromptEncoder(self.clip, p).encode(classes)) for p in self.members]
        return torch.stack(feats).mean(0)


class ZeroShotTemplate(SupervisedTemplate):
    """Grows its classifier with each experience's classes and skips the training loop."""

    def make_optimizer(self, **kwargs):
        pass  # nothing to optimise

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        pass  # no epochs: the classifier was adapted in _before_training_exp


@register_strategy("zeroshot", options=ZeroShotOptions, trains=False)
def build(ctx: StrategyContext, opts: ZeroShotOptions) -> SupervisedTemplate:
    """Zero-shot CLIP: a hand-made prompt per class (optionally a template ensemble); trains nothing."""
    if opts.templates:
        model = EnsembleClassifier(ctx, opts.templates)
    else:
        model = PromptClassifier(ctx.clip, ClassPrompts(ctx.clip, ctx.class_names, ctx.template))
    return ZeroShotTemplate(model=model, optimizer=idle_optimizer(), **ctx.template_kwargs(opts))
