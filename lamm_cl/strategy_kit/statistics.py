"""For strategies whose training is a pass that collects statistics (SimpleCIL, RanPAC, RAPF's head).

:class:`SeenClasses` tracks which classes have been seen and cuts a model's scores to them;
:class:`StatisticsTemplate` trains by handing every batch to ``model.update(x, y)``, with no loss
and no optimiser step (build it with :func:`lamm_cl.strategy_kit.recipe.idle_optimizer`).
"""
from __future__ import annotations

import torch
from avalanche.models import DynamicModule
from avalanche.training.templates import SupervisedTemplate


class SeenClasses(DynamicModule):
    """Keeps ``seen``, a flag per benchmark class, set for the classes of every experience adapted to.

    The model's output has one column per seen class: labels ``0..n_seen-1``, the benchmark's
    class order (a class that is not flagged yet gets ``-inf``, so it never wins).
    """

    def __init__(self, n_classes: int):
        super().__init__()
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def adaptation(self, experience) -> None:
        """Avalanche hook, before training and evaluating an experience: flag its classes."""
        for c in experience.classes_in_this_experience:
            self.seen[int(c)] = True

    @property
    def n_seen(self) -> int:
        """Output width: one past the largest seen label (0 before any experience)."""
        idx = torch.nonzero(self.seen).flatten()
        return int(idx.max()) + 1 if len(idx) else 0

    def restrict(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores [B, n_classes]`` cut to the seen columns, unseen ones (gaps) at ``-inf``."""
        n = self.n_seen
        return scores[:, :n].masked_fill(~self.seen[:n], float("-inf"))


class StatisticsTemplate(SupervisedTemplate):
    """A template whose training is a pass that hands every batch to ``model.update(x, y)``:
    no loss, no backward, no optimiser step. After the experience's last pass it calls
    ``model.finish_experience()`` when the model has one (RanPAC solves its ridge there)."""

    def make_optimizer(self, **kwargs):
        pass  # nothing to optimise

    def training_epoch(self, **kwargs):
        for self.mbatch in self.dataloader:  # noqa: B020 (Avalanche's own loop form: plugins read self.mbatch)
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self.model.update(self.mb_x, self.mb_y)
            self.loss = self._make_empty_loss()  # plugins read the loss after each iteration
            self._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs):
        finish = getattr(self.model, "finish_experience", None)
        if finish is not None:
            finish()
        super()._after_training_exp(**kwargs)
