"""Zero-shot CLIP: the benchmark's prompt per class, nothing trained -- the floor every method must beat."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.errors import ConfigError
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import StrategyOptions, register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.recipe import idle_optimizer


@dataclass
class ZeroShotOptions(StrategyOptions):
    epochs: int = 0  # nothing trains; kept for a uniform config
    templates: Optional[list[str]] = None  # a prompt ensemble; null: the benchmark's template only
    plugins: list[dict] = field(default_factory=list)

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.epochs != 0:
            raise ConfigError(f"{path}.epochs: zeroshot trains nothing; leave epochs at 0")
        for i, t in enumerate(self.templates or []):
            if t.count("{}") != 1:
                raise ConfigError(f"{path}.templates[{i}]: expected exactly one {{}}, got {t!r}")


class EnsembleClassifier(PromptClassifier):
    """A prompt classifier whose class feature is the mean of several templates' normalised features."""

    def __init__(self, ctx: StrategyContext, templates: list[str]):
        super().__init__(ctx.clip, ClassPrompts(ctx.clip, ctx.class_names, templates[0]))
        self.members = [ClassPrompts(ctx.clip, ctx.class_names, t) for t in templates]

    def encode(self, classes: list[int], original: bool = False) -> torch.Tensor:
        from lamm_cl.model.prompts import PromptEncoder
        from lamm_cl.model.clip import normalize

        feats = [normalize(PromptEncoder(self.clip, p).encode(classes)) for p in self.members]
        return torch.stack(feats).mean(0)


class ZeroShotTemplate(SupervisedTemplate):
    """Grows its classifier with each experience's classes and skips the training loop."""

    def make_optimizer(self, **kwargs):
        pass  # nothing to optimise

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        pass  # no epochs: the classifier was adapted in _before_training_exp


@register_strategy("zeroshot", options=ZeroShotOptions, trains=False, scores_unseen=True)
def build(ctx: StrategyContext, opts: ZeroShotOptions) -> SupervisedTemplate:
    """Zero-shot CLIP: a hand-made prompt per class (optionally a template ensemble); trains nothing."""
    if opts.templates:
        model = EnsembleClassifier(ctx, opts.templates)
    else:
        model = PromptClassifier(ctx.clip, ClassPrompts(ctx.clip, ctx.class_names, ctx.template))
    return ZeroShotTemplate(model=model, optimizer=idle_optimizer(), **ctx.template_kwargs(opts))
