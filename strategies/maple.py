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
given, :253) with the config's warm-up + cosine (:254; see lamm_cl.training.warmup_cosine).

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

from dataclasses import dataclass

import torch
from avalanche.training.plugins import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.errors import ConfigError
from lamm_cl.features import autocast
from lamm_cl.model.deep_prompts import MapleClassifier, MultiModalPrompts, prompt_depth_limit
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import StrategyOptions, register_strategy
from lamm_cl.training import DropLastPartialBatch, StrategyContext, lr_schedule_plugin, sgd


@dataclass
class MapleOptions(StrategyOptions):
    # defaults: MaPLe's configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml (line numbers of that file);
    # the base->new scripts use the same file (scripts/maple/base2new_train_maple.sh: CFG=..._ep5_...);
    # only the cross-dataset file differs (..._cross_datasets.yaml: 2 epochs, lr 0.0026, depth 3)
    epochs: int = 5  # passes over each experience's training data (MAX_EPOCH, :18)
    batch_size: int = 4  # training mini-batch (TRAIN_X.BATCH_SIZE, :3)
    lr: float = 0.0035  # SGD's base learning rate (:17; one warm-up epoch at 1e-5, then cosine, :19-22)
    n_ctx: int = 2  # context vectors at the text input: the first n_ctx tokens of ctx_init (N_CTX, :33)
    ctx_init: str = "a photo of a"  # the prompt before the name (CTX_INIT, :34); its first n_ctx tokens start
    #                                 the context, the rest stay words; random: n_ctx vectors N(0, 0.02^2), no words
    prompt_depth: int = 9  # layers with prompts, the input counted (PROMPT_DEPTH, :36; 1: the input only);
    #                        at most the towers' block count
    freeze_after_first: bool = False  # train the prompts and couplings on the first experience only

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.n_ctx < 1:
            raise ConfigError(f"{path}.n_ctx: expected 1 or more, got {self.n_ctx}")
        if self.prompt_depth < 1:
            raise ConfigError(f"{path}.prompt_depth: expected 1 or more, got {self.prompt_depth}")
        if not self.ctx_init.strip() or "{}" in self.ctx_init:
            raise ConfigError(f"{path}.ctx_init: expected words such as 'a photo of a', or random; "
                              f"got {self.ctx_init!r}")


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
    random_init = opts.ctx_init.strip().lower() == "random"
    words = " ".join(["X"] * opts.n_ctx) if random_init else opts.ctx_init.strip()
    prompts = ClassPrompts(ctx.clip, ctx.class_names, words + " {}.")
    if prompts.prefix_len < opts.n_ctx:
        raise ConfigError(f"{name}.ctx_init: {opts.ctx_init!r} is {prompts.prefix_len} tokens but n_ctx is "
                          f"{opts.n_ctx}; give at least {opts.n_ctx} tokens of words, or ctx_init: random")
    if random_init:
        init = torch.randn(opts.n_ctx, ctx.clip.token_width, device=ctx.clip.device) * 0.02
    else:
        with torch.no_grad():
            init = ctx.clip.embed_tokens(torch.tensor(prompts.prefix_ids[: opts.n_ctx]))
    vision_width = int(ctx.clip.model.visual.class_embedding.shape[-1])
    return prompts, MultiModalPrompts(init, opts.prompt_depth, vision_width)


class FreezePromptsPlugin(SupervisedPlugin):
    """Stops the shared prompts and couplings from training after the first experience (``freeze_after_first``)."""

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter > 0:
            strategy.model.learner.requires_grad_(False)


class MapleTemplate(DropLastPartialBatch, SupervisedTemplate):
    """Cross-entropy over the seen classes, evaluated under CUDA autocast like the cached features of the
    other strategies; an experience with nothing left to train skips its epochs. MaPLe trains on Dassl
    too, so the last partial batch is dropped as for CoOp and LAMM (:class:`DropLastPartialBatch`)."""

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if not any(p.requires_grad for p in self.model.parameters()):
            return  # frozen prompts: the classifier has still grown by the experience's classes
        super()._train_exp(experience, eval_streams, **kwargs)

    def forward(self):
        if self.is_training:
            return super().forward()  # the runner's AutocastPlugin covers training on CUDA
        with autocast(self.device):
            return super().forward()


def maple_plugins(opts: MapleOptions, optimizer: torch.optim.Optimizer) -> list:
    """The plugins a MaPLe strategy adds: the LR schedule, and the freeze when asked for."""
    out = [lr_schedule_plugin(optimizer, opts.epochs, opts.lr)]
    if opts.freeze_after_first:
        out.append(FreezePromptsPlugin())
    return out


@register_strategy("maple", options=MapleOptions, inputs="images")
def build(ctx: StrategyContext, opts: MapleOptions) -> SupervisedTemplate:
    """MaPLe: trains deep text prompts coupled to vision prompts on every experience; reads images (no feature cache)."""
    prompts, learner = maple_prompts(ctx, opts)
    model = MapleClassifier(ctx.clip, prompts, learner)
    optimizer = sgd([torch.nn.Parameter(torch.zeros(0))], opts)  # Avalanche refills it with the model's parameters
    kw = ctx.template_kwargs(opts)
    kw["plugins"].extend(maple_plugins(opts, optimizer))
    return MapleTemplate(model=model, optimizer=optimizer, **kw)
