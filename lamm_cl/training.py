"""What every strategy shares: the context it is built in, the Avalanche plugins and loggers the YAML
names, the LR schedule and the optimiser.

A strategy builder receives a :class:`StrategyContext` and its options and
returns an Avalanche ``SupervisedTemplate``; ``ctx.template_kwargs(opts)``
gives the template arguments the runner needs (device, batch sizes, epochs, and
the plugins that collect accuracy, draw progress bars and come from the YAML).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import EWCPlugin as _AvalancheEWC
from avalanche.training.plugins import LwFPlugin as _AvalancheLwF
from avalanche.training.plugins import ReplayPlugin, SupervisedPlugin
from avalanche.training.regularization import LearningWithoutForgetting
from avalanche.training.utils import zerolike_params_dict

from lamm_cl.errors import ConfigError
from lamm_cl.model.classifier import PromptClassifier
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


# ---------------------------------------------------------------------------
# Avalanche plugins by name, from the YAML
# ---------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The YAML-settable parameters of each plugin: name -> (what it must be, check). Parameters that take
# Python objects (Replay's storage_policy) are left out: they cannot come from a YAML file.
_PLUGIN_PARAMS: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "replay": {
        "mem_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
        "batch_size": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
        "batch_size_mem": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
        "task_balanced_dataloader": ("true or false", lambda v: isinstance(v, bool)),
    },
    "lwf": {
        "alpha": ("a number, or a list of numbers (one per experience)",
                  lambda v: _is_number(v) or (isinstance(v, list) and all(_is_number(a) for a in v))),
        "temperature": ("a positive number", lambda v: _is_number(v) and v > 0),
    },
    "ewc": {
        "ewc_lambda": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
        "mode": ("'separate' or 'online'", lambda v: v in ("separate", "online")),
        "decay_factor": ("a number in [0, 1] (mode: online only) or null",
                         lambda v: v is None or (_is_number(v) and 0 <= v <= 1)),
        "keep_importance_data": ("true or false", lambda v: isinstance(v, bool)),
    },
}
_REQUIRED_PARAMS = {"ewc": ("ewc_lambda",)}  # Avalanche gives these no default


def _avalanche_plugins() -> dict[str, Callable]:
    return {"replay": ReplayPlugin, "lwf": LwFPlugin, "ewc": EWCPlugin}


def build_avalanche_plugins(specs: list[dict], path: str = "plugins") -> list:
    """Instantiate Avalanche plugins from ``[{name: replay, mem_size: 2000}, ...]``.

    ``replay`` is Avalanche's ``ReplayPlugin``; ``lwf`` and ``ewc`` are Avalanche's plugins
    with fixes for CLIP models (:class:`LwFPlugin`, :class:`EWCPlugin`). Their parameters
    are Avalanche's.

    Raises:
        ConfigError: an unknown plugin name or parameter, a missing or bad value
            (the message names ``path[i].key`` and lists the valid choices).
    """
    known = _avalanche_plugins()
    out = []
    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with a `name`, e.g. {{name: replay, mem_size: 2000}}")
        spec = dict(spec)  # never mutate the caller's config
        name = spec.pop("name", None)
        if name not in known:
            raise ConfigError(f"{where}.name: unknown plugin {name!r}; known: {', '.join(sorted(known))}")
        params = _PLUGIN_PARAMS[name]
        for key, value in spec.items():
            if key not in params:
                raise ConfigError(f"{where}.{key}: unknown parameter of {name}; known: {', '.join(params)}")
            what, ok = params[key]
            if not ok(value):
                raise ConfigError(f"{where}.{key}: expected {what}, got {value!r}")
        for key in _REQUIRED_PARAMS.get(name, ()):
            if key not in spec:
                raise ConfigError(f"{where}.{key}: required by {name}, e.g. {{name: {name}, {key}: ...}}")
        try:
            out.append(known[name](**spec))
        except (TypeError, ValueError, AssertionError) as e:  # Avalanche checks combinations with asserts
            raise ConfigError(f"{where}: {name}: {e}") from None
    return out


# ---------------------------------------------------------------------------
# Avalanche loggers by name, from the YAML's `loggers:`
# ---------------------------------------------------------------------------

# name -> (Avalanche class, the package it needs, its folder parameter, the folder in the run folder)
_LOGGERS = {
    "tensorboard": ("TensorboardLogger", "tensorboard", "tb_log_dir", "tensorboard"),
    "wandb": ("WandBLogger", "wandb", "dir", "."),
    "csv": ("CSVLogger", None, "log_folder", "csv_logs"),
}


def _logger_class(name: str):
    import avalanche.logging as logging

    if name == "wandb":
        return _wandb_logger()
    return getattr(logging, _LOGGERS[name][0])


def _wandb_logger():
    """Avalanche's WandBLogger, made to work with wandb releases that dropped ``wandb.viz``."""
    from avalanche.logging import WandBLogger

    class WandBLoggerCompat(WandBLogger):
        def log_single_metric(self, name, value, x_plot):
            # Avalanche checks every value against wandb.viz.CustomChart (wandb_logger.py,
            # log_single_metric), which recent wandb lacks; plain numbers need no such check.
            if isinstance(value, (int, float)) and not name.startswith("WeightCheckpoint"):
                self.step = x_plot
                self.wandb.log({name: value}, step=self.step)
            elif hasattr(self.wandb, "viz"):
                super().log_single_metric(name, value, x_plot)

        def close(self):
            self.wandb.finish()

    return WandBLoggerCompat


def close_loggers(evaluator) -> None:
    """Flush and close the loggers of a run's evaluator (tensorboard files, the wandb run)."""
    for lg in getattr(evaluator, "loggers", []) or []:
        close = getattr(lg, "close", None)
        if callable(close):
            close()


def check_loggers(specs: list[dict], path: str = "loggers") -> None:
    """Every entry of ``loggers:`` names a known logger, with its own parameters, whose package is installed.

    Raises:
        ConfigError: one line naming ``loggers[i]`` (and the pip command when a package is missing).
    """
    import importlib.util
    import inspect

    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in _LOGGERS:
            raise ConfigError(f"{where}.name: expected one of {', '.join(_LOGGERS)}, got {name!r}")
        package = _LOGGERS[name][1]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{where}: the {name} logger needs {package}, which is not installed: pip install {package}")
        params = [p for p in inspect.signature(_logger_class(name).__init__).parameters if p != "self"]
        for key in spec:
            if key != "name" and key not in params:
                raise ConfigError(f"{where}.{key}: unknown parameter of Avalanche's {_LOGGERS[name][0]}; "
                                  f"known: {', '.join(params)}")


def logging_evaluator(specs: list[dict], run_dir, project: str, run: str):
    """An Avalanche ``EvaluationPlugin`` logging loss and accuracy (per epoch and experience) to the
    loggers of ``specs``, or None without loggers.

    A logger's folder defaults to one inside ``run_dir`` (tensorboard: ``tensorboard/``, csv:
    ``csv_logs/``, wandb: ``wandb/``); wandb's project defaults to the benchmark's name and its run
    name to ``<strategy>-seed<k>``. ``params: {mode: offline}`` runs wandb offline.
    """
    if not specs:
        return None
    from pathlib import Path

    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    loggers = []
    for spec in specs:
        name = spec["name"]
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        folder_key, sub = _LOGGERS[name][2], _LOGGERS[name][3]
        if run_dir is not None:
            kwargs.setdefault(folder_key, str(Path(run_dir) / sub))
            Path(kwargs[folder_key]).mkdir(parents=True, exist_ok=True)
        if name == "wandb":
            kwargs.setdefault("project_name", project)
            kwargs.setdefault("run_name", run)
            if run_dir is not None:
                kwargs.setdefault("path", str(Path(run_dir) / "wandb-checkpoints"))
            # Avalanche draws a run id with wandb.util.generate_id (avalanche/logging/wandb_logger.py,
            # before_run), which recent wandb no longer has; an id given in params skips that call.
            import uuid

            kwargs["params"] = {"id": uuid.uuid4().hex[:8], **(kwargs.get("params") or {})}
        loggers.append(_logger_class(name)(**kwargs))
    return EvaluationPlugin(accuracy_metrics(epoch=True, experience=True), loss_metrics(epoch=True, experience=True),
                            loggers=loggers)


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


# ---------------------------------------------------------------------------
# learning-rate schedule
# ---------------------------------------------------------------------------

def warmup_cosine(epochs: int, base_lr: float, warmup_lr: float = 1e-5) -> Callable[[int], float]:
    """LR factor per epoch (0-based), as Dassl schedules CoOp and LAMM.

    With E = ``epochs`` >= 2: epoch 0 runs at the constant ``warmup_lr``, and epoch e >= 1 at
    ``base_lr * 0.5 * (1 + cos(pi * (e - 1) / E))`` -- epoch 1 at the full rate, the last epoch
    still above zero. That is Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=E)``
    with ``WARMUP_RECOUNT`` (Dassl's default): the cosine starts counting only after the warm-up
    epoch (Dassl.pytorch dassl/optim/lr_scheduler.py:21-39, and build_lr_scheduler, which leaves the
    successor's last_epoch at 0 when WARMUP_RECOUNT is set; LAMM's
    configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml sets WARMUP_EPOCH 1, constant, 1e-5).

    Deviation: with E = 1 Dassl would spend the only epoch at ``warmup_lr`` and train nothing;
    here a single epoch runs at ``base_lr`` (no warm-up).
    """

    def factor(epoch: int) -> float:
        if epochs <= 1:
            return 1.0
        if epoch == 0:
            return warmup_lr / base_lr if base_lr > 0 else 0.0
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))

    return factor


class DropLastPartialBatch:
    """Template mixin: training drops the last partial mini-batch when the experience has at least one
    full batch, as Dassl builds its training loader for CoOp and LAMM (Dassl.pytorch
    dassl/data/data_manager.py, build_data_loader: ``drop_last=is_train and len(data_source) >=
    batch_size``); Avalanche keeps the partial batch. An experience smaller than one batch trains on
    all of it. Put it before ``SupervisedTemplate`` in the bases; an explicit ``drop_last`` passed to
    ``train`` wins. The flag also reaches plugins that build their own loader (Avalanche's replay).
    """

    def _before_training_exp(self, **kwargs):
        if "drop_last" not in kwargs:
            kwargs["drop_last"] = len(self.experience.dataset) >= self.train_mb_size
        super()._before_training_exp(**kwargs)


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
    """The reference schedule as a plugin (:func:`warmup_cosine`): one warm-up epoch at 1e-5, then cosine
    from epoch 1, restarting at every experience."""
    return WarmupCosinePlugin(epochs, base_lr)


def sgd(params, opts: Any) -> torch.optim.SGD:
    """The reference optimiser: SGD, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=5e-4)
