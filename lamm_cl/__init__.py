"""lamm-cl: continual-learning benchmarks for CLIP, centred on LAMM label alignment.

The public API a strategy plugin needs, importable from ``lamm_cl``:

* registering: :func:`register_strategy`, :class:`StrategyOptions` (subclass it,
  as a dataclass, for your own YAML keys), :class:`StrategySpec`,
  :func:`get_strategy`, :func:`list_strategies`;
* what a builder receives: :class:`StrategyContext` -- the frozen CLIP bundle
  (``ctx.clip``: :class:`FrozenCLIP` with image and text encoders, tokenizer and
  ``logit_scale``), the benchmark's ``class_names`` and prompt ``template``, the
  device and seed -- and ``ctx.template_kwargs(opts)``, the keyword arguments with
  which the builder hands back an Avalanche ``SupervisedTemplate``;
* building blocks: :class:`ClassPrompts`, :class:`PromptEncoder`,
  :class:`PromptClassifier`, :class:`LabelTable`, :func:`normalize`;
* the LAMM loss: :func:`lamm_loss`, :class:`LammWeights`, :func:`param_loss`,
  :func:`feature_loss`, :func:`logits_loss`;
* errors: :class:`ConfigError` (raise it from ``StrategyOptions.validate``),
  :class:`UserError`;
* from a notebook: :func:`run` (what ``lamm-cl run`` does, raising instead of
  exiting) and :func:`load_results` (a results or sweep folder as pandas
  tables, with paired :meth:`Results.compare`).

Importing ``lamm_cl`` is cheap and has no side effects: each name is imported
from its module on first use (torch and Avalanche load only then).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "register_strategy": "lamm_cl.registry",
    "StrategyOptions": "lamm_cl.registry",
    "StrategySpec": "lamm_cl.registry",
    "get_strategy": "lamm_cl.registry",
    "list_strategies": "lamm_cl.registry",
    "StrategyContext": "lamm_cl.training",
    "FrozenCLIP": "lamm_cl.model.clip",
    "normalize": "lamm_cl.model.clip",
    "ClassPrompts": "lamm_cl.model.prompts",
    "PromptEncoder": "lamm_cl.model.prompts",
    "LabelTable": "lamm_cl.model.labels",
    "PromptClassifier": "lamm_cl.model.classifier",
    "lamm_loss": "lamm_cl.losses",
    "LammWeights": "lamm_cl.losses",
    "param_loss": "lamm_cl.losses",
    "feature_loss": "lamm_cl.losses",
    "logits_loss": "lamm_cl.losses",
    "ConfigError": "lamm_cl.errors",
    "UserError": "lamm_cl.errors",
    "run": "lamm_cl.api",
    "load_results": "lamm_cl.api",
    "Results": "lamm_cl.api",
    "Comparison": "lamm_cl.stats",
}

__all__ = [  # spelled out (not built from _EXPORTS) so linters see what the TYPE_CHECKING imports export
    "register_strategy", "StrategyOptions", "StrategySpec", "get_strategy", "list_strategies",
    "StrategyContext", "FrozenCLIP", "normalize", "ClassPrompts", "PromptEncoder", "LabelTable",
    "PromptClassifier", "lamm_loss", "LammWeights", "param_loss", "feature_loss", "logits_loss",
    "ConfigError", "UserError", "run", "load_results", "Results", "Comparison", "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from lamm_cl.api import Results, load_results, run
    from lamm_cl.errors import ConfigError, UserError
    from lamm_cl.losses import LammWeights, feature_loss, lamm_loss, logits_loss, param_loss
    from lamm_cl.model.classifier import PromptClassifier
    from lamm_cl.model.clip import FrozenCLIP, normalize
    from lamm_cl.model.labels import LabelTable
    from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
    from lamm_cl.stats import Comparison
    from lamm_cl.registry import (StrategyOptions, StrategySpec, get_strategy, list_strategies,
                                  register_strategy)
    from lamm_cl.training import StrategyContext


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lamm_cl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
