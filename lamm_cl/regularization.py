"""Avalanche's LwF and EWC, fixed for models around a shared frozen CLIP.

:class:`LwFPlugin`'s teacher shares the frozen CLIP instead of deep-copying it
(:func:`_teacher_memo`) and runs in eval mode; :class:`EWCPlugin` computes importances with
prompt classifiers in training mode, and zero importances when nothing trains.
"""
from __future__ import annotations

import copy

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import EWCPlugin as _AvalancheEWC
from avalanche.training.plugins import LwFPlugin as _AvalancheLwF
from avalanche.training.regularization import LearningWithoutForgetting
from avalanche.training.utils import zerolike_params_dict

from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.clip import FrozenCLIP


def _teacher_memo(model: torch.nn.Module) -> dict:
    """A ``copy.deepcopy`` memo for copying a model as a frozen teacher.

    What the model holds of a frozen CLIP is shared, not copied: the :class:`FrozenCLIP` objects
    it references outside nn.Module's registry (a PromptClassifier's) and plain tensor attributes
    that alias their weights (a LabelTable's word embeddings). Plain tensors left over from the
    last forward pass (a PromptClassifier's ``last_text``) are carried detached: torch cannot
    deep-copy a tensor that is part of a graph.
    """
    clips = {}
    for m in model.modules():
        for v in vars(m).values():
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(item, FrozenCLIP):
                    clips[id(item)] = item
    storages = {p.untyped_storage().data_ptr() for c in clips.values() for p in c.model.parameters()}
    memo = dict(clips)
    for m in model.modules():
        for v in vars(m).values():
            if type(v) is not torch.Tensor:
                continue
            if v.untyped_storage().data_ptr() in storages:
                memo[id(v)] = v
            elif v.grad_fn is not None:
                memo[id(v)] = v.detach()
    return memo


class _SharedClipLwF(LearningWithoutForgetting):
    def post_adapt(self, agent, exp):
        # Avalanche deep-copies the whole model as the teacher; the frozen CLIP behind a prompt
        # model never trains, so the copy shares it. The teacher runs in eval mode, where its
        # text features are encoded once and cached.
        self.expcount += 1
        self.prev_model = copy.deepcopy(agent.model, _teacher_memo(agent.model))
        self.prev_model.eval()
        for task_id in exp.dataset.targets_task_labels.uniques:
            seen = set(exp.dataset.task_set[task_id].targets.uniques)
            self.prev_classes_by_task[task_id] = self.prev_classes_by_task[task_id] | seen


class LwFPlugin(_AvalancheLwF):
    """Avalanche's LwF (``alpha``, ``temperature``) whose teacher shares the frozen CLIP and runs in eval mode."""

    def __init__(self, alpha=1, temperature=2):
        super().__init__(alpha, temperature)
        self.lwf = _SharedClipLwF(alpha, temperature)


class EWCPlugin(_AvalancheEWC):
    """Avalanche's EWC (``ewc_lambda``, ``mode``, ``decay_factor``, ``keep_importance_data``), fixed for
    prompt models and for experiences that train nothing.

    Avalanche computes importances in eval mode, where a :class:`PromptClassifier` serves every text
    feature from its cache, so the loss would have no gradient; here prompt classifiers stay in
    training mode for that pass (they have no dropout or batch norm). An experience with no
    trainable parameter (a frozen CoOp context) gets zero importances instead of a crash.
    """

    def compute_importances(self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0):
        importances = zerolike_params_dict(model)
        if not any(p.requires_grad for p in model.parameters()):
            return importances
        model.eval()
        for m in model.modules():
            if isinstance(m, PromptClassifier):
                m.train()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                             collate_fn=getattr(dataset, "collate_fn", None))
        for batch in loader:
            x, y, task_labels = batch[0].to(device), batch[1].to(device), batch[-1]
            optimizer.zero_grad()
            loss = criterion(avalanche_forward(model, x, task_labels), y)
            loss.backward()
            for k, p in model.named_parameters():
                if p.grad is not None:
                    importances[k].data += p.grad.detach().pow(2)
        for imp in importances.values():
            imp.data /= float(max(1, len(loader)))
        optimizer.zero_grad()
        model.train()
        return importances
