"""RAPF: a linear adapter on frozen image features, trained against CLIP's text classifier, with
adaptive representation adjustment and decomposed parameter fusion; no images are kept.

Huang, Chen, Lin, Zheng, Zeng, Li, "Class-Incremental Learning with CLIP: Adaptive Representation
Adjustment and Parameter Fusion", ECCV 2024 (arXiv 2407.14143); reference code linlany/RAPF
(``main.py`` ``run_class_incremental``, ``continual_clip/models.py`` ``ClassIncrementalCLIP``,
``configs/class/cifar100_10-10.yaml`` for the defaults). Line numbers below cite the stored versions
``main.py`` @2e7429f, ``continual_clip/models.py`` @32894ba (the version that reads ``cfg.mix_bias``; an
earlier one, @f57112f, hard-codes the fusion bias 0.5) and ``configs/class/cifar100_10-10.yaml`` @afbea62.

Logits are α · normalize(A f) · tᵀ over every seen class, with f the raw frozen image feature, A a
bias-free ``dim x dim`` linear adapter (the only trained weights, PyTorch's default ``nn.Linear``
initialisation as in the reference), t the normalised text features of the prompt
``a good photo of a {}.`` and α CLIP's logit scale. Per experience, in the reference's order:

1. before training: keep a copy A_old of the adapter (from the second experience on); find the
   *hard pairs* -- every (old class, new class) whose normalised text features lie closer than
   ``threshold`` (Euclidean; ``models.py:168-181``); start a fresh Adam (lr 1e-3, no weight decay;
   ``main.py:52``) with a step schedule (x0.1 after epochs 4 and 10 of 15; ``main.py:57,131``,
   ``cifar100_10-10.yaml:30-35``);
2. training (``main.py``): each batch of real features is joined by pseudo-features of old classes,
   drawn from their kept Gaussians N(μ_c, Σ_c): ``old_classes_per_batch`` old classes per batch
   (walked through in an order shuffled every epoch), ``int(10·beta)`` samples each, trained with the
   same cross-entropy, one mean over real and drawn rows (``main.py:63-91,119``). For every hard pair
   (o, n) ``int(20·beta)`` samples of class o are drawn too (``main.py:92-102``), and the *adaptive
   representation adjustment* hinge mean(ReLU(cos(A x, t_n) − cos(A x, t_o) + 0.1)) pushes them
   towards their own text feature and away from the close new class's (``main.py:111-121``, loss =
   CE + hinge, weight 1);
3. after training: the mean and covariance (+1e-4 I) of every new class's raw (un-normalised,
   un-adapted) features are kept (``analyze_mean_cov``, ``main.py:132-147``, ``models.py:187-199``),
   the only memory of the class;
4. *decomposed parameter fusion* (``mix_matrix``, ``main.py:148``, ``models.py:201-215``): with
   A_old = U S Vᵀ, the new and old adapters are compared in U's basis, P = Uᵀ A and P_old = S Vᵀ;
   the mask m = min(1, |P − P_old| / max|P − P_old| + ``mix_bias``) keeps the entries that changed
   most and blends the rest back, A ← U (m ⊙ P + (1 − m) ⊙ P_old).

Evaluation (``main.py:149-156``) scores every seen class with the fused adapter, argmax.

The reference reads every training image through CLIP's own preprocessing (``main.py:36-42``: the
training and the statistics loaders both use ``model.transforms``, no augmentation), so the strategy is
registered with ``augmented_views=False``: it trains and takes its statistics on the centre crop even
when ``features.train_views > 0``.

An earlier class's mean and covariance never change; the adapter, shared by all classes, does (the
method's own design).

Deviations, on purpose: features come from the shared store in float32 (the reference runs CLIP in
fp16, so its class statistics are taken of fp16 features, and it casts the adapter's fp32 output
back to fp16 before the logits, ``models.py:116,132``; here the adapter and the logits are float32,
outside the run's CUDA autocast, as the reference's adapter trains in float32); the fusion's SVD
runs in float64 (the reference: float32), with a guard for an unchanged adapter, where the reference
would divide 0 by 0; the Cholesky factor of each old class's covariance is computed once per
experience instead of at every draw (the same draws in exact arithmetic), in float64, falling back
to an eigen-decomposition square root if the factorisation fails (the reference would stop with an
error); a class with a single training sample keeps the covariance 1e-4 I (``torch.cov`` of one
sample is undefined); the per-epoch class shuffle uses torch's generator instead of Python's
``random``; and the reference hard-codes the number of old classes per batch per dataset (2 for
CIFAR-100 10-10, 4 for CIFAR-100 with 5 new classes, 5 for ImageNet-R, 10 for CUB-200;
``main.py:78-85``): here it is the option ``old_classes_per_batch``. Shared with the other
strategies rather than RAPF's own: the class names (the reference prompts CIFAR-100 with
torchvision's raw names, underscores included, e.g. ``aquarium_fish``: ``datasets.py``
``get_dataset``; lamm-cl reads ``aquarium fish``) and the class order (RAPF's
``class_orders/cifar100_order.yaml`` is not the iCaRL order that ``benchmarks/split_cifar100.yaml``
uses; ``published.csv`` says so beside RAPF's figures).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from lamm_cl.model.clip import normalize
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import RAPFOptions
from lamm_cl.strategy_kit.recipe import make_optimizer
from lamm_cl.strategy_kit.statistics import SeenClasses

COV_EPS = 1e-4  # models.py:194 analyze_mean_cov: torch.cov(...) + 1e-4 * I
HINGE_MARGIN = 0.1  # main.py:118: relu(-cos(pos) + cos(neg) + 0.1)


# --------------------------------------------------------------------------- the pieces, as functions


def hard_pairs(text: torch.Tensor, old: list[int], new: list[int], threshold: float) -> torch.Tensor:
    """``[P, 2]`` pairs (old class, new class) whose normalised text features are closer than ``threshold``.

    Ordered old-major, as ``torch.nonzero`` of the reference's ``[n_old, n_new]`` distance table
    (``models.py:170-181`` ``adaptation``: ``cdist`` of the normalised text features, ``< threshold``;
    no top-k, every pair under the threshold counts).
    """
    if not old or not new:
        return torch.zeros(0, 2, dtype=torch.long, device=text.device)
    t = normalize(text.float())
    dist = torch.cdist(t[old], t[new])  # [n_old, n_new]
    idx = torch.nonzero(dist < threshold)
    olds = torch.tensor(old, device=text.device)[idx[:, 0]]
    news = torch.tensor(new, device=text.device)[idx[:, 1]]
    return torch.stack([olds, news], dim=1)


def adjustment_hinge(feat: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor,
                     margin: float = HINGE_MARGIN) -> torch.Tensor:
    """RAPF's representation adjustment: mean over rows of ReLU(cos(feat, t_neg) − cos(feat, t_pos) + margin).

    Args:
        feat: ``[N, D]`` adapted pseudo-features of old classes; ``t_pos``: ``[N, D]`` their own class's
            text feature; ``t_neg``: ``[N, D]`` the close new class's text feature. All are normalised here.
    """
    f, p, n = normalize(feat), normalize(t_pos.detach()), normalize(t_neg.detach())
    return F.relu(-(f * p).sum(-1) + (f * n).sum(-1) + margin).mean()


@torch.no_grad()
def fuse(w_old: torch.Tensor, w_new: torch.Tensor, bias: float) -> torch.Tensor:
    """Decomposed parameter fusion (``models.py:201-215`` ``mix_matrix``).

    With ``w_old = U diag(S) Vh``, compare ``P = Uᵀ w_new`` with ``P_old = diag(S) Vh`` entrywise; the
    mask ``m = min(1, |P − P_old| / max|P − P_old| + bias)`` and the result ``U (m ⊙ P + (1 − m) ⊙ P_old)``.
    The result does not depend on the signs SVD picks for U's columns.
    """
    w_old, w_new = w_old.double(), w_new.double()
    u, s, vh = torch.linalg.svd(w_old)
    p_new = u.t() @ w_new
    p_old = torch.diag(s) @ vh
    diff = (p_new - p_old).abs()
    top = diff.max()
    mask = (diff / top if top > 0 else diff) + bias  # identical adapters: nothing to blend
    mask = mask.clamp(max=1.0)
    return (u @ (p_new * mask + p_old * (1 - mask))).float()


def shrink_covariance(cov: torch.Tensor) -> torch.Tensor:
    """The reference's optional shrinkage (``models.py:27-37`` ``shrink_cov``, applied in ``sample`` when
    ``shrinkage`` is on; off in ``cifar100_10-10.yaml:39``): add the mean diagonal to the diagonal and the mean
    non-zero off-diagonal entry to every off-diagonal entry."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    off = cov * (1 - eye)
    nonzero = off != 0
    off_mean = off.sum() / nonzero.sum().clamp(min=1)
    return cov + torch.diagonal(cov).mean() * eye + off_mean * (1 - eye)


def covariance_factor(cov: torch.Tensor) -> torch.Tensor:
    """A lower-triangular L with L Lᵀ = cov (Cholesky, in float64); an eigen square root if that fails."""
    c = cov.double()
    L, info = torch.linalg.cholesky_ex(c)
    if int(info) == 0:
        return L.float()
    evals, vecs = torch.linalg.eigh(c)
    return (vecs * evals.clamp(min=0).sqrt()).float()


def class_statistics(x: torch.Tensor, y: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{label: (mean, covariance + 1e-4 I)}`` of the raw features ``x [N, D]`` per label in ``y``.

    The covariance is ``torch.cov`` (unbiased, N − 1); a class with one sample gets only the 1e-4 I.
    """
    out = {}
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    for c in torch.unique(y).tolist():
        xc = x[y == c].double()
        cov = torch.cov(xc.t()) if len(xc) > 1 else torch.zeros_like(eye)
        out[int(c)] = (xc.mean(0).float(), (cov + COV_EPS * eye).float())
    return out


# --------------------------------------------------------------------------- the model


class AdaptedTextClassifier(SeenClasses):
    """Logits α · normalize(A f) · tᵀ over the seen classes, plus each class's kept feature statistics.

    Args:
        text: ``[n_classes, D]`` text features of every benchmark class (normalised here).
        logit_scale: α.
        dim: image feature width.
    """

    def __init__(self, text: torch.Tensor, logit_scale: float, dim: int):
        n = text.shape[0]
        super().__init__(n)
        self.adapter = nn.Linear(dim, dim, bias=False)  # models.py:71: nn.Linear(512, 512, bias=False), default init
        self.register_buffer("text", normalize(text.detach().float()))
        self.logit_scale = float(logit_scale)
        self.register_buffer("means", torch.zeros(n, dim))
        self.register_buffer("covs", torch.zeros(n, dim, dim))
        self.register_buffer("has_stats", torch.zeros(n, dtype=torch.bool))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """normalize(A f): the adapted, normalised image feature, in float32 even under autocast."""
        # the reference trains the adapter in float32 (cifar100_10-10.yaml:33 fp16: false; models.py:70,132):
        # CUDA training autocast (bf16) would round the features, the weights and the adapted feature to 8 bits
        with torch.autocast(x.device.type, enabled=False):
            return normalize(self.adapter(x.float()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            logits = self.logit_scale * self.embed(x) @ self.text.t()
        return self.restrict(logits)

    @torch.no_grad()
    def keep_statistics(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Store mean and covariance of each class in ``y`` (raw features ``x``)."""
        for c, (mean, cov) in class_statistics(x.float(), y).items():
            self.means[c] = mean
            self.covs[c] = cov
            self.has_stats[c] = True

    def old_classes(self) -> list[int]:
        """Classes whose statistics are kept (those of earlier experiences)."""
        return torch.nonzero(self.has_stats).flatten().tolist()


# --------------------------------------------------------------------------- the template


class RAPFTemplate(SupervisedTemplate):
    """Avalanche's training loop with RAPF's additions (see the module docstring for the order)."""

    def __init__(self, *, beta: float, old_classes_per_batch: int, threshold: float, mix_bias: float,
                 milestones: list[int], lr_decay: float, shrinkage: bool, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta
        self.old_per_batch = old_classes_per_batch
        self.threshold = threshold
        self.mix_bias = mix_bias
        self.milestones = list(milestones)
        self.lr_decay = lr_decay
        self.shrinkage = shrinkage
        self.base_lr = self.optimizer.param_groups[0]["lr"]
        self._reset_experience_state()

    def _reset_experience_state(self) -> None:
        self.old_weight: Optional[torch.Tensor] = None
        self.old: list[int] = []
        self.pairs = torch.zeros(0, 2, dtype=torch.long)
        self.factors: dict[int, torch.Tensor] = {}
        self.old_order: list[int] = []
        self.batch_in_epoch = -1

    def make_optimizer(self, **kwargs):
        # main.py:52 builds a new Adam for every task: no moment carries over
        kwargs["reset_optimizer_state"] = True
        super().make_optimizer(**kwargs)

    # -- 1. before training
    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)  # the model flags the new classes, a fresh Adam
        model = self.model
        self._reset_experience_state()
        self.old = model.old_classes()
        new = [int(c) for c in self.experience.classes_in_this_experience if int(c) not in set(self.old)]
        if self.old:
            self.old_weight = model.adapter.weight.detach().clone()
            self.pairs = hard_pairs(model.text, self.old, new, self.threshold)
            for c in self.old:
                cov = shrink_covariance(model.covs[c]) if self.shrinkage else model.covs[c]
                self.factors[c] = covariance_factor(cov)

    def _before_training_epoch(self, **kwargs):
        epoch = self.clock.train_exp_epochs
        # main.py:57,131: MultiStepLR(milestones, gamma), stepped after every epoch
        lr = self.base_lr * self.lr_decay ** sum(epoch >= m for m in self.milestones)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.old:  # main.py:63-65: every old class, reshuffled each epoch
            self.old_order = [self.old[i] for i in torch.randperm(len(self.old)).tolist()]
        self.batch_in_epoch = -1
        super()._before_training_epoch(**kwargs)

    # -- 2. training
    def _draw(self, c: int, n: int) -> torch.Tensor:
        """``n`` pseudo-features of class ``c`` from N(mean_c, cov_c) (``models.py:38-45`` ``sample``)."""
        mean = self.model.means[c]
        noise = torch.randn(n, mean.shape[-1], device=mean.device)
        return noise @ self.factors[c].t() + mean

    def criterion(self):
        if not self.is_training:
            return self._criterion(self.mb_output, self.mb_y)
        self.batch_in_epoch += 1
        logits, targets = [self.mb_output], [self.mb_y]
        edge, pos, neg = None, None, None
        with torch.autocast(self.device.type, enabled=False):  # draw in float32 even under CUDA autocast
            if self.old:
                k, n_old = self.old_per_batch, len(self.old_order)
                # main.py:85: batch b takes entries b*k .. b*k+k-1 (mod n_old); one old class is drawn k times
                chosen = [self.old_order[(self.batch_in_epoch * k + i) % n_old] for i in range(k)]
                per_class = int(10 * self.beta)
                drawn = torch.cat([self._draw(c, per_class) for c in chosen])
                logits.append(self.model(drawn))
                targets.append(torch.tensor(chosen, device=self.device).repeat_interleave(per_class))
            if len(self.pairs):
                per_pair = int(20 * self.beta)
                edge = torch.cat([self._draw(int(o), per_pair) for o, _ in self.pairs.tolist()])
                pos = self.pairs[:, 0].repeat_interleave(per_pair)
                neg = self.pairs[:, 1].repeat_interleave(per_pair)
        loss = F.cross_entropy(torch.cat(logits), torch.cat(targets))
        if edge is not None:
            text = self.model.text
            loss = loss + adjustment_hinge(self.model.embed(edge), text[pos], text[neg])
        return loss

    # -- 3. and 4. after training
    @torch.no_grad()
    def _after_training_exp(self, **kwargs):
        xs, ys = [], []
        data = self.experience.dataset
        loader = torch.utils.data.DataLoader(data, batch_size=128, shuffle=False,
                                             collate_fn=getattr(data, "collate_fn", None))
        for batch in loader:
            xs.append(batch[0].to(self.device).float())
            ys.append(batch[1].to(self.device))
        self.model.keep_statistics(torch.cat(xs), torch.cat(ys))
        if self.old_weight is not None:
            fused = fuse(self.old_weight, self.model.adapter.weight.detach(), self.mix_bias)
            self.model.adapter.weight.data.copy_(fused)
        self._reset_experience_state()  # nothing of this experience's setup outlives it (checkpoints stay small)
        super()._after_training_exp(**kwargs)


# --------------------------------------------------------------------------- options and builder


@register_strategy("rapf", options=RAPFOptions, augmented_views=False)  # main.py: model.transforms
def build(ctx: StrategyContext, opts: RAPFOptions) -> SupervisedTemplate:
    """RAPF (Huang et al., ECCV 2024): feature adapter vs. text classifier, old-class Gaussians, parameter fusion."""
    template = ctx.template if opts.template == "dataset" else opts.template
    text = ctx.clip.encode_text([template.format(name) for name in ctx.class_names])
    model = AdaptedTextClassifier(text.cpu(), ctx.clip.logit_scale, ctx.clip.embed_dim)
    optimizer = make_optimizer("adam", opts.lr, weight_decay=0.0)
    return RAPFTemplate(model=model, optimizer=optimizer, beta=opts.beta,
                        old_classes_per_batch=opts.old_classes_per_batch, threshold=opts.threshold,
                        mix_bias=opts.mix_bias, milestones=opts.milestones, lr_decay=opts.lr_decay,
                        shrinkage=opts.shrinkage, **ctx.template_kwargs(opts))
