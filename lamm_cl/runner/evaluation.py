"""How a run measures a strategy after each experience: the accuracy on every experience seen so far,
predicting among every class seen so far (class-incremental) and among the experience's own classes
(task-aware), both counted from the same logits by :class:`AccuracyPlugin`."""
from __future__ import annotations

from typing import Optional

import torch
from avalanche.training.plugins import SupervisedPlugin

from lamm_cl.benchmark import Plan, seen_classes


class AccuracyPlugin(SupervisedPlugin):
    """Counts correct top-1 predictions per class during evaluation, among the first ``n_seen`` labels
    (class-incremental), and, when ``task_classes`` is set, among those classes only (task-aware).

    Both come from the same logits, so the task-aware count costs no second evaluation pass: it
    restricts the argmax to the columns of the experience being evaluated.
    """

    def __init__(self):
        super().__init__()
        self.n_seen = 0
        self.task_classes: Optional[list[int]] = None  # the evaluated experience's labels; None: no task-aware count
        self.correct: dict[int, int] = {}
        self.correct_task_aware: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def reset(self, n_seen: int) -> None:
        self.n_seen = n_seen
        self.correct, self.correct_task_aware, self.total = {}, {}, {}

    def after_eval_iteration(self, strategy, **kwargs):
        logits = strategy.mb_output[:, : self.n_seen]
        pred = logits.argmax(dim=1).cpu()
        y = strategy.mb_y.cpu()
        pred_ta = None
        if self.task_classes is not None:
            cols = torch.as_tensor(self.task_classes, dtype=torch.long, device=logits.device)
            pred_ta = cols[logits.index_select(1, cols).argmax(dim=1)].cpu()
        for c in y.unique().tolist():
            m = y == c
            self.correct[c] = self.correct.get(c, 0) + int((pred[m] == c).sum())
            self.total[c] = self.total.get(c, 0) + int(m.sum())
            if pred_ta is not None:
                self.correct_task_aware[c] = self.correct_task_aware.get(c, 0) + int((pred_ta[m] == c).sum())


def evaluate(template, test_stream, upto: int, plan: Plan,
             acc: AccuracyPlugin) -> tuple[list[float], dict, list[float]]:
    """Accuracy (%) on each experience 0..upto, predicting among every class seen so far
    (class-incremental), the per-class accuracies, and the task-aware accuracy of each experience:
    its test images predicted among its own classes only (from the same logits)."""
    acc.reset(seen_classes(plan, upto))
    row, row_task_aware = [], []
    for j in range(upto + 1):
        before = dict(acc.correct), dict(acc.total), dict(acc.correct_task_aware)
        classes = plan.experiences[j]
        acc.task_classes = list(classes)
        try:
            template.eval(test_stream[j])
        finally:
            acc.task_classes = None
        c = sum(acc.correct.get(k, 0) - before[0].get(k, 0) for k in classes)
        n = sum(acc.total.get(k, 0) - before[1].get(k, 0) for k in classes)
        c_ta = sum(acc.correct_task_aware.get(k, 0) - before[2].get(k, 0) for k in classes)
        row.append(100.0 * c / n if n else float("nan"))
        row_task_aware.append(100.0 * c_ta / n if n else float("nan"))
    per_class = {k: 100.0 * acc.correct.get(k, 0) / v for k, v in acc.total.items()}
    return row, per_class, row_task_aware
