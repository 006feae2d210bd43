"""What a run shows while it works: the training and evaluation progress of each strategy
(:class:`ProgressPlugin`, which also stops a run whose loss stops being finite), the feature
extractor's progress (:func:`progress_bar`), and whether stderr gets bars or plain lines."""
from __future__ import annotations

import math
import sys
import time
from typing import Optional

from avalanche.training.plugins import SupervisedPlugin


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
        return (f"{self.label} experience {strategy.experience.current_experience} "
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
        self._open(strategy, f"{self.label} eval experience {strategy.experience.current_experience}")

    def after_eval_iteration(self, strategy, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def after_eval_exp(self, strategy, **kwargs):
        self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_bar(iterable, total: int, desc: str):
    """``iterable`` with a tqdm bar of ``total`` batches, or, in :func:`lines_mode`, one line once done."""
    if lines_mode():  # a log file: one line when done, no carriage-return bar
        return _lines(iterable, total, desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, unit="batch")


def _lines(iterable, total: int, desc: str):
    started = time.perf_counter()
    yield from iterable
    print(f"  {desc}: {total} batches, {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
