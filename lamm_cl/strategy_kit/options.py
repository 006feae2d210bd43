"""The options of every built-in strategy: plain dataclasses that import no torch.

A config names its strategies' options in YAML; :mod:`lamm_cl.config` checks them against these classes
(unknown keys, wrong types, bad values) before anything heavy is imported, so a refusal answers in a
second (the registry finds a built-in's options class here without importing its strategy file). Each
strategy file imports its class from here and registers it with ``@register_strategy(..., options=...)``.

``check_setup(setup, path)`` checks options against the model, the data and the device a run will use
(:class:`lamm_cl.strategy_kit.setup.StrategySetup`), before the first strategy trains: MaPLe's prompt depth
against the towers' blocks, a CoOp or MaPLe ``ctx_init`` against ``n_ctx``, ``finetune.last_blocks``,
RanPAC's memory. The builders keep their own checks for callers that build a strategy directly.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Optional, Union

from lamm_cl.errors import ConfigError
from lamm_cl.registry import StrategyOptions

if TYPE_CHECKING:
    from lamm_cl.losses import LammWeights
    from lamm_cl.strategy_kit.setup import StrategySetup


# ------------------------------------------------- the CoOp and MaPLe prompt families (built in prompt_learning)

@dataclass
class CoopOptions(StrategyOptions):
    n_ctx: int = 4  # shared context vectors, in front of every class name
    ctx_init: str = "a photo of a"  # words (n_ctx tokens) whose embeddings start the context, or random: N(0, 0.02^2)
    freeze_after_first: bool = False  # train the context on the first experience only, then keep it fixed

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.n_ctx < 1:
            raise ConfigError(f"{path}.n_ctx: expected 1 or more, got {self.n_ctx}")
        _check_ctx_init(self.ctx_init, path)

    def check_setup(self, setup: "StrategySetup", path: str) -> None:
        """``ctx_init`` must be exactly ``n_ctx`` tokens (its words become the context, one vector each)."""
        _check_ctx_tokens(self, setup, path, exact=True)


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
        _check_ctx_init(self.ctx_init, path)

    def check_setup(self, setup: "StrategySetup", path: str) -> None:
        """The image encoder must be a ViT, ``prompt_depth`` at most the smaller tower's blocks, and
        ``ctx_init`` at least ``n_ctx`` tokens."""
        if setup.vision_blocks is None or setup.text_blocks is None:
            raise ConfigError(f"{path}: MaPLe's vision prompts need a ViT image encoder; model.arch "
                              f"{setup.arch!r} has none (use e.g. ViT-B-16 or lamm-tiny)")
        limit = min(setup.text_blocks, setup.vision_blocks)
        if self.prompt_depth > limit:
            raise ConfigError(f"{path}.prompt_depth: {self.prompt_depth} asked, {setup.arch} has {limit} blocks in "
                              f"its smaller tower; set prompt_depth: {limit} or less")
        _check_ctx_tokens(self, setup, path, exact=False)


def _check_ctx_init(ctx_init: str, path: str) -> None:
    if not ctx_init.strip() or "{}" in ctx_init:
        raise ConfigError(f"{path}.ctx_init: expected words such as 'a photo of a', or random; got {ctx_init!r}")


def _check_ctx_tokens(opts, setup: "StrategySetup", path: str, exact: bool) -> None:
    """The check the prompt builders make (lamm_cl.strategy_kit.prompt_learning._context_prompts), made
    before anything trains: ``ctx_init``'s words are ``n_ctx`` tokens (CoOp: exactly; MaPLe: at least)."""
    if opts.ctx_init.strip().lower() == "random" or setup.count_tokens is None:
        return
    n = setup.count_tokens(opts.ctx_init.strip())
    if exact and n != opts.n_ctx:
        raise ConfigError(f"{path}.ctx_init: {opts.ctx_init!r} is {n} tokens but n_ctx is {opts.n_ctx}; set "
                          f"n_ctx: {n}, give words of {opts.n_ctx} tokens, or ctx_init: random")
    if n < opts.n_ctx:
        raise ConfigError(f"{path}.ctx_init: {opts.ctx_init!r} is {n} tokens but n_ctx is {opts.n_ctx}; give at "
                          f"least {opts.n_ctx} tokens of words, or ctx_init: random")

# ------------------------------------------------- LAMM on any prompt family (its objective in strategy_kit/lamm.py)

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

    def weights(self, shots: Optional[int], n_experiences: int = 1) -> "LammWeights":
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
        from lamm_cl.losses import LammWeights  # torch: only when a run builds the loss

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

    def weights(self, shots: Optional[int], n_experiences: int = 1) -> "LammWeights":
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

# ------------------------------------------------- one strategy each (its builder in strategies/<name>.py)

@dataclass
class LammPromptOptions(LammOptions):
    """LAMM's options plus the prompt its label vectors sit in (the ``lamm`` strategy's keys)."""

    template: str = LAMM_TEMPLATE  # LAMM's prompt for every dataset; `dataset`: the benchmark's own template

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.template != "dataset" and self.template.count("{}") != 1:
            raise ConfigError(f"{path}.template: expected a prompt with exactly one {{}} (e.g. "
                              f"{LAMM_TEMPLATE!r}) or dataset, got {self.template!r}")


@dataclass
class CoopLammOptions(LammOptions, CoopOptions):
    """LAMM's options (label_tokens, label_init, softmax, loss) plus CoOp's (n_ctx, ctx_init, freeze_after_first).

    ``validate`` runs CoOp's checks (and the base ones, which check the plugins), then LAMM's.
    """


@dataclass
class MapleLossOptions(LossOptions):
    # lambda_p = 1: the reference's MaPLe scripts pass no --shots, so its `1 / self.shots` is 1
    param: Union[float, Literal["auto"]] = 1.0  # lambda_p; auto: 1/shots when few-shot and incremental, else 1


@dataclass
class MapleLammOptions(LammKeys, MapleOptions):
    """MaPLe's options, then LAMM's (label_tokens, label_init, softmax), ``layout`` and ``loss``."""

    label_tokens: Union[Literal["min", "all"], int] = "min"  # vectors per class (layout: name); reference: 1
    layout: Literal["name", "reference"] = "name"  # name: in place of the name's first k pieces;
    #                                                reference: one vector after the context, whole name kept
    loss: MapleLossOptions = field(default_factory=MapleLossOptions)

    def check_label_tokens(self, path: str) -> None:
        super().check_label_tokens(path)
        if self.layout == "reference" and self.label_tokens not in ("min", 1):
            raise ConfigError(f"{path}.label_tokens: layout: reference has one label vector per class; "
                              f"leave label_tokens out or use layout: name (got {self.label_tokens!r})")


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


@dataclass
class SimpleCILOptions(StrategyOptions):
    epochs: int = 1  # one pass collects the prototypes (more passes repeat it: the centre crop every time)
    batch_size: int = 128  # PILOT's batch_size (simplecil.py:16); it only sets the pass's chunk size
    lr: float = 0.0  # nothing trains

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.epochs < 1:
            raise ConfigError(f"{path}.epochs: SimpleCIL needs one pass over the data to build its prototypes; "
                              f"got {self.epochs}")


@dataclass
class LinearProbeOptions(StrategyOptions):
    lr: float = 0.001  # the optimizer's learning rate
    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: momentum 0.9
    weight_decay: float = 0.0  # L2 penalty on the head
    standardize: bool = True  # standardise the normalised features per dimension first (MAE's BatchNorm probe)

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.weight_decay < 0:
            raise ConfigError(f"{path}.weight_decay: expected 0 or more, got {self.weight_decay}")


@dataclass
class FinetuneOptions(StrategyOptions):
    lr: float = 1e-5  # AdamW's learning rate, cosine-annealed within each experience (CLIP wants a small one)
    weight_decay: float = 0.1  # AdamW's decoupled weight decay
    trainable: Literal["all", "last_blocks"] = "all"  # the whole image encoder, or only its last `last_blocks` blocks
    last_blocks: Optional[int] = None  # N: train only the last N blocks (+ ln_post, proj); implies last_blocks

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.weight_decay < 0:
            raise ConfigError(f"{path}.weight_decay: expected 0 or more, got {self.weight_decay}")
        if self.trainable == "last_blocks" and self.last_blocks is None:
            raise ConfigError(f"{path}.last_blocks: trainable: last_blocks needs the number of blocks, "
                              "e.g. last_blocks: 2")
        if self.last_blocks is not None and self.last_blocks < 1:
            raise ConfigError(f"{path}.last_blocks: expected 1 or more, got {self.last_blocks}")

    def check_setup(self, setup: "StrategySetup", path: str) -> None:
        """``last_blocks`` needs an image encoder with at least that many transformer blocks."""
        if self.last_blocks is None:
            return
        if setup.vision_blocks is None:
            raise ConfigError(f"{path}.last_blocks: the image encoder of {setup.arch} has no transformer blocks; "
                              "use trainable: all")
        if self.last_blocks > setup.vision_blocks:
            raise ConfigError(f"{path}.last_blocks: {self.last_blocks} asked, the image encoder of {setup.arch} has "
                              f"{setup.vision_blocks} blocks")


@dataclass
class RanPACOptions(StrategyOptions):
    M: int = 10000  # random projection width (RanPAC's M); 0: ridge on the raw features ("no RP")
    ridge: Optional[float] = None  # a fixed λ; null: chosen per experience from 1e-8 .. 1e8 as the paper does
    projection_seed: Optional[int] = None  # seeds the projection; null: the run's seed
    epochs: int = 1  # exactly one pass: G and Q are sums over the data
    batch_size: int = 128  # cifar224_publish.csv batch_size; the chunk size, and the loader's shuffle sets λ's split
    lr: float = 0.0  # nothing is trained by gradient

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.epochs != 1:
            raise ConfigError(f"{path}.epochs: RanPAC makes exactly one pass over each experience; got {self.epochs}")
        if self.M < 0:
            raise ConfigError(f"{path}.M: expected 0 (no projection) or a positive width, got {self.M}")
        if self.ridge is not None and self.ridge <= 0:
            raise ConfigError(f"{path}.ridge: expected a positive number or null, got {self.ridge}")

    def memory_needed(self, dim: int, n_classes: int, n_train: int) -> tuple[int, int]:
        """Bytes RanPAC needs at its peak, and those of its Gram matrix alone (an estimate from the shapes).

        Kept for the whole run (float32, as in the reference): the projection ``[dim, M]``, the Gram matrix G
        ``[M, M]``, Q and the solution ``[M, C]``. At the peak, beside them, either the ridge solve (G + λI and
        its Cholesky factor in float64, Q in float64) or the λ search of the largest experience (its ``n_train``
        features, projected in float32 and float64, and the eigendecomposition of the smaller Gram matrix of
        its 80 % part). With ``M: 0`` the width is the features' own.
        """
        w = self.M if self.M > 0 else dim
        kept = 4 * (dim * self.M + w * w + 2 * w * n_classes)
        solve = 8 * (2 * w * w + 2 * w * n_classes)
        k = min(int(n_train * 0.8), w)
        search = 4 * n_train * dim + (12 * n_train * w + 3 * 8 * k * k if self.ridge is None else 0)
        return kept + max(solve, search), 4 * w * w

    def check_memory(self, dim: int, n_classes: int, n_train: int, device: str, free: Optional[int],
                     path: str) -> None:
        """Refuse, before anything is allocated, an ``M`` whose matrices cannot fit in ``free`` bytes."""
        need, gram = self.memory_needed(dim, n_classes, n_train)
        if free is not None and need > free:
            w = self.M if self.M > 0 else dim
            raise ConfigError(f"{path}.M: {self.M} needs about {size_text(need)} of memory on {device} (its {w} x {w} "
                              f"Gram matrix alone is {size_text(gram)}), and {size_text(free)} is free there; lower M "
                              "(RanPAC's is 10000)")

    def check_setup(self, setup: "StrategySetup", path: str) -> None:
        """The projection, Gram matrix and ridge solve must fit in the device's free memory."""
        self.check_memory(setup.embed_dim, setup.n_classes, max(setup.train_sizes, default=0), setup.device,
                          setup.memory_free, path)


@dataclass
class RAPFOptions(StrategyOptions):
    epochs: int = 15  # cifar100_10-10.yaml:31
    batch_size: int = 100  # cifar100_10-10.yaml:30 train_batch_size (main.py:49, shuffled, last batch kept)
    lr: float = 0.001  # cifar100_10-10.yaml:32; Adam, weight decay 0 (main.py:52)
    milestones: list[int] = field(default_factory=lambda: [4, 10])  # cifar100_10-10.yaml:35, MultiStepLR epochs
    lr_decay: float = 0.1  # MultiStepLR gamma (main.py:57)
    beta: float = 2.0  # yaml:36; pseudo-features: int(10*beta) per old class per batch, int(20*beta) per hard pair
    old_classes_per_batch: int = 2  # main.py: 2 for CIFAR-100 10-10 (4 for 5-class steps, 5 ImageNet-R, 10 CUB)
    threshold: float = 0.55  # yaml:38; hard pair: Euclidean distance of normalised text features below this
    mix_bias: float = 0.6  # yaml:37; parameter fusion: added to the normalised change before clamping at 1
    shrinkage: bool = False  # yaml:39; shrink old-class covariances before drawing (the reference's option, off)
    template: str = "a good photo of a {}."  # yaml:18, RAPF's prompt; `dataset` for the benchmark's template

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.beta <= 0:
            raise ConfigError(f"{path}.beta: expected a positive number, got {self.beta}")
        if self.old_classes_per_batch < 1:
            raise ConfigError(f"{path}.old_classes_per_batch: expected 1 or more, got {self.old_classes_per_batch}")
        if not 0 <= self.mix_bias <= 1:
            raise ConfigError(f"{path}.mix_bias: expected a number in [0, 1], got {self.mix_bias}")
        if self.lr_decay <= 0:
            raise ConfigError(f"{path}.lr_decay: expected a positive number, got {self.lr_decay}")
        if any(m < 0 for m in self.milestones):
            raise ConfigError(f"{path}.milestones: expected epochs 0 or more, got {self.milestones}")
        if self.template != "dataset" and self.template.count("{}") != 1:
            raise ConfigError(f"{path}.template: expected exactly one {{}} or `dataset`, got {self.template!r}")


def size_text(n: int) -> str:
    """Bytes in binary units, e.g. ``37.3 GiB``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} PiB"
