"""What every strategy shares: the context it is built in, the LR schedule, progress and accuracy plugins.

A strategy builder receives a :class:`StrategyContext` and its options and
returns an Avalanche ``SupervisedTemplate``; ``ctx.template_kwargs(opts)``
gives the template arguments the runner needs (device, batch sizes, epochs, and
the plugins that collect accuracy, draw progress bars and come from the YAML).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from avalanche.training.plugins import SupervisedPlugin

from lamm_cl.errors import ConfigError
from lamm_cl.model.clip import FrozenCLIP


@dataclass
class StrategyContext:
    """Everything a strategy builder may use.

    Attributes:
        clip: the frozen CLIP bundle (image/text encoders, tokenizer, logit scale).
        class_names: names of every class of the benchmark, by label (label = position in the class order).
        template: the benchmark's prompt template, with ``{}`` for the class name.
        device: where to train.
        seed: the run's seed.
        shots: training images per class when few-shot, else None.
        plugins: plugins the runner attaches (accuracy, progress); the builder passes them on
            through :meth:`template_kwargs`.
        eval_batch_size: mini-batch for evaluation.
    """

    clip: FrozenCLIP
    class_names: list[str]
    template: str
    device: torch.device
    seed: int
    shots: Optional[int] = None
    plugins: list = field(default_factory=list)
    eval_batch_size: int = 256

    def template_kwargs(self, opts: Any, **override: Any) -> dict:
        """Keyword arguments for a ``SupervisedTemplate``: device, batch sizes, epochs, plugins.

        The plugins are the runner's plus the Avalanche plugins named in ``opts.plugins``.
        """
        kw = dict(
            train_mb_size=opts.batch_size,
            train_epochs=opts.epochs,
            eval_mb_size=self.eval_batch_size,
            device=self.device,
            plugins=[*self.plugins, *build_avalanche_plugins(getattr(opts, "plugins", []))],
            evaluator=None,
        )
        kw.update(override)
        return kw


# ---------------------------------------------------------------------------
# Avalanche plugins by name, from the YAML
# ---------------------------------------------------------------------------

def _avalanche_plugins() -> dict[str, Callable]:
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin

    return {"replay": ReplayPlugin, "lwf": LwFPlugin, "ewc": EWCPlugin}


def build_avalanche_plugins(specs: list[dict], path: str = "plugins") -> list:
    """Instantiate Avalanche plugins from ``[{name: replay, mem_size: 2000}, ...]``.

    Raises:
        ConfigError: an unknown plugin name or parameter (the message lists the valid ones).
    """
    known = _avalanche_plugins()
    out = []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in known:
            raise ConfigError(f"{path}[{i}].name: unknown plugin {name!r}; known: {', '.join(sorted(known))}")
        cls = known[name]
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        bad = [k for k in spec if k not in params]
        if bad:
            raise ConfigError(f"{path}[{i}].{bad[0]}: unknown parameter of {name}; known: {', '.join(params)}")
        try:
            out.append(cls(**spec))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}[{i}]: {name}: {e}") from None
    return out


# ---------------------------------------------------------------------------
# learning-rate schedule
# ---------------------------------------------------------------------------

def warmup_cosine(epochs: int, base_lr: float, warmup_lr: float = 1e-5) -> Callable[[int], float]:
    """LR factor per epoch: one warm-up epoch at ``warmup_lr`` (when there is more than one epoch),
    then cosine annealing over the experience's epochs, as CoOp and LAMM train."""

    def factor(epoch: int) -> float:
        if epochs > 1 and epoch == 0 and base_lr > 0:
            return warmup_lr / base_lr
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))

    return factor


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
    """The reference schedule as a plugin: one warm-up epoch at 1e-5, then cosine, every experience."""
    return WarmupCosinePlugin(epochs, base_lr)


def sgd(params, opts: Any) -> torch.optim.SGD:
    """The reference optimiser: SGD, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=5e-4)


# ---------------------------------------------------------------------------
# plugins the runner attaches
# ---------------------------------------------------------------------------

class AccuracyPlugin(SupervisedPlugin):
    """Counts correct top-1 predictions per class during evaluation, among the first ``n_seen`` labels."""

    def __init__(self):
        super().__init__()
        self.n_seen = 0
        self.correct: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def reset(self, n_seen: int) -> None:
        self.n_seen = n_seen
        self.correct, self.total = {}, {}

    def after_eval_iteration(self, strategy, **kwargs):
        logits = strategy.mb_output[:, : self.n_seen]
        pred = logits.argmax(dim=1).cpu()
        y = strategy.mb_y.cpu()
        for c in y.unique().tolist():
            m = y == c
            self.correct[c] = self.correct.get(c, 0) + int((pred[m] == c).sum())
            self.total[c] = self.total.get(c, 0) + int(m.sum())


class ProgressPlugin(SupervisedPlugin):
    """tqdm bars for training epochs and evaluation (to stderr), plus a NaN/inf loss check."""

    def __init__(self, label: str, enabled: bool = True):
        super().__init__()
        self.label = label
        self.enabled = enabled
        self.bar = None

    def _open(self, strategy, desc: str):
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(strategy.dataloader), desc=desc, leave=False, unit="batch")

    def before_training_epoch(self, strategy, **kwargs):
        self._open(strategy, f"{self.label} exp {strategy.experience.current_experience} "
                             f"epoch {strategy.clock.train_exp_epochs + 1}/{strategy.train_epochs}")

    def after_training_iteration(self, strategy, **kwargs):
        loss = float(strategy.loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.label}: loss became {loss} in experience "
                                     f"{strategy.experience.current_experience}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def after_training_epoch(self, strategy, **kwargs):
        self._close()

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
