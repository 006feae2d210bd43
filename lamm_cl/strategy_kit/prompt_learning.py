"""Prompt learning in front of the frozen CLIP: the CoOp and MaPLe prompt families.

Each family has its options (:class:`CoopOptions`, :class:`MapleOptions`), a builder of its prompts
and the shared parameters that fill them (:func:`shared_context`, :func:`maple_prompts`), and the same
training around them: a template that skips an experience with nothing left to train
(:class:`PromptTemplate`; :class:`MapleTemplate` evaluates images under autocast), the reference's LR
schedule, and, with ``freeze_after_first``, the shared parameters frozen after the first experience
(:func:`prompt_plugins`). The LAMM variants add label vectors (:mod:`lamm_cl.strategy_kit.lamm`).
"""
from __future__ import annotations

import torch
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from lamm_cl.errors import ConfigError
from lamm_cl.features import autocast
from lamm_cl.model.deep_prompts import MultiModalPrompts, prompt_depth_limit
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import CoopOptions, MapleOptions
from lamm_cl.strategy_kit.recipe import DropLastPartialBatch, lr_schedule_plugin


def _context_prompts(ctx: StrategyContext, opts, name: str, exact: bool) -> tuple[ClassPrompts, torch.Tensor]:
    """The prompts ``ctx_init + " " + name + "."`` (``X`` placeholders for a random context) and the start
    of the context: the embeddings of their first ``n_ctx`` tokens after SOS, or N(0, 0.02^2).

    Args:
        exact: ``ctx_init`` must be exactly ``n_ctx`` tokens (CoOp); else at least ``n_ctx`` (MaPLe).
    Raises:
        ConfigError: ``ctx_init`` does not fit ``n_ctx``.
    """
    random_init = opts.ctx_init.strip().lower() == "random"
    words = " ".join(["X"] * opts.n_ctx) if random_init else opts.ctx_init.strip()
    prompts = ClassPrompts(ctx.clip, ctx.class_names, words + " {}.")
    if exact and prompts.prefix_len != opts.n_ctx:
        raise ConfigError(f"{name}.ctx_init: {opts.ctx_init!r} is {prompts.prefix_len} tokens but n_ctx is "
                          f"{opts.n_ctx}; set n_ctx: {prompts.prefix_len}, give words of {opts.n_ctx} tokens, "
                          "or ctx_init: random")
    if prompts.prefix_len < opts.n_ctx:
        raise ConfigError(f"{name}.ctx_init: {opts.ctx_init!r} is {prompts.prefix_len} tokens but n_ctx is "
                          f"{opts.n_ctx}; give at least {opts.n_ctx} tokens of words, or ctx_init: random")
    if random_init:
        # in the tower's dtype (fp16 with model.precision fp16), as CoOp's ctx_vectors (torch.empty(..., dtype))
        init = (torch.randn(opts.n_ctx, ctx.clip.token_width, device=ctx.clip.device) * 0.02).to(ctx.clip.dtype)
    else:
        with torch.no_grad():
            init = ctx.clip.embed_tokens(torch.tensor(prompts.prefix_ids[: opts.n_ctx])).clone()
    return prompts, init


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
    prompts, init = _context_prompts(ctx, opts, name, exact=True)
    return prompts, nn.Parameter(init)


def maple_prompts(ctx: StrategyContext, opts: MapleOptions, name: str = "maple") -> tuple[ClassPrompts, MultiModalPrompts]:
    """MaPLe's prompts ``[SOS] ctx_1..ctx_n (rest of ctx_init) name . [EOT]`` and the prompt learner.

    As in MaPLe's ``MultiModalPromptLearner``, the prompt is ``ctx_init + " " + name + "."`` whose first
    ``n_ctx`` tokens after SOS become the trainable context (``X`` placeholders for a random one)
    (trainers/maple.py:84-97, 121): with "a photo of a" and n_ctx 2 the context starts as the
    embeddings of "a photo" and "of a" stay words (:131 ``token_suffix = embedding[:, 1 + n_ctx:]``).

    Raises:
        ConfigError: ``ctx_init`` is shorter than ``n_ctx`` tokens, or ``prompt_depth`` exceeds the model's blocks.
    """
    limit = prompt_depth_limit(ctx.clip)
    if opts.prompt_depth > limit:
        raise ConfigError(f"{name}.prompt_depth: {opts.prompt_depth} asked, {ctx.clip.arch} has {limit} blocks in "
                          f"its smaller tower; set prompt_depth: {limit} or less")
    prompts, init = _context_prompts(ctx, opts, name, exact=False)
    vision_width = int(ctx.clip.model.visual.class_embedding.shape[-1])
    return prompts, MultiModalPrompts(init, opts.prompt_depth, vision_width)


class FreezeAfterFirstPlugin(SupervisedPlugin):
    """Stops the model's shared prompt parameters (its attribute ``shared``: CoOp's ``context``, MaPLe's
    ``learner``) from training after the first experience (``freeze_after_first``)."""

    def __init__(self, shared: str):
        super().__init__()
        self.shared = shared

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter > 0:
            getattr(strategy.model, self.shared).requires_grad_(False)


class PromptTemplate(DropLastPartialBatch, SupervisedTemplate):
    """Cross-entropy over the seen classes; an experience with nothing left to train skips its epochs;
    the last partial training batch is dropped as Dassl does (:class:`DropLastPartialBatch`)."""

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if not any(p.requires_grad for p in self.model.parameters()):
            return  # frozen prompts: the classifier has still grown by the experience's classes
        super()._train_exp(experience, eval_streams, **kwargs)


class MapleTemplate(PromptTemplate):
    """A :class:`PromptTemplate` for a model that reads images, evaluated under CUDA autocast like the
    cached features of the other strategies. MaPLe trains on Dassl too, so the last partial batch is
    dropped as for CoOp and LAMM."""

    def forward(self):
        if self.is_training:
            return super().forward()  # the runner's AutocastPlugin covers training on CUDA
        with autocast(self.device, precision=self.model.clip.precision):
            return super().forward()


def prompt_plugins(opts, optimizer: torch.optim.Optimizer, shared: str) -> list:
    """The plugins a prompt-learning strategy adds: the LR schedule, and with ``opts.freeze_after_first``
    the freeze of the model's attribute ``shared`` after the first experience."""
    out = [lr_schedule_plugin(optimizer, opts.epochs, opts.lr)]
    if opts.freeze_after_first:
        out.append(FreezeAfterFirstPlugin(shared))
    return out
