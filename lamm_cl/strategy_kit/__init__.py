"""The strategy kit: what the built-in strategies are made of, for plugins to build on alike.

* :mod:`~lamm_cl.strategy_kit.context` -- :class:`StrategyContext`, what a builder receives;
* :mod:`~lamm_cl.strategy_kit.recipe` -- the reference's Dassl recipe (SGD, warm-up + cosine, the
  dropped last batch) and the placeholder optimisers a template is built with;
* :mod:`~lamm_cl.strategy_kit.prompt_learning` -- the CoOp and MaPLe prompt families: options,
  prompt builders, their template and plugins;
* :mod:`~lamm_cl.strategy_kit.lamm` -- LAMM's options, objective and template for any prompt family;
* :mod:`~lamm_cl.strategy_kit.statistics` -- strategies that train by collecting statistics;
* :mod:`~lamm_cl.strategy_kit.heads` -- a linear head that grows with the classes.

Every public name is exported from ``lamm_cl`` itself (imported on first use).
"""
