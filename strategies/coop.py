"""CoOp (Zhou et al., IJCV 2022): one shared context of n_ctx vectors in front of the fixed class names,
trained with cross-entropy over every class seen so far. The context keeps training on every experience,
so it drifts away from what earlier classes were learnt with: the forgetting this baseline shows."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from lamm_cl.errors import ConfigError
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import StrategyOptions, register_strategy
from lamm_cl.training import DropLastPartialBatch, StrategyContext, lr_schedule_plugin, sgd


@dataclass
class CoopOptions(StrategyOptions):
    n_ctx: int = 4  # shared context vectors, in front of every class name
    ctx_init: str = "a photo of a"  # words (n_ctx tokens) whose embeddings start the context, or random: N(0, 0.02^2)
    freeze_after_first: bool = False  # train the context on the first experience only, then keep it fixed

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.n_ctx < 1:
            raise ConfigError(f"{path}.n_ctx: expected 1 or more, got {self.n_ctx}")
        if not self.ctx_init.strip() or "{}" in self.ctx_init:
            raise ConfigError(f"{path}.ctx_init: expected words such as 'a photo of a', or random; "
                              f"got {self.ctx_init!r}")


def shared_context(ctx: StrategyContext, opts: CoopOptions,
                   name: str = "coop") -> tuple[ClassPrompts, nn.Parameter]:
    """CoOp's prompts ``[SOS] ctx_1..ctx_n name . [EOT]`` and the context that fills them.

    As in CoOp, the context replaces the benchmark's template: the prompt is the context
    words (or ``X`` placeholders for a random context) followed by the class name and a period.

    Args:
        name: the strategy, for error messages.
    Raises:
        ConfigError: ``ctx_init`` is not ``n_ctx`` tokens long.
    """
    random_init = opts.ctx_init.strip().lower() == "random"
    words = " ".join(["X"] * opts.n_ctx) if random_init else opts.ctx_init.strip()
    prompts = ClassPrompts(ctx.clip, ctx.class_names, words + " {}.")
    if prompts.prefix_len != opts.n_ctx:
        raise ConfigError(f"{name}.ctx_init: {opts.ctx_init!r} is {prompts.prefix_len} tokens but n_ctx is "
                          f"{opts.n_ctx}; set n_ctx: {prompts.prefix_len}, give words of {opts.n_ctx} tokens, "
                          "or ctx_init: random")
    if random_init:
        init = torch.randn(opts.n_ctx, ctx.clip.token_width, device=ctx.clip.device) * 0.02
    else:
        with torch.no_grad():
            init = ctx.clip.embed_tokens(torch.tensor(prompts.prefix_ids)).clone()
    return prompts, nn.Parameter(init)


class FreezeContextPlugin(SupervisedPlugin):
    """Stops the shared context from training after the first experience (``freeze_after_first``)."""

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter > 0:
            strategy.model.context.requires_grad_(False)


class CoopTemplate(DropLastPartialBatch, SupervisedTemplate):
    """Cross-entropy over the seen classes; an experience with nothing left to train skips its epochs;
    the last partial training batch is dropped as Dassl does (:class:`DropLastPartialBatch`)."""

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if not any(p.requires_grad for p in self.model.parameters()):
            return  # a frozen context: the classifier has still grown by the experience's classes
        super()._train_exp(experience, eval_streams, **kwargs)


def context_plugins(opts: CoopOptions, optimizer: torch.optim.Optimizer) -> list:
    """The plugins a context-training strategy adds: the LR schedule, and the freeze when asked for."""
    out = [lr_schedule_plugin(optimizer, opts.epochs, opts.lr)]
    if opts.freeze_after_first:
        out.append(FreezeContextPlugin())
    return out


@register_strategy("coop", options=CoopOptions)
def build(ctx: StrategyContext, opts: CoopOptions) -> SupervisedTemplate:
    """CoOp: trains one shared context (n_ctx vectors) in front of the fixed class names, on every experience."""
    prompts, context = shared_context(ctx, opts)
    model = PromptClassifier(ctx.clip, prompts, context=context)
    optimizer = sgd([torch.nn.Parameter(torch.zeros(0))], opts)  # Avalanche refills it with the model's parameters
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(context_plugins(opts, optimizer))
    return CoopTemplate(model=model, optimizer=optimizer, **kw)
