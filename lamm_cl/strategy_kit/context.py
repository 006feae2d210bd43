"""What a strategy builder receives: :class:`StrategyContext`.

A builder gets the context and its options and returns an Avalanche ``SupervisedTemplate``;
``ctx.template_kwargs(opts)`` gives the template arguments the runner needs (device, batch sizes,
epochs, and the plugins that collect accuracy, draw progress bars and come from the YAML).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from lamm_cl.avalanche_plugins import build_avalanche_plugins
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
        n_experiences: the benchmark's number of experiences (LAMM's ``loss.param: auto`` reads it).
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
    n_experiences: int = 1
    plugins: list = field(default_factory=list)
    eval_batch_size: int = 256
    evaluator: Any = None  # an Avalanche EvaluationPlugin carrying the YAML's `loggers:`, or None

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
            evaluator=self.evaluator,
        )
        kw.update(override)
        return kw

