"""One strategy on one seed: build it, train it experience by experience, evaluate it after each
experience on every class seen so far, and keep a checkpoint after every experience but the last, so
that ``--resume`` continues a killed run bit-identically on CPU.

The runner knows nothing about any particular strategy: it asks the registry for a builder, hands it a
:class:`StrategyContext`, and drives the Avalanche template it gets back.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from lamm_cl import checkpoint, saved_model
from lamm_cl.benchmark import Plan, make_streams, seen_classes
from lamm_cl.config import Config
from lamm_cl.registry import get_strategy
from lamm_cl.results import RunRecord
from lamm_cl.model.clip import FrozenCLIP
from lamm_cl.runner.evaluation import AccuracyPlugin, evaluate, evaluate_sequence
from lamm_cl.runner.inputs import Inputs
from lamm_cl.runner.progress import ProgressPlugin
from lamm_cl.runner.record import make_record, run_config
from lamm_cl.runner.targets import TargetInputs, evaluate_targets
from lamm_cl.avalanche_plugins import close_loggers, logging_evaluator
from lamm_cl.strategy_kit.context import StrategyContext

Log = Callable[[str], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextmanager
def deterministic(device: torch.device):
    """Deterministic torch kernels while training on CPU (warn-only where none exists); restored after."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@dataclass
class _Built:
    """A strategy built for one seed, with the streams it trains on and what the runner attached."""

    template: Any  # the Avalanche template
    scenario: Any  # its train and test streams
    ctx: StrategyContext
    acc: AccuracyPlugin
    evaluator: Any  # the YAML's loggers, or None
    clip: FrozenCLIP

    def refs(self, template) -> checkpoint.References:
        """What a checkpoint of ``template`` refers to instead of holding (:func:`checkpoint.references`)."""
        return checkpoint.references(template, self.scenario, self.clip)


def _build(cfg: Config, entry, seed: int, plan: Plan, inputs: Inputs, device: torch.device, progress: bool,
           run_dir: Optional[Path]) -> _Built:
    """Seed everything with ``seed``, then build ``entry``'s strategy and its streams."""
    spec = get_strategy(entry.name)
    seed_everything(seed)
    acc = AccuracyPlugin()
    evaluator = logging_evaluator(cfg.loggers, run_dir, project=cfg.name, run=f"{entry.run_label}-seed{seed}")
    views = spec.augmented_views  # False: the strategy reads the centre crop even with train_views > 0
    ctx = StrategyContext(clip=inputs.clip, class_names=plan.class_names, template=plan.template,
                          device=device, seed=seed, shots=cfg.benchmark.shots, n_experiences=plan.n_experiences,
                          plugins=[acc, ProgressPlugin(entry.run_label, enabled=progress), *inputs.plugins(seed, views)],
                          eval_batch_size=1024 if spec.inputs == "features" else 64, evaluator=evaluator)
    scenario = make_streams(plan, inputs.reader(spec.inputs, "train", views),
                            inputs.reader(spec.inputs, "test"),
                            inputs.parts.train.labels, inputs.parts.test.labels)
    return _Built(spec.build(ctx, entry.options), scenario, ctx, acc, evaluator, inputs.clip)


@dataclass
class _Scores:
    """What a run has measured so far: ``matrix[t, j]`` (and its task-aware twin), the accuracy on
    experience j after training experience t, NaN where not yet measured, and the per-class
    accuracies after the last experience trained."""

    matrix: np.ndarray
    matrix_task_aware: np.ndarray
    per_class: dict = field(default_factory=dict)
    first: int = 0  # the first experience to train
    spent: float = 0.0  # seconds the run spent before it was resumed

    @classmethod
    def empty(cls, n_experiences: int) -> "_Scores":
        shape = (n_experiences, n_experiences)
        return cls(np.full(shape, np.nan), np.full(shape, np.nan))

    def resume(self, state: dict) -> None:
        """Take over what a checkpoint (:func:`checkpoint.load`) had measured."""
        self.first = state["experience"] + 1
        self.matrix[:self.first] = np.asarray(state["matrix"], dtype=float)[:self.first]
        self.matrix_task_aware[:self.first] = np.asarray(state["matrix_task_aware"], dtype=float)[:self.first]
        self.per_class, self.spent = dict(state["per_class"]), state["seconds"]

    def add(self, t: int, row: list[float], per_class: dict, row_task_aware: list[float]) -> None:
        """Add what :func:`evaluate` measured after training experience ``t`` (a sequence's row may reach
        past the diagonal: the datasets not trained yet)."""
        self.matrix[t, : len(row)] = row
        self.matrix_task_aware[t, : len(row_task_aware)] = row_task_aware
        self.per_class = per_class


class _Checkpoints:
    """Saves a run's checkpoint in ``run_dir`` (none when None); after a save fails, logs why and saves no more."""

    def __init__(self, run_dir: Optional[Path], run: _Built, meta: dict, log: Log, label: str):
        self.path = run_dir / checkpoint.CHECKPOINT_FILE if run_dir is not None else None
        self.run, self.meta, self.log, self.label = run, meta, log, label

    def save(self, t: int, scores: _Scores, seconds: float) -> None:
        """Save the run as it is after experience ``t``."""
        if self.path is None:
            return
        run = self.run
        try:
            # the runner's plugins and the loggers (which hold open files) are not saved
            skip = [*run.ctx.plugins, *([run.evaluator] if run.evaluator is not None else [])]
            checkpoint.save(self.path, template=run.template, refs=run.refs(run.template), skip_plugins=skip,
                            experience=t, matrix=scores.matrix, per_class=scores.per_class,
                            matrix_task_aware=scores.matrix_task_aware, seconds=seconds, meta=self.meta)
        except checkpoint.CheckpointError as e:
            self.log(f"  {self.label}: no checkpoints for this run, --resume will restart it: {e}")
            checkpoint.remove(self.path)
            self.path = None


def _save_model(run: _Built, cfg: Config, entry, plan: Plan, run_dir: Path, log: Log, label: str) -> None:
    """Write ``model.pt`` (:mod:`lamm_cl.saved_model`) after the last experience; a model that cannot be
    saved costs the run nothing but that file (one line says why)."""
    try:
        saved_model.save(run_dir / saved_model.MODEL_FILE, template=run.template, refs=run.refs(run.template), cfg=cfg,
                         entry=entry, class_names=plan.class_names[: seen_classes(plan, plan.n_experiences - 1)],
                         prompt_template=plan.template, inputs=get_strategy(entry.name).inputs, clip=run.clip)
    except checkpoint.CheckpointError as e:
        log(f"  {label}: its model was not saved: {e}")


def run_strategy(cfg: Config, entry, seed: int, plan: Plan, inputs: Inputs, device: torch.device,
                 progress: bool, log: Log, run_dir: Optional[Path] = None,
                 resume_from: Optional[dict] = None) -> RunRecord:
    """Train and evaluate one strategy on one seed; return its record (not yet written).

    Args:
        run_dir: where to keep a checkpoint after every experience but the last (None: no checkpoints).
        resume_from: a checkpoint (:func:`lamm_cl.checkpoint.load`) of this very run to continue from.

    Raises:
        FloatingPointError: the training loss became NaN or infinite.
    """
    run = _build(cfg, entry, seed, plan, inputs, device, progress, run_dir)
    label, T = f"{entry.run_label} seed {seed}", plan.n_experiences
    scores = _Scores.empty(T)
    if resume_from is not None:
        try:
            checkpoint.restore(run.template, run.scenario, resume_from, run.refs)
        except checkpoint.CheckpointError as e:  # the template is half restored: build it afresh
            log(f"  {label}: cannot continue from its checkpoint ({e}); starting it over")
            return run_strategy(cfg, entry, seed, plan, inputs, device, progress, log, run_dir)
        scores.resume(resume_from)
        log(f"  {label}: resuming at experience {scores.first} of 0-{T - 1} (the ones before it are in the checkpoint)")
    checkpoints = _Checkpoints(run_dir, run, {"strategy": entry.run_label, "seed": seed,
                                              "config": run_config(cfg.to_dict(), entry.run_label)}, log, label)
    started = time.perf_counter()
    # benchmark.evaluate_on: one row per (experience, target); a checkpoint keeps the rows made before it
    target_rows = list(((resume_from or {}).get("meta") or {}).get("targets", []))
    target_inputs = TargetInputs(inputs.extractor, inputs.clip, device)
    sequence = getattr(plan, "members", None) is not None  # a lamm_cl.sequence.SequencePlan
    for t in range(scores.first, T):
        run.template.train(run.scenario.train_stream[t])
        if sequence:
            row, per_class, row_task_aware = evaluate_sequence(
                run.template, run.scenario.test_stream, t, plan, run.acc, get_strategy(entry.name).scores_unseen,
                inputs.clip)
        else:
            row, per_class, row_task_aware = evaluate(run.template, run.scenario.test_stream, t, plan, run.acc)
        scores.add(t, row, per_class, row_task_aware)
        if inputs.targets:
            target_rows += evaluate_targets(run.template, entry, t, plan, inputs.parts, inputs.targets, target_inputs)
            checkpoints.meta["targets"] = target_rows
        # experiences are numbered from 0 wherever a user reads them: result files, plots, report, stderr
        log(f"  {label} experience {t} of 0-{T - 1}: seen-class accuracy "
            f"{np.average(row[: t + 1], weights=[len(plan.test_index[j]) for j in range(t + 1)]):.2f}%")
        if t < T - 1:  # after the last one the results themselves are written
            checkpoints.save(t, scores, seconds=scores.spent + time.perf_counter() - started)
    if run_dir is not None and entry.saves_model(cfg):
        _save_model(run, cfg, entry, plan, run_dir, log, label)
    close_loggers(run.evaluator)
    return make_record(cfg, strategy=entry.run_label, source=get_strategy(entry.name).source, seed=seed, plan=plan,
                       matrix=scores.matrix, matrix_task_aware=scores.matrix_task_aware, per_class=scores.per_class,
                       seconds=scores.spent + time.perf_counter() - started, device=device, clip=inputs.clip,
                       resumed=resume_from is not None, targets=target_rows,
                       scores_unseen=get_strategy(entry.name).scores_unseen)
