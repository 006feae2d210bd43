"""The training recipe the reference runs on Dassl, and the optimisers the built-ins start from.

Dassl's recipe (CoOp, LAMM, MaPLe): SGD with momentum 0.9 and weight decay 5e-4 (:func:`sgd`), one
warm-up epoch then a cosine (:func:`warmup_cosine`, as a plugin :func:`lr_schedule_plugin`), and the
last partial training batch dropped (:class:`DropLastPartialBatch`). A template is built before its
model has grown, so every builder hands it an optimiser over a placeholder parameter
(:func:`placeholder_params`, :func:`make_optimizer`), which Avalanche refills with the model's parameters at each experience;
:func:`idle_optimizer` is the one for templates that train nothing.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from avalanche.training.plugins import SupervisedPlugin
from torch import nn


def warmup_cosine(epochs: int, base_lr: float, warmup_lr: float = 1e-5) -> Callable[[int], float]:
    """LR factor per epoch (0-based), as Dassl schedules CoOp and LAMM.

    With E = ``epochs`` >= 2: epoch 0 runs at the constant ``warmup_lr``, and epoch e >= 1 at
    ``base_lr * 0.5 * (1 + cos(pi * (e - 1) / E))`` -- epoch 1 at the full rate, the last epoch
    still above zero. That is Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=E)``
    with ``WARMUP_RECOUNT`` (Dassl's default): the cosine starts counting only after the warm-up
    epoch (Dassl.pytorch dassl/optim/lr_scheduler.py:21-39, and build_lr_scheduler, which leaves the
    successor's last_epoch at 0 when WARMUP_RECOUNT is set; LAMM's
    configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml sets WARMUP_EPOCH 1, constant, 1e-5).

    Deviation: with E = 1 Dassl would spend the only epoch at ``warmup_lr`` and train nothing;
    here a single epoch runs at ``base_lr`` (no warm-up).
    """

    def factor(epoch: int) -> float:
        if epochs <= 1:
            return 1.0
        if epoch == 0:
            return warmup_lr / base_lr if base_lr > 0 else 0.0
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))

    return factor


class DropLastPartialBatch:
    """Template mixin: training drops the last partial mini-batch when the experience has at least one
    full batch, as Dassl builds its training loader for CoOp and LAMM (Dassl.pytorch
    dassl/data/data_manager.py, build_data_loader: ``drop_last=is_train and len(data_source) >=
    batch_size``); Avalanche keeps the partial batch. An experience smaller than one batch trains on
    all of it. Put it before ``SupervisedTemplate`` in the bases; an explicit ``drop_last`` passed to
    ``train`` wins. The flag also reaches plugins that build their own loader (Avalanche's replay).
    """

    def _before_training_exp(self, **kwargs):
        if "drop_last" not in kwargs:
            kwargs["drop_last"] = len(self.experience.dataset) >= self.train_mb_size
        super()._before_training_exp(**kwargs)


class WarmupCosinePlugin(SupervisedPlugin):
    """Sets every parameter group's LR at the start of each epoch from :func:`warmup_cosine`,
    restarting at every experience (Avalanche's LRSchedulerPlugin does not replay the warm-up)."""

    def __init__(self, epochs: int, base_lr: float, warmup_lr: float = 1e-5):
        super().__init__()
        self.base_lr = base_lr
        self.factor = warmup_cosine(epochs, base_lr, warmup_lr)

    def before_training_epoch(self, strategy, **kwargs):
        lr = self.base_lr * self.factor(strategy.clock.train_exp_epochs)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr


def lr_schedule_plugin(optimizer: torch.optim.Optimizer, epochs: int, base_lr: float) -> WarmupCosinePlugin:
    """The reference schedule as a plugin (:func:`warmup_cosine`): one warm-up epoch at 1e-5, then cosine
    from epoch 1, restarting at every experience."""
    return WarmupCosinePlugin(epochs, base_lr)


def placeholder_params() -> list[nn.Parameter]:
    """One empty parameter to build an optimiser over before the model has grown: Avalanche refills the
    optimiser with the model's parameters at each experience."""
    return [nn.Parameter(torch.zeros(0))]


def sgd(params, opts: Any) -> torch.optim.SGD:
    """The reference optimiser: SGD, momentum 0.9, weight decay 5e-4.

    A builder passes :func:`placeholder_params`: ``sgd(placeholder_params(), opts)``.
    """
    return torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=5e-4)


def make_optimizer(kind: Literal["sgd", "adam", "adamw"], lr: float, weight_decay: float = 0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """An optimiser of ``kind`` over :func:`placeholder_params`, which Avalanche refills with the model's
    parameters.

    Args:
        kind: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``.
        lr: the learning rate.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: SGD's momentum (ignored by the others).
    """
    placeholder = placeholder_params()
    if kind == "adam":
        return torch.optim.Adam(placeholder, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(placeholder, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(placeholder, lr=lr, momentum=momentum, weight_decay=weight_decay)


def idle_optimizer() -> torch.optim.Optimizer:
    """An optimiser for a template that trains nothing (it overrides ``make_optimizer``): the template
    wants one. Plain SGD at learning rate 0."""
    return make_optimizer("sgd", 0.0, momentum=0)
