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
        self.task_from_experience = False  # True: each evaluated experience's own classes are its task

    def before_eval_exp(self, strategy, **kwargs):
        if self.task_from_experience:
            self.task_classes = sorted(int(c) for c in strategy.experience.classes_in_this_experience)

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


def scoring_copy(model: torch.nn.Module, clip) -> torch.nn.Module:
    """A copy of ``model`` to adapt to classes it has not trained and score them, leaving ``model`` as it was.

    Avalanche adapts a model to every experience it evaluates (a prompt classifier adds the experience's
    classes, a label table adds trainable vectors for them); done on the model being trained, that would
    make the next experience's classes look already known. The copy shares the frozen CLIP (its modules,
    parameters and buffers are not copied), and tensors still tied to the last training step's graph
    (caches a forward keeps) are copied detached.
    """
    import copy

    memo: dict = {}
    frozen = getattr(clip, "model", None)
    memo[id(clip)] = clip
    if isinstance(frozen, torch.nn.Module):
        memo[id(frozen)] = frozen
        for m in frozen.modules():
            memo[id(m)] = m
        for t in [*frozen.parameters(), *frozen.buffers()]:
            memo[id(t)] = t
    _detach_graph_tensors(model, memo, set(), depth=0)
    return copy.deepcopy(model, memo)


def _detach_graph_tensors(obj, memo: dict, seen: set, depth: int) -> None:
    """Map every non-leaf tensor reachable from ``obj``'s attributes to a detached copy in ``memo`` (deepcopy
    refuses tensors that are not graph leaves)."""
    if depth > 6 or id(obj) in seen or id(obj) in memo:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.grad_fn is not None:
            memo[id(obj)] = obj.detach().clone()
        return
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = list(vars(obj).values())
    else:
        return
    for v in items:
        _detach_graph_tensors(v, memo, seen, depth + 1)


def evaluate_sequence(template, test_stream, t: int, plan, acc: AccuracyPlugin, scores_unseen: bool,
                      clip) -> tuple[list[float], dict, list[float]]:
    """After training experience ``t`` of a sequence of datasets: the accuracy (%) on every dataset.

    A strategy that scores unseen classes (``scores_unseen``) is measured on every dataset of the sequence,
    the ones not trained yet included, with a copy of its model adapted to every dataset in order (so its
    columns are the sequence's labels, :func:`scoring_copy`); the others on the datasets trained so far only
    (NaN for the rest). Frozen-feature strategies read cached test features, so each cell costs their
    classifier (text encodings, once per copy) and a matrix product, never an image pass.

    Returns:
        ``(row, per_class, row_task_aware)``: ``row[d]`` is the protocol's accuracy (``plan.evaluation``:
        ``task_aware`` among dataset d's classes, ``all_classes`` among every class of the sequence),
        ``row_task_aware[d]`` the task-aware one, and ``per_class`` the protocol's accuracy per class.
    """
    from avalanche.models.utils import avalanche_model_adaptation

    T = plan.n_experiences
    task_aware = plan.evaluation == "task_aware"
    row, row_ta, per_class = [float("nan")] * T, [float("nan")] * T, {}
    model = template.model
    if scores_unseen:
        scorer = scoring_copy(model, clip)
        for d in range(t + 1, T):  # in order: the copy's columns stay the sequence's labels
            avalanche_model_adaptation(scorer, test_stream[d])
        template.model, upto, columns = scorer, T, plan.n_classes
    else:
        upto, columns = t + 1, sum(len(e) for e in plan.experiences[: t + 1])
    # One evaluation pass over every dataset: a prompt classifier encodes its classes' text once for all of
    # them (entering evaluation clears its cache). The datasets' classes are disjoint, so per-class counts
    # give each dataset's accuracy; the task-aware argmax takes each experience's own classes.
    acc.reset(columns)
    acc.task_from_experience = True
    try:
        template.eval([test_stream[d] for d in range(upto)])
    finally:
        acc.task_from_experience, acc.task_classes = False, None
        template.model = model
    for d in range(upto):
        classes = plan.experiences[d]
        n = sum(acc.total.get(k, 0) for k in classes)
        c = sum(acc.correct.get(k, 0) for k in classes)
        c_ta = sum(acc.correct_task_aware.get(k, 0) for k in classes)
        row_ta[d] = 100.0 * c_ta / n if n else float("nan")
        row[d] = row_ta[d] if task_aware else (100.0 * c / n if n else float("nan"))
    for k, n in acc.total.items():
        per_class[k] = 100.0 * (acc.correct_task_aware if task_aware else acc.correct).get(k, 0) / n
    return row, per_class, row_ta
