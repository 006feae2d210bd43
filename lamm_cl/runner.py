"""Runs a benchmark: for each seed, for each strategy, train experience by experience and
evaluate on every class seen so far; write the results of each (strategy, seed) as it finishes.

The runner knows nothing about any particular strategy: it asks the registry
for a builder, hands it a :class:`StrategyContext`, and drives the Avalanche
template it gets back.

It also keeps a run recoverable (:mod:`lamm_cl.checkpoint`): all input is checked
before the results folder is touched, the folder is locked while a run writes to
it, a checkpoint follows every experience so ``resume`` continues a killed run
bit-identically on CPU, and a NaN or infinite loss fails only its own strategy.
"""
from __future__ import annotations

import platform
import random
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from lamm_cl import checkpoint, run_folder, safe_io
from lamm_cl.benchmark import Plan, make_plan, make_streams, seen_classes
from lamm_cl.config import Config
from lamm_cl.data import load_dataset
from lamm_cl.data.base import DatasetParts
from lamm_cl.errors import UserError
from lamm_cl.features import (AugmentedView, AutocastPlugin, FeatureExtractor, ImageReader, TrainViewPlugin,
                              ViewSchedule, view_seed)
from lamm_cl.model.clip import FrozenCLIP, build_clip, resolve_device
from lamm_cl.registry import get_strategy
from lamm_cl.results import (CLASS_ORDER_FILE, CONFIG_FILE, MATRIX_FILE, MATRIX_TASK_AWARE_FILE, METRICS_FILE,
                             PER_CLASS_FILE, SUMMARY_FILE, RunRecord, find_run_dirs, read_run, write_run)
from lamm_cl.training import (AccuracyPlugin, ProgressPlugin, StrategyContext, build_avalanche_plugins, check_loggers,
                              close_loggers, logging_evaluator)

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
    Test features are always the centre crop. An "images" strategy with ``train_views > 0``
    trains on the same per-epoch view, augmented from the image at each read (nothing cached).
    """

    parts: DatasetParts
    clip: FrozenCLIP
    extractor: FeatureExtractor
    train_views: int = 0  # augmented views per training image; 0: centre crop only
    # few-shot: the sorted training indices some run draws; augmented views are made of these only
    # (the centre crop still covers the whole split, so it stays shared between runs and shot counts)
    views_of: Optional[np.ndarray] = None
    schedule: ViewSchedule = field(default_factory=ViewSchedule)
    _feats: dict = field(default_factory=dict)

    def _features(self, split: str, view: Optional[int] = None) -> torch.Tensor:
        if (split, view) not in self._feats:
            samples = self.parts.train if split == "train" else self.parts.test
            if view is not None and self.views_of is not None:
                samples = samples.subset(self.views_of)
            desc = f"{split} image features" + ("" if view is None else f" (view {view})")
            self._feats[split, view] = self.extractor.features(samples, view=view, desc=desc)
        return self._feats[split, view]

    def _view_rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows of the view features that hold training images ``idx``."""
        if self.views_of is None:
            return idx
        rows = np.searchsorted(self.views_of, idx)
        if np.any(rows >= len(self.views_of)) or np.any(self.views_of[np.minimum(rows, len(self.views_of) - 1)] != idx):
            raise ValueError("a training image outside Inputs.views_of was asked for")
        return rows

    def reader(self, kind: str, split: str, views: bool = True):
        """``(experience, indices) -> (i -> tensor)`` for :func:`make_streams`.

        ``views=False``: training features are the centre crop even when ``train_views > 0``.
        """
        if kind == "features" and split == "train" and self.train_views > 0 and views:
            at = self._features  # the view is looked up per item: it changes between epochs
            return lambda t, idx: (lambda i, r=self._view_rows(idx): at("train", self.schedule.view)[r[i]].float())
        if kind == "features":
            feats = self._features(split)
            return lambda t, idx: (lambda i, idx=idx: feats[idx[i]].float())
        samples = self.parts.train if split == "train" else self.parts.test
        if split == "train" and self.train_views > 0:
            # An image strategy (maple, maple_lamm, finetune) trains on the epoch's augmented view made
            # afresh from the image, not on the centre crop: Dassl draws a random resized crop + flip at
            # every step (MaPLe's configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml:13, TRANSFORMS),
            # and each image is read once per epoch, so a new view per epoch is the same draw. The view
            # is looked up per item: it changes between epochs.
            augment, schedule = AugmentedView.for_clip(self.clip), self.schedule
            return lambda t, idx: (lambda i, idx=idx: augment(samples.image(int(idx[i])),
                                                              view_seed(schedule.view, int(idx[i]))))
        images = ImageReader(samples, self.clip.preprocess)
        return lambda t, idx: (lambda i, idx=idx: images[int(idx[i])])

    def plugins(self, seed: int, views: bool = True) -> list:
        """Plugins a strategy run on these inputs needs: the per-epoch view choice (unless ``views`` is
        False: the strategy reads the centre crop), CUDA autocast."""
        out = []
        if self.train_views > 0 and views:
            out.append(TrainViewPlugin(self.schedule, self.train_views, seed))
        if self.clip.device.type == "cuda":
            out.append(AutocastPlugin(self.clip.device))
        return out


def evaluate(template, test_stream, upto: int, plan: Plan,
             acc: AccuracyPlugin) -> tuple[list[float], dict, list[float]]:
    """Accuracy (%) on each experience 0..upto, predicting among every class seen so far
    (class-incremental), the per-class accuracies, and the task-aware accuracy of each experience:
    its test images predicted among its own classes only (from the same logits)."""
    acc.reset(seen_classes(plan, upto))
    row, row_task_aware = [], []
    for j in range(upto + 1):
        before = dict(acc.correct), dict(acc.total), dict(acc.correct_task_aware)
        classes = plan.experiences[j]
        acc.task_classes = list(classes)
        try:
            template.eval(test_stream[j])
        finally:
            acc.task_classes = None
        c = sum(acc.correct.get(k, 0) - before[0].get(k, 0) for k in classes)
        n = sum(acc.total.get(k, 0) - before[1].get(k, 0) for k in classes)
        c_ta = sum(acc.correct_task_aware.get(k, 0) - before[2].get(k, 0) for k in classes)
        row.append(100.0 * c / n if n else float("nan"))
        row_task_aware.append(100.0 * c_ta / n if n else float("nan"))
    per_class = {k: 100.0 * acc.correct.get(k, 0) / v for k, v in acc.total.items()}
    return row, per_class, row_task_aware


def versions() -> dict:
    """Library versions recorded with every run."""
    import avalanche
    import open_clip

    return {"python": platform.python_version(), "torch": torch.__version__,
            "open_clip": open_clip.__version__, "avalanche": getattr(avalanche, "__version__", "?"),
            "numpy": np.__version__}


class RunRecords(list):
    """The records of every finished (strategy, seed), in run order (a plain list), plus
    ``failed``: one message per run stopped by a non-finite loss (its results were not written)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.failed: list[str] = []


def run_config(config: dict, strategy: str) -> dict:
    """The part of a resolved config that decides one (strategy, seed) run's numbers.

    Leaves out where results go, the other strategies and seeds, and whether features are cached,
    so adding a strategy or a seed to a config does not invalidate the runs already finished.
    """
    view = {k: v for k, v in config.items() if k not in ("output", "seeds", "strategies", "plugins", "loggers")}
    view["features"] = {k: v for k, v in (config.get("features") or {}).items() if k not in ("cache", "cache_dir")}
    view["strategy"] = next((s for s in config.get("strategies") or [] if s.get("name") == strategy), None)
    return yaml.safe_load(yaml.safe_dump(_plain(view), sort_keys=True))


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _first_difference(a, b, path: str = "") -> str:
    """The first key path where two plain-data configs differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path or 'config'}: {a!r} now, {b!r} there"


def _mismatch(where: Path, now: dict, then: dict) -> UserError:
    return UserError(f"{where} was made with a different config ({_first_difference(now, then)}); "
                     "use --overwrite to start over, or another --output")


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
    spec = get_strategy(entry.name)
    seed_everything(seed)
    acc = AccuracyPlugin()
    evaluator = logging_evaluator(cfg.loggers, run_dir, project=cfg.name, run=f"{entry.name}-seed{seed}")
    views = spec.augmented_views  # False: the strategy reads the centre crop even with train_views > 0
    ctx = StrategyContext(clip=inputs.clip, class_names=plan.class_names, template=plan.template,
                          device=device, seed=seed, shots=cfg.benchmark.shots,
                          plugins=[acc, ProgressPlugin(entry.name, enabled=progress), *inputs.plugins(seed, views)],
                          eval_batch_size=1024 if spec.inputs == "features" else 64, evaluator=evaluator)
    scenario = make_streams(plan, inputs.reader(spec.inputs, "train", views),
                            inputs.reader(spec.inputs, "test"),
                            inputs.parts.train.labels, inputs.parts.test.labels)
    template = spec.build(ctx, entry.options)
    T = plan.n_experiences
    matrix = np.full((T, T), np.nan)
    matrix_task_aware = np.full((T, T), np.nan)
    per_class: dict = {}
    first, spent = 0, 0.0

    def refs_of(tpl) -> checkpoint.References:
        return checkpoint.references(tpl, scenario, inputs.clip)

    if resume_from is not None:
        try:
            checkpoint.restore(template, scenario, resume_from, refs_of)
        except checkpoint.CheckpointError as e:  # the template is half restored: build it afresh
            log(f"  {entry.name} seed {seed}: cannot continue from its checkpoint ({e}); starting it over")
            return run_strategy(cfg, entry, seed, plan, inputs, device, progress, log, run_dir)
        first = resume_from["experience"] + 1
        matrix[:first] = np.asarray(resume_from["matrix"], dtype=float)[:first]
        if resume_from.get("matrix_task_aware") is not None:  # absent from older checkpoints: left NaN
            matrix_task_aware[:first] = np.asarray(resume_from["matrix_task_aware"], dtype=float)[:first]
        per_class, spent = dict(resume_from["per_class"]), resume_from["seconds"]
        log(f"  {entry.name} seed {seed}: resuming after experience {first}/{T}")
    ckpt = run_dir / checkpoint.CHECKPOINT_FILE if run_dir is not None else None
    meta = {"strategy": entry.name, "seed": seed, "config": run_config(cfg.to_dict(), entry.name)}
    started = time.perf_counter()
    for t in range(first, T):
        template.train(scenario.train_stream[t])
        row, per_class, row_task_aware = evaluate(template, scenario.test_stream, t, plan, acc)
        matrix[t, : t + 1] = row
        matrix_task_aware[t, : t + 1] = row_task_aware
        log(f"  {entry.name} seed {seed} experience {t + 1}/{T}: seen-class accuracy "
            f"{np.average(row, weights=[len(plan.test_index[j]) for j in range(t + 1)]):.2f}%")
        if ckpt is not None and t < T - 1:  # after the last one the results themselves are written
            try:
                skip = [*ctx.plugins, *([evaluator] if evaluator is not None else [])]  # loggers hold open files
                checkpoint.save(ckpt, template=template, refs=refs_of(template), skip_plugins=skip,
                                experience=t, matrix=matrix, per_class=per_class,
                                matrix_task_aware=matrix_task_aware,
                                seconds=spent + time.perf_counter() - started, meta=meta)
            except checkpoint.CheckpointError as e:
                log(f"  {entry.name} seed {seed}: no checkpoints for this run, --resume will restart it: {e}")
                checkpoint.remove(ckpt)
                ckpt = None
    close_loggers(evaluator)
    n_classes = seen_classes(plan, T - 1)
    return RunRecord(
        benchmark=cfg.name, strategy=entry.name, seed=seed, matrix=matrix,
        test_counts=[int(len(i)) for i in plan.test_index], experiences=plan.experiences,
        class_names=plan.class_names, class_order=plan.class_order,
        per_class_accuracy=[float(per_class.get(c, float("nan"))) for c in range(n_classes)],
        config=cfg.to_dict(),
        # a run resumed from a checkpoint that predates the task-aware count has gaps: leave it out
        matrix_task_aware=None if np.isnan(np.tril(matrix_task_aware)[np.tril_indices(T)]).any() else matrix_task_aware,
        info={"versions": versions(), "device": str(device), "order": plan.order_name,
              "template": plan.template, "seconds": round(spent + time.perf_counter() - started, 2),
              "seed": seed, "order_seed": cfg.benchmark.order_seed, "deterministic": device.type == "cpu",
              "resumed": resume_from is not None,
              "random_weights": cfg.model.pretrained == "none", "source": get_strategy(entry.name).source,
              # hashed once when the run built CLIP (run()), shared by every strategy and seed
              "weights": inputs.clip.weights_record()},
    )


def _check_strategies(cfg: Config) -> None:
    """Every strategy name and every Avalanche plugin of the config exists (before any work)."""
    check_loggers(cfg.loggers)
    for i, e in enumerate(cfg.strategies):
        get_strategy(e.name)
        build_avalanche_plugins(getattr(e.options, "plugins", []) or [], path=f"strategies[{i}].plugins")


def _resume_state(cfg: Config, out: Path) -> tuple[dict, dict]:
    """What ``--resume`` finds in ``out``: finished runs ``{(strategy, seed): record}`` and
    checkpoints ``{(strategy, seed): state}``, each checked against ``cfg``.

    Raises:
        UserError: a finished run or checkpoint was made with a different config, or is unreadable.
    """
    done, ckpts = {}, {}
    full = cfg.to_dict()
    for seed in cfg.seeds:
        for entry in cfg.strategies:
            run_dir = out / entry.name / f"seed{seed}"
            now = run_config(full, entry.name)
            if (run_dir / SUMMARY_FILE).is_file():
                rec = read_run(run_dir)
                if rec.strategy != entry.name or rec.seed != seed:
                    raise UserError(f"{run_dir} holds the run of {rec.strategy} seed {rec.seed}; "
                                    "use --overwrite to start over, or another --output")
                then = run_config(rec.config, entry.name)
                if now != then:
                    raise _mismatch(run_dir, now, then)
                done[entry.name, seed] = rec
            elif (run_dir / checkpoint.CHECKPOINT_FILE).is_file():
                state = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
                meta = state.get("meta") or {}
                if meta.get("strategy") != entry.name or meta.get("seed") != seed:
                    raise UserError(f"{run_dir / checkpoint.CHECKPOINT_FILE} is not a checkpoint of {entry.name} "
                                    f"seed {seed}; delete it to restart that run")
                if meta.get("config") != now:
                    raise _mismatch(run_dir / checkpoint.CHECKPOINT_FILE, now, meta.get("config"))
                checkpoint.check_fields(state, run_dir / checkpoint.CHECKPOINT_FILE)
                ckpts[entry.name, seed] = state
    return done, ckpts


RUN_FILES = (CONFIG_FILE, CLASS_ORDER_FILE, MATRIX_FILE, MATRIX_TASK_AWARE_FILE, METRICS_FILE, PER_CLASS_FILE,
             SUMMARY_FILE, checkpoint.CHECKPOINT_FILE)


def clear_results(out: Path) -> None:
    """Delete what earlier runs wrote in ``out`` (for ``--overwrite``): the result files and checkpoints
    of ``<strategy>/seed<k>/``, ``summary.csv``, ``report.md`` and the plots. Files lamm-cl does not
    write are left alone, and so are the folders that hold them."""
    def remove(files, folder: Path) -> None:
        for f in files:
            f.unlink(missing_ok=True)
        safe_io.remove_stale_temporaries(folder)
        with suppress(OSError):
            folder.rmdir()  # only once empty

    for run_dir in find_run_dirs(out, include_unfinished=True):
        remove([run_dir / name for name in RUN_FILES], run_dir)
        with suppress(OSError):
            run_dir.parent.rmdir()
    if (out / "plots").is_dir():
        remove([f for f in (out / "plots").iterdir() if f.suffix in (".png", ".svg", ".pdf")], out / "plots")
    remove([out / "summary.csv", out / "report.md"], out)


def _check_templates(cfg: Config, plans: dict, clip: FrozenCLIP) -> None:
    """Every prompt the run will build fits CLIP's context (open_clip would silently cut it).

    Raises:
        ConfigError: naming the template's key and the class whose prompt is too long.
    """
    from lamm_cl.errors import ConfigError

    encode = getattr(clip.tokenizer, "encode", None)
    if encode is None:  # a tokenizer without a plain encode: ClassPrompts still refuses, later
        return
    context = int(clip.model.positional_embedding.shape[0])
    plan = next(iter(plans.values()))
    templates = [("benchmark.template" if cfg.benchmark.template else "the dataset's template", plan.template)]
    for i, e in enumerate(cfg.strategies):
        templates += [(f"strategies[{i}].templates[{j}]", t)
                      for j, t in enumerate(getattr(e.options, "templates", None) or []) if isinstance(t, str)]
    longest = max(plan.class_names, key=lambda n: len(encode(n)))
    for where, template in templates:
        head, _, tail = template.partition("{}")
        n = 2 + len(encode(head)) + len(encode(longest)) + len(encode(tail))  # SOS ... EOT
        if n > context:
            raise ConfigError(f"{where}: the prompt of class {longest!r} is {n} tokens, longer than CLIP's context "
                              f"of {context}; shorten the template")


def _check_data(inputs: "Inputs", cfg: Config) -> None:
    """Decode every image once (by extracting the features the run needs anyway, where a strategy reads
    features), so that ``--overwrite`` removes the old results only once the new data has checked out."""
    if any(get_strategy(e.name).inputs == "features" for e in cfg.strategies):
        inputs._features("train")
        inputs._features("test")
        return
    for samples in (inputs.parts.train, inputs.parts.test):
        if hasattr(samples, "paths"):  # in-memory datasets decode by construction
            for i in range(len(samples)):
                samples.image(i)


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


def few_shot_images(cfg: Config, plans: dict[int, Plan]) -> Optional[np.ndarray]:
    """The training images that any seed's few-shot plan draws (sorted), or None when not few-shot
    or without augmented views: with ``train_views`` V, only these get V views each, instead of
    every image of the split (16 shots x 1,000 classes instead of ImageNet's 1.28 M images)."""
    if not cfg.benchmark.shots or cfg.features.train_views <= 0:
        return None
    return np.unique(np.concatenate([i for p in plans.values() for i in p.train_index]))


def run(cfg: Config, out: Path, device: Optional[str] = None, progress: bool = True,
        log: Log = lambda s: None, *, resume: bool = False, overwrite: bool = False,
        warn: Optional[Log] = None, lock_runs: bool = False) -> RunRecords:
    """Run every seed and strategy of ``cfg``, writing results under ``out``.

    Everything that can be checked is checked before the results folder is touched:
    the strategies and their plugins, the folder (in use, writable, empty unless
    ``resume`` or ``overwrite``), the finished runs and checkpoints ``resume`` would
    reuse, the data, the splits and the weights. Then the folder is locked (and checked
    again under the lock) and, with ``overwrite``, the old results are removed once every
    image has been decoded.

    Args:
        resume: skip runs whose results are already there, continue a run from its checkpoint.
        overwrite: replace the results already in ``out``.
        warn: where a failed strategy is reported (default: ``log``).
        lock_runs: lock each ``<strategy>/seed<k>/`` folder while it runs instead of the whole
            results folder, so that sweep jobs of one benchmark (one strategy and seed each) run
            side by side; the benchmark's report is then the sweep's to build.

    Returns:
        The records of every (strategy, seed) that finished, in run order; ``.failed`` lists
        the runs a NaN or infinite loss stopped (the others still ran and were written).

    Raises:
        UserError: bad input; nothing was written.
        KeyboardInterrupt: finished runs and the last checkpoint are kept.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one")
    warn = warn or log
    out = Path(out)
    dev = resolve_device(device or cfg.device)
    _check_strategies(cfg)
    run_folder.check_output(out, resume=resume, overwrite=overwrite)
    for seed in cfg.seeds:  # a sweep job may hold one run folder: refuse before any work
        for entry in cfg.strategies:
            holder = safe_io.lock_holder(out / entry.name / f"seed{seed}")
            if holder is not None:
                raise safe_io.in_use(out / entry.name / f"seed{seed}", holder)
    done, ckpts = _resume_state(cfg, out) if resume and out.is_dir() else ({}, {})
    parts = load_dataset(cfg.benchmark.dataset, cfg.benchmark.root, cfg.benchmark.download)
    plans = {seed: make_plan(parts, cfg.benchmark, seed) for seed in cfg.seeds}  # fail on bad splits before any work
    clip = build_clip(cfg.model.arch, cfg.model.pretrained, dev)
    _check_templates(cfg, plans, clip)
    inputs = Inputs(parts, clip, FeatureExtractor.from_config(clip, cfg.features, progress=_bar if progress else None,
                                                              log=log),
                    train_views=cfg.features.train_views, views_of=few_shot_images(cfg, plans))
    records = RunRecords()
    started = time.time()
    with (nullcontext() if lock_runs else safe_io.lock_output(out)), deterministic(dev):
        # Checked again under the lock: another run may have written here since the first look.
        if not (resume or overwrite):
            run_folder.check_empty(out)
        if resume:
            done, ckpts = _resume_state(cfg, out)
        for key, state in ckpts.items():
            if len(state["matrix"]) != plans[key[1]].n_experiences:
                raise UserError(f"{out / key[0] / f'seed{key[1]}' / checkpoint.CHECKPOINT_FILE}: malformed "
                                "checkpoint (its accuracy matrix has another number of experiences); delete it")
        for folder in (out, out / "plots"):
            safe_io.sweep_temporaries(folder, before=started)
        if overwrite:
            _check_data(inputs, cfg)  # a corrupt image must not cost the old results
            clear_results(out)
        for seed in cfg.seeds:
            plan = plans[seed]
            log(f"seed {seed}: {plan.n_experiences} experiences, class order {plan.order_name}")
            if cfg.benchmark.shots and plan.short_classes:
                log(f"seed {seed}: {plan.shots_note(cfg.benchmark.shots)}")
            for entry in cfg.strategies:
                run_dir = out / entry.name / f"seed{seed}"
                if (entry.name, seed) in done:
                    log(f"  {entry.name} seed {seed}: already finished, kept")
                    records.append(done[entry.name, seed])
                    continue
                with safe_io.lock_run(run_dir):  # the per-run lock a sweep job takes too
                    if run_dir.is_dir():
                        safe_io.remove_stale_temporaries(run_dir)
                    try:
                        rec = run_strategy(cfg, entry, seed, plan, inputs, dev, progress, log, run_dir=run_dir,
                                           resume_from=ckpts.get((entry.name, seed)))
                    except FloatingPointError as e:
                        checkpoint.remove(run_dir / checkpoint.CHECKPOINT_FILE)
                        msg = f"{entry.name} seed {seed} failed: {e}; its results were not written"
                        warn(msg)
                        records.failed.append(msg)
                        continue
                    write_run(run_dir, rec)
                    checkpoint.remove(run_dir / checkpoint.CHECKPOINT_FILE)
                    records.append(rec)
    return records


def _bar(iterable, total: int, desc: str):
    from lamm_cl.training import lines_mode

    if lines_mode():  # a log file: one line when done, no carriage-return bar
        return _lines(iterable, total, desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, unit="batch")


def _lines(iterable, total: int, desc: str):
    import sys

    started = time.perf_counter()
    yield from iterable
    print(f"  {desc}: {total} batches, {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
