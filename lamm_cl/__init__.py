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
  :class:`PromptClassifier`, :class:`MapleClassifier`, :class:`LabelTable`,
  :func:`normalize`;
* the strategy kit (``lamm_cl.strategy_kit``), what the built-in strategies are
  made of: the reference's recipe (:func:`sgd`, :func:`lr_schedule_plugin`,
  :func:`warmup_cosine`, :class:`WarmupCosinePlugin`, :class:`DropLastPartialBatch`,
  and what a template is built with before its model has grown:
  :func:`placeholder_params`, :func:`make_optimizer`, :func:`idle_optimizer`); the
  CoOp and MaPLe prompt families (:class:`CoopOptions`, :func:`shared_context`,
  :class:`MapleOptions`, :func:`maple_prompts`, :class:`PromptTemplate`,
  :class:`MapleTemplate`, :func:`prompt_plugins`, :class:`FreezeAfterFirstPlugin`);
  LAMM on any of them (:class:`LossOptions`, :class:`LammKeys`, :class:`LammOptions`,
  :func:`lamm_objective`, :class:`LammCriterion`, :class:`LammTemplate`,
  :func:`lamm_model`, :func:`lamm_template`, :data:`LAMM_TEMPLATE`); statistics
  strategies (:class:`SeenClasses`, :class:`StatisticsTemplate`);
  :class:`GrowingHead`; and :class:`StrategySetup`, what ``check_setup`` of a
  strategy's options checks them against before anything trains;
* the LAMM loss: :func:`lamm_loss`, :class:`LammWeights`, :func:`param_loss`,
  :func:`feature_loss`, :func:`logits_loss`;
* errors: :class:`ConfigError` (raise it from ``StrategyOptions.validate`` or ``check_setup``),
  :class:`UserError`;
* from a notebook: :func:`run` (what ``lamm-cl run`` does, raising instead of
  exiting), :func:`load_results` (a results or sweep folder as pandas
  tables, with paired :meth:`Results.compare`) and :func:`load_model` (the
  classifier a run kept with ``save_model: true``, as a :class:`SavedModel`).

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
    "StrategyContext": "lamm_cl.strategy_kit.context",
    "FrozenCLIP": "lamm_cl.model.clip",
    "normalize": "lamm_cl.model.clip",
    "ClassPrompts": "lamm_cl.model.prompts",
    "PromptEncoder": "lamm_cl.model.prompts",
    "LabelTable": "lamm_cl.model.labels",
    "PromptClassifier": "lamm_cl.model.classifier",
    "MapleClassifier": "lamm_cl.model.deep_prompts",
    "lamm_loss": "lamm_cl.losses",
    "LammWeights": "lamm_cl.losses",
    "param_loss": "lamm_cl.losses",
    "feature_loss": "lamm_cl.losses",
    "logits_loss": "lamm_cl.losses",
    "ConfigError": "lamm_cl.errors",
    "UserError": "lamm_cl.errors",
    "run": "lamm_cl.api",
    "load_results": "lamm_cl.api",
    "load_model": "lamm_cl.saved_model",
    "SavedModel": "lamm_cl.saved_model",
    "Results": "lamm_cl.api",
    "Comparison": "lamm_cl.stats",
    # the strategy kit
    "warmup_cosine": "lamm_cl.strategy_kit.recipe",
    "DropLastPartialBatch": "lamm_cl.strategy_kit.recipe",
    "WarmupCosinePlugin": "lamm_cl.strategy_kit.recipe",
    "lr_schedule_plugin": "lamm_cl.strategy_kit.recipe",
    "make_optimizer": "lamm_cl.strategy_kit.recipe",
    "sgd": "lamm_cl.strategy_kit.recipe",
    "placeholder_params": "lamm_cl.strategy_kit.recipe",
    "idle_optimizer": "lamm_cl.strategy_kit.recipe",
    "CoopOptions": "lamm_cl.strategy_kit.options",
    "MapleOptions": "lamm_cl.strategy_kit.options",
    "shared_context": "lamm_cl.strategy_kit.prompt_learning",
    "maple_prompts": "lamm_cl.strategy_kit.prompt_learning",
    "FreezeAfterFirstPlugin": "lamm_cl.strategy_kit.prompt_learning",
    "PromptTemplate": "lamm_cl.strategy_kit.prompt_learning",
    "MapleTemplate": "lamm_cl.strategy_kit.prompt_learning",
    "prompt_plugins": "lamm_cl.strategy_kit.prompt_learning",
    "LossOptions": "lamm_cl.strategy_kit.options",
    "LammKeys": "lamm_cl.strategy_kit.options",
    "LammOptions": "lamm_cl.strategy_kit.options",
    "LAMM_TEMPLATE": "lamm_cl.strategy_kit.options",
    "lamm_template": "lamm_cl.strategy_kit.lamm",
    "lamm_objective": "lamm_cl.strategy_kit.lamm",
    "LammCriterion": "lamm_cl.strategy_kit.lamm",
    "LammTemplate": "lamm_cl.strategy_kit.lamm",
    "lamm_model": "lamm_cl.strategy_kit.lamm",
    "SeenClasses": "lamm_cl.strategy_kit.statistics",
    "StatisticsTemplate": "lamm_cl.strategy_kit.statistics",
    "GrowingHead": "lamm_cl.strategy_kit.heads",
    "StrategySetup": "lamm_cl.strategy_kit.setup",
}

__all__ = [  # spelled out (not built from _EXPORTS) so linters see what the TYPE_CHECKING imports export
    "register_strategy", "StrategyOptions", "StrategySpec", "get_strategy", "list_strategies",
    "StrategyContext", "FrozenCLIP", "normalize", "ClassPrompts", "PromptEncoder", "LabelTable",
    "PromptClassifier", "MapleClassifier", "lamm_loss", "LammWeights", "param_loss", "feature_loss", "logits_loss",
    "ConfigError", "UserError", "run", "load_results", "load_model", "SavedModel", "Results", "Comparison", "__version__",
    "warmup_cosine", "DropLastPartialBatch", "WarmupCosinePlugin", "lr_schedule_plugin", "make_optimizer", "sgd",
    "placeholder_params", "idle_optimizer", "CoopOptions", "MapleOptions", "shared_context", "maple_prompts", "FreezeAfterFirstPlugin",
    "PromptTemplate", "MapleTemplate", "prompt_plugins", "LossOptions", "LammKeys", "LammOptions", "LAMM_TEMPLATE",
    "lamm_template", "lamm_objective", "LammCriterion", "LammTemplate", "lamm_model", "SeenClasses",
    "StatisticsTemplate", "GrowingHead", "StrategySetup",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from lamm_cl.api import Results, load_results, run
    from lamm_cl.errors import ConfigError, UserError
    from lamm_cl.losses import LammWeights, feature_loss, lamm_loss, logits_loss, param_loss
    from lamm_cl.model.classifier import PromptClassifier
    from lamm_cl.model.clip import FrozenCLIP, normalize
    from lamm_cl.model.deep_prompts import MapleClassifier
    from lamm_cl.model.labels import LabelTable
    from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
    from lamm_cl.stats import Comparison
    from lamm_cl.saved_model import SavedModel, load_model
    from lamm_cl.registry import (StrategyOptions, StrategySpec, get_strategy, list_strategies,
                                  register_strategy)
    from lamm_cl.strategy_kit.context import StrategyContext
    from lamm_cl.strategy_kit.heads import GrowingHead
    from lamm_cl.strategy_kit.lamm import LammCriterion, LammTemplate, lamm_model, lamm_objective, lamm_template
    from lamm_cl.strategy_kit.options import LAMM_TEMPLATE, CoopOptions, LammKeys, LammOptions, LossOptions, MapleOptions
    from lamm_cl.strategy_kit.prompt_learning import (FreezeAfterFirstPlugin, MapleTemplate, PromptTemplate,
                                                      maple_prompts, prompt_plugins, shared_context)
    from lamm_cl.strategy_kit.setup import StrategySetup
    from lamm_cl.strategy_kit.recipe import (DropLastPartialBatch, WarmupCosinePlugin, idle_optimizer,
                                             lr_schedule_plugin, make_optimizer, placeholder_params, sgd,
                                             warmup_cosine)
    from lamm_cl.strategy_kit.statistics import SeenClasses, StatisticsTemplate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lamm_cl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
