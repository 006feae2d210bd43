"""Runs a benchmark: for each seed, for each strategy, train experience by experience and
evaluate on every class seen so far; write the results of each (strategy, seed) as it finishes.

The runner knows nothing about any particular strategy: it asks the registry
for a builder, hands it a :class:`StrategyContext`, and drives the Avalanche
template it gets back.
"""
from __future__ import annotations

import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lamm_cl.benchmark import Plan, make_plan, make_streams, seen_classes
from lamm_cl.config import Config
from lamm_cl.data import load_dataset
from lamm_cl.data.base import DatasetParts
from lamm_cl.features import AutocastPlugin, FeatureExtractor, ImageReader, TrainViewPlugin, ViewSchedule
from lamm_cl.model.clip import FrozenCLIP, build_clip, resolve_device
from lamm_cl.registry import get_strategy
from lamm_cl.results import RunRecord, write_run
from lamm_cl.training import AccuracyPlugin, ProgressPlugin, StrategyContext

Log = Callable[[str], None]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def output_dir(cfg: Config, override: Optional[str] = None) -> Path:
    """Where a run writes: ``--output``, else the config's ``output``, else ``results/<name>``."""
    return Path(override or cfg.output or Path("results") / cfg.name).expanduser()


@dataclass
class Inputs:
    """How a strategy reads samples: cached features, or preprocessed images.

    Features come from the shared extractor (and its on-disk store). With
    ``train_views > 0`` a "features" strategy trains on augmented views: the
    training reader returns the view that :meth:`plugins`' view plugin picked
    for the current epoch (each view extracted the first time it is drawn).
    Test features are always the centre crop.
    """

    parts: DatasetParts
    clip: FrozenCLIP
    extractor: FeatureExtractor
    train_views: int = 0  # augmented views per training image; 0: centre crop only
    schedule: ViewSchedule = field(default_factory=ViewSchedule)
    _feats: dict = field(default_factory=dict)

    def _features(self, split: str, view: Optional[int] = None) -> torch.Tensor:
        if (split, view) not in self._feats:
            samples = self.parts.train if split == "train" else self.parts.test
            desc = f"{split} image features" + ("" if view is None else f" (view {view})")
            self._feats[split, view] = self.extractor.features(samples, view=view, desc=desc)
        return self._feats[split, view]

    def reader(self, kind: str, split: str):
        """``(experience, indices) -> (i -> tensor)`` for :func:`make_streams`."""
        if kind == "features" and split == "train" and self.train_views > 0:
            at = self._features  # the view is looked up per item: it changes between epochs
            return lambda t, idx: (lambda i, idx=idx: at("train", self.schedule.view)[idx[i]].float())
        if kind == "features":
            feats = self._features(split)
            return lambda t, idx: (lambda i, idx=idx: feats[idx[i]].float())
        samples = self.parts.train if split == "train" else self.parts.test
        images = ImageReader(samples, self.clip.preprocess)
        return lambda t, idx: (lambda i, idx=idx: images[int(idx[i])])

    def plugins(self, seed: int) -> list:
        """Plugins a strategy run on these inputs needs: the per-epoch view choice, CUDA autocast."""
        out = []
        if self.train_views > 0:
            out.append(TrainViewPlugin(self.schedule, self.train_views, seed))
        if self.clip.device.type == "cuda":
            out.append(AutocastPlugin(self.clip.device))
        return out


def evaluate(template, test_stream, upto: int, plan: Plan, acc: AccuracyPlugin) -> tuple[list[float], dict]:
    """Accuracy (%) on each experience 0..upto, predicting among every class seen so far."""
    acc.reset(seen_classes(plan, upto))
    row = []
    for j in range(upto + 1):
        before = dict(acc.correct), dict(acc.total)
        template.eval(test_stream[j])
        classes = plan.experiences[j]
        c = sum(acc.correct.get(k, 0) - before[0].get(k, 0) for k in classes)
        n = sum(acc.total.get(k, 0) - before[1].get(k, 0) for k in classes)
        row.append(100.0 * c / n if n else float("nan"))
    per_class = {k: 100.0 * acc.correct.get(k, 0) / v for k, v in acc.total.items()}
    return row, per_class


def versions() -> dict:
    """Library versions recorded with every run."""
    import avalanche
    import open_clip

    return {"python": platform.python_version(), "torch": torch.__version__,
            "open_clip": open_clip.__version__, "avalanche": getattr(avalanche, "__version__", "?"),
            "numpy": np.__version__}


def run_strategy(cfg: Config, entry, seed: int, plan: Plan, inputs: Inputs, device: torch.device,
                 progress: bool, log: Log) -> RunRecord:
    """Train and evaluate one strategy on one seed; return its record (not yet written)."""
    spec = get_strategy(entry.name)
    seed_everything(seed)
    acc = AccuracyPlugin()
    ctx = StrategyContext(clip=inputs.clip, class_names=plan.class_names, template=plan.template,
                          device=device, seed=seed, shots=cfg.benchmark.shots,
                          plugins=[acc, ProgressPlugin(entry.name, enabled=progress), *inputs.plugins(seed)],
                          eval_batch_size=1024 if spec.inputs == "features" else 64)
    scenario = make_streams(plan, inputs.reader(spec.inputs, "train"), inputs.reader(spec.inputs, "test"),
                            inputs.parts.train.labels, inputs.parts.test.labels)
    template = spec.build(ctx, entry.options)
    T = plan.n_experiences
    matrix = np.full((T, T), np.nan)
    per_class: dict = {}
    started = time.perf_counter()
    for t, exp in enumerate(scenario.train_stream):
        template.train(exp)
        row, per_class = evaluate(template, scenario.test_stream, t, plan, acc)
        matrix[t, : t + 1] = row
        log(f"  {entry.name} seed {seed} experience {t + 1}/{T}: seen-class accuracy "
            f"{np.average(row, weights=[len(plan.test_index[j]) for j in range(t + 1)]):.2f}%")
    n_classes = seen_classes(plan, T - 1)
    return RunRecord(
        benchmark=cfg.name, strategy=entry.name, seed=seed, matrix=matrix,
        test_counts=[int(len(i)) for i in plan.test_index], experiences=plan.experiences,
        class_names=plan.class_names, class_order=plan.class_order,
        per_class_accuracy=[float(per_class.get(c, float("nan"))) for c in range(n_classes)],
        config=cfg.to_dict(),
        info={"versions": versions(), "device": str(device), "order": plan.order_name,
              "template": plan.template, "seconds": round(time.perf_counter() - started, 2),
              "random_weights": cfg.model.pretrained == "none", "source": get_strategy(entry.name).source},
    )


def run(cfg: Config, out: Path, device: Optional[str] = None, progress: bool = True,
        log: Log = lambda s: None) -> list[RunRecord]:
    """Run every seed and strategy of ``cfg``, writing results under ``out``.

    Returns:
        The records of every (strategy, seed), in run order.
    """
    dev = resolve_device(device or cfg.device)
    parts = load_dataset(cfg.benchmark.dataset, cfg.benchmark.root, cfg.benchmark.download)
    plans = {seed: make_plan(parts, cfg.benchmark, seed) for seed in cfg.seeds}  # fail on bad splits before any work
    for e in cfg.strategies:
        get_strategy(e.name)
    clip = build_clip(cfg.model.arch, cfg.model.pretrained, dev)
    inputs = Inputs(parts, clip, FeatureExtractor.from_config(clip, cfg.features, progress=_bar if progress else None),
                    train_views=cfg.features.train_views)
    records = []
    for seed in cfg.seeds:
        plan = plans[seed]
        log(f"seed {seed}: {plan.n_experiences} experiences, class order {plan.order_name}")
        for entry in cfg.strategies:
            rec = run_strategy(cfg, entry, seed, plan, inputs, dev, progress, log)
            write_run(out / entry.name / f"seed{seed}", rec)
            records.append(rec)
    return records


def _bar(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, unit="batch")
