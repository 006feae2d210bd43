"""The plugins the runner attaches to every strategy: accuracy counts and progress.

:class:`AccuracyPlugin` counts correct predictions per class during evaluation;
:class:`ProgressPlugin` draws progress (bars on a terminal, one line per epoch otherwise, see
:func:`lines_mode`) and stops on a NaN/inf loss.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional

import torch
from avalanche.training.plugins import SupervisedPlugin


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


def lines_mode() -> bool:
    """True when stderr is not a terminal (a log file, a cluster job): progress is then one line per
    epoch, never carriage-return bars, which turn a log into one endless line."""
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


class ProgressPlugin(SupervisedPlugin):
    """Progress of training epochs and evaluation (to stderr), plus a NaN/inf loss check.

    On a terminal: tqdm bars. Otherwise (``lines``; default: stderr is not a terminal): one
    line per training epoch with its mean loss; the runner logs one line per experience.
    """

    def __init__(self, label: str, enabled: bool = True, lines: Optional[bool] = None):
        super().__init__()
        self.label = label
        self.enabled = enabled
        self.lines = lines_mode() if lines is None else lines
        self.bar = None
        self._loss, self._steps, self._start = 0.0, 0, 0.0

    def _open(self, strategy, desc: str):
        if not self.enabled or self.lines:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(strategy.dataloader), desc=desc, leave=False, unit="batch")

    def _epoch_text(self, strategy) -> str:
        return (f"{self.label} exp {strategy.experience.current_experience} "
                f"epoch {strategy.clock.train_exp_epochs + 1}/{strategy.train_epochs}")

    def before_training_epoch(self, strategy, **kwargs):
        self._loss, self._steps, self._start = 0.0, 0, time.perf_counter()
        self._open(strategy, self._epoch_text(strategy))

    def after_training_iteration(self, strategy, **kwargs):
        loss = float(strategy.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.label}: loss became {loss} in experience "
                                     f"{strategy.experience.current_experience}")
        self._loss += loss
        self._steps += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def after_training_epoch(self, strategy, **kwargs):
        self._close()
        if self.enabled and self.lines:
            mean = self._loss / self._steps if self._steps else float("nan")
            print(f"  {self._epoch_text(strategy)}: loss {mean:.4f}, {self._steps} steps, "
                  f"{time.perf_counter() - self._start:.1f}s", file=sys.stderr, flush=True)

    def before_eval_exp(self, strategy, **kwargs):
        self._open(strategy, f"{self.label} eval exp {strategy.experience.current_experience}")

    def after_eval_iteration(self, strategy, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def after_eval_exp(self, strategy, **kwargs):
        self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
