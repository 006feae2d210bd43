"""From a loaded dataset and the benchmark section to a class-incremental plan and its Avalanche streams.

The plan fixes the class order, which classes each experience brings, and
(few-shot) which training images are used. Labels are remapped so that the
order's i-th class is label i, and class names follow the labels.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from lamm_cl.config import BenchmarkConfig
from lamm_cl.data.base import DatasetParts
from lamm_cl.errors import ConfigError


@dataclass
class Plan:
    """A class-incremental split of one dataset for one seed.

    Attributes:
        dataset: the dataset's name.
        class_order: original labels, in order (order[i] becomes label i).
        class_names: names by new label.
        experiences: new labels of each experience's classes.
        train_index, test_index: indices into the dataset's train/test samples, per experience.
        template: the prompt template.
        order_name: how the order was made (``icarl``, ``identity``, ``seeded(1993)``, ``explicit``).
        short_classes: (name, images) of the classes that had fewer training images than
            ``shots`` asked for: they train on all they have (``sampling: numpy``), or on ``shots``
            draws with repetition among them (``sampling: dassl``, as Dassl does).
        sampling: how the shots were drawn (``numpy`` | ``dassl``).
    """

    dataset: str
    class_order: list[int]
    class_names: list[str]
    experiences: list[list[int]]
    train_index: list[np.ndarray]
    test_index: list[np.ndarray]
    template: str
    order_name: str
    short_classes: list[tuple[str, int]] = field(default_factory=list)
    sampling: str = "numpy"

    @property
    def n_experiences(self) -> int:
        return len(self.experiences)

    def shots_note(self, shots: int) -> str | None:
        """One line naming the classes with fewer than ``shots`` training images, or None when there are none."""
        if not self.short_classes:
            return None
        shown = 12  # keep it one readable line on datasets with many short classes
        named = ", ".join(f"{name!r} ({n})" for name, n in self.short_classes[:shown])
        if len(self.short_classes) > shown:
            named += f", and {len(self.short_classes) - shown} more"
        use = "draw them with repetition (as Dassl)" if self.sampling == "dassl" else "use all they have"
        return (f"{shots} shots asked; {len(self.short_classes)} of {len(self.class_names)} classes have fewer "
                f"training images and {use}: {named}")

    def describe(self) -> list[str]:
        """One line per experience: its classes and image counts."""
        lines = []
        for t, cls in enumerate(self.experiences):
            names = ", ".join(self.class_names[c] for c in cls[:6]) + (", ..." if len(cls) > 6 else "")
            lines.append(f"experience {t}: {len(cls)} classes ({names}); "
                         f"{len(self.train_index[t])} train / {len(self.test_index[t])} test images")
        return lines


def resolve_class_order(parts: DatasetParts, b: BenchmarkConfig, seed: int) -> tuple[list[int], str]:
    """The class order (original labels) and a name for it."""
    n = len(parts.classnames)
    order = b.class_order
    if order == "icarl":
        from lamm_cl.data.orders import ICARL_CIFAR100_ORDER

        if n != len(ICARL_CIFAR100_ORDER):
            raise ConfigError(f"benchmark.class_order: icarl is the 100-class CIFAR-100 order; "
                              f"{parts.name} has {n} classes")
        return list(ICARL_CIFAR100_ORDER), "icarl"
    if order == "identity":
        # The dataset's own label order: what LAMM's base->new split cuts in half
        # (Dassl's subsample_classes keeps labels[:ceil(n/2)] as base, the rest as new).
        return list(range(n)), "identity"
    if order == "seeded":
        s = seed if b.order_seed is None else b.order_seed
        return np.random.default_rng(s).permutation(n).tolist(), f"seeded({s})"
    bad = [c for c in order if not 0 <= c < n]
    if bad:
        raise ConfigError(f"benchmark.class_order: class ids {bad[:5]} are outside 0..{n - 1} of {parts.name}")
    if len(set(order)) != len(order):
        raise ConfigError("benchmark.class_order: a class id is listed twice")
    return list(order), "explicit"


def split_counts(n_classes: int, b: BenchmarkConfig) -> list[int]:
    """Classes per experience. An uneven ``n_experiences`` gives the first experiences one class more."""
    if b.classes_per_experience is not None:
        if sum(b.classes_per_experience) != n_classes:
            raise ConfigError(f"benchmark.classes_per_experience: sums to {sum(b.classes_per_experience)} "
                              f"but the class order has {n_classes} classes")
        return list(b.classes_per_experience)
    n = b.n_experiences
    if n > n_classes:
        raise ConfigError(f"benchmark.n_experiences: {n} experiences cannot be made from {n_classes} classes")
    base, extra = divmod(n_classes, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def dassl_fewshot(labels: np.ndarray, shots: int, seed: int) -> dict[int, list[int]]:
    """Dassl's few-shot draw of a training list: the indices it picks for each label.

    Dassl seeds Python's ``random`` with the run's seed (Dassl.pytorch ``dassl/utils/tools.py:73``,
    ``set_random_seed``, called by CoOp's ``train.py`` before the dataset is built); the dataset then
    draws its shots before anything else takes a number from that stream (CoOp's
    ``datasets/oxford_pets.py``: ``generate_fewshot_dataset(train, num_shots=...)`` before
    ``subsample_classes``, so the base->new halves keep the draw made over every class). The draw
    (``dassl/data/datasets/base_dataset.py:155-188``, ``generate_fewshot_dataset``, commit 27eb2f4)
    groups the list by label in order of first appearance (a ``defaultdict``) and takes
    ``random.sample(items, k)`` per label, or ``random.choices(items, k=k)`` when a label has fewer than
    k items (CoOp calls it with the default ``repeat=True``). ``random.sample`` picks positions, so
    sampling indices picks the same images as sampling Dassl's ``Datum`` items.

    Args:
        labels: the label of each training image, in the split file's order.
        shots: k.
        seed: the run's seed.

    Returns:
        ``label -> picked indices`` in Dassl's order (labels in order of first appearance).
    """
    rng = random.Random(seed)  # the state random.seed(seed) gives, without touching the global stream
    labels = np.asarray(labels)
    blocks = class_indices(labels)  # label -> its indices, ascending: Dassl's per-label item lists
    first = {y: int(idx[0]) for y, idx in blocks.items()}
    out: dict[int, list[int]] = {}
    for y in sorted(blocks, key=first.__getitem__):  # labels in order of first appearance
        items = blocks[y]
        # sample/choices pick positions from the length alone (whatever the sequence holds), so drawing from
        # range(n) and indexing the items gives what Dassl's draw over the Datum list gives
        picks = rng.sample(range(len(items)), shots) if len(items) >= shots else rng.choices(range(len(items)), k=shots)
        out[y] = items[picks].tolist()
    return out


def class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Each label's indices in ``labels``, ascending (what ``np.flatnonzero(labels == y)`` gives), found in
    one sort instead of one pass over the labels per class (ImageNet: 1,000 passes over 1.28 M labels)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    uniq, starts = np.unique(labels[order], return_index=True)
    ends = [*starts[1:], len(order)]
    return {int(y): order[a:b] for y, a, b in zip(uniq, starts, ends)}


def make_plan(parts: DatasetParts, b: BenchmarkConfig, seed: int) -> Plan:
    """Build the class-incremental plan of ``parts`` for run seed ``seed``.

    Raises:
        ConfigError: an impossible split (more experiences than classes, counts that do not
            add up, a class with no training or no test images).

    ``sampling: numpy`` draws the shots per class in class order with numpy's generator; a class with
    fewer training images than ``shots`` takes all of them, as Dassl's ``generate_fewshot_dataset`` does
    without ``repeat`` (Dassl.pytorch dassl/data/datasets/base_dataset.py: ``if len(items) >= num_shots:
    random.sample(...)``, else ``items``). ``sampling: dassl`` makes Dassl's own draw
    (:func:`dassl_fewshot`). The plan lists the short classes in ``short_classes``.

    A ``benchmark.sequence`` is planned by :func:`lamm_cl.sequence.plan_for` instead.
    """
    order, order_name = resolve_class_order(parts, b, seed)
    counts = split_counts(len(order), b)
    tr_labels, te_labels = parts.train.labels, parts.test.labels
    rng = np.random.default_rng(seed)
    dassl = dassl_fewshot(tr_labels, b.shots, seed) if b.shots is not None and b.sampling == "dassl" else None
    experiences, train_index, test_index = [], [], []
    short: list[tuple[str, int]] = []
    start = 0
    by_class_tr, by_class_te = class_indices(tr_labels), class_indices(te_labels)
    none = np.zeros(0, dtype=np.int64)
    for count in counts:
        new_labels = list(range(start, start + count))
        start += count
        tr, te = [], []
        for c in new_labels:
            orig = order[c]
            idx_tr = by_class_tr.get(orig, none)
            idx_te = by_class_te.get(orig, none)
            if len(idx_te) == 0:
                raise ConfigError(f"benchmark: class {parts.classnames[orig]!r} has no test images in {parts.name}")
            if dassl is not None:
                if 0 < len(idx_tr) < b.shots:
                    short.append((parts.classnames[orig], len(idx_tr)))
                idx_tr = np.asarray(dassl.get(orig, []), dtype=np.int64)  # in Dassl's order
            elif b.shots is not None:
                if 0 < len(idx_tr) < b.shots:
                    short.append((parts.classnames[orig], len(idx_tr)))  # all of them, no draw
                elif len(idx_tr) >= b.shots:
                    idx_tr = np.sort(rng.choice(idx_tr, size=b.shots, replace=False))
            if len(idx_tr) == 0:
                raise ConfigError(f"benchmark: class {parts.classnames[orig]!r} has no training images in {parts.name}")
            tr.append(idx_tr)
            te.append(idx_te)
        experiences.append(new_labels)
        train_index.append(np.concatenate(tr))
        test_index.append(np.concatenate(te))
    return Plan(
        dataset=parts.name,
        class_order=order,
        class_names=[parts.classnames[o] for o in order],
        experiences=experiences,
        train_index=train_index,
        test_index=test_index,
        template=b.template or parts.template,
        order_name=order_name,
        short_classes=short,
        sampling=b.sampling,
    )


def fewshot_images(plan: Plan, parts: DatasetParts, shots: int, seed: int) -> dict:
    """What ``fewshot.json`` holds: the training images a few-shot run drew, per class, so that a draw can be
    compared with a reference run's (Dassl's ``split_fewshot/shot_<k>-seed_<s>.pkl``).

    Each class (in the plan's label order) lists its images' paths as the dataset was loaded (``#<index>`` for
    in-memory datasets) and their indices in the training split, in the order they were drawn.
    """
    paths = getattr(parts.train, "paths", None)
    classes = []
    for t, labels in enumerate(plan.experiences):
        idx = plan.train_index[t]
        of = parts.train.labels[idx]
        for c in labels:
            mine = idx[of == plan.class_order[c]].tolist()
            classes.append({"label": c, "name": plan.class_names[c], "original_label": plan.class_order[c],
                            "images": [paths[i] if paths is not None else f"#{i}" for i in mine], "index": mine})
    return {"dataset": plan.dataset, "shots": shots, "seed": seed, "sampling": plan.sampling, "classes": classes}


class LabelledTensorDataset(torch.utils.data.Dataset):
    """Samples given by a function of an index, with integer targets (what Avalanche wraps)."""

    def __init__(self, get: Callable[[int], torch.Tensor], targets: Sequence[int]):
        self._get = get
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self._get(i), self.targets[i]


def make_streams(plan: Plan, train_x: Callable[[int, np.ndarray], Callable[[int], torch.Tensor]],
                 test_x: Callable[[int, np.ndarray], Callable[[int], torch.Tensor]],
                 train_labels: np.ndarray, test_labels: np.ndarray):
    """Build the Avalanche scenario of a plan.

    Args:
        plan: the split.
        train_x, test_x: ``(experience, indices) -> (i -> input tensor)``: how to read the
            inputs (cached features or preprocessed images) of those dataset indices.
        train_labels, test_labels: the dataset's original labels of every sample.
    Returns:
        An Avalanche scenario with ``train_stream`` and ``test_stream``, one experience per
        plan experience, each knowing its ``classes_in_this_experience``.
    """
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    remap = np.full(max(plan.class_order) + 1, -1, dtype=np.int64)
    remap[plan.class_order] = np.arange(len(plan.class_order))

    def make(t: int, idx: np.ndarray, read, labels: np.ndarray):
        ds = LabelledTensorDataset(read(t, idx), remap[labels[idx]])
        return _make_taskaware_classification_dataset(ds, task_labels=0)

    train = [make(t, idx, train_x, train_labels) for t, idx in enumerate(plan.train_index)]
    test = [make(t, idx, test_x, test_labels) for t, idx in enumerate(plan.test_index)]
    return with_classes_timeline(benchmark_from_datasets(train=train, test=test))


def dry_run(cfg, device: Optional[str] = None, check_images: bool = False) -> list[str]:
    """Validate a config as far as possible without training, so that a dry run that passes means the run
    can start: the device, the loggers and each strategy's plugins, the dataset index, the plan of every
    seed, the model's names and where its weights will come from (never downloading them), and every
    strategy's options against the model's shape, the data and the device's memory; with ``check_images``,
    every image is decoded. Return the plan as printable lines. (A sequence of datasets:
    :func:`lamm_cl.sequence.dry_run`.)

    Args:
        device: ``--device``, which overrides the config's ``device`` as in the run.
        check_images: decode every image of both splits (the run would stop at the first undecodable one).

    Raises:
        UserError: whatever is wrong, from the device to an undecodable image (named).
    """
    from lamm_cl.data import load_dataset
    from lamm_cl.errors import DataNotFoundError

    setup = check_run_setup(cfg, device)
    b = cfg.benchmark
    try:
        parts = load_dataset(b.dataset, b.root, download=False)  # a dry run never downloads
    except DataNotFoundError:
        if b.download:
            root = Path(b.root).expanduser()
            raise DataNotFoundError(f"{b.dataset}: no data in {root} yet; a dry run does not download, "
                                    "a real run will (benchmark.download: true)") from None
        raise
    return plan_lines(cfg, parts, [f"dataset {parts.name}: {len(parts.classnames)} classes, {len(parts.train)} "
                                   f"train / {len(parts.test)} test images; template {(b.template or parts.template)!r}"],
                      setup, check_images=check_images)


def check_run_setup(cfg, device: Optional[str] = None) -> tuple[torch.device, str]:
    """The dry run's checks that need no data: the device (and a note on it), the loggers, each strategy's
    Avalanche plugins. Return the device and its note for :func:`plan_lines`."""
    from lamm_cl.avalanche_plugins import build_avalanche_plugins, check_loggers

    dev, device_note = _dry_run_device(device or cfg.device)
    check_loggers(cfg.loggers)
    for i, e in enumerate(cfg.strategies):
        build_avalanche_plugins(getattr(e.options, "plugins", []) or [], path=f"strategies[{i}].plugins")
    return dev, device_note


def plan_lines(cfg, parts, lines: list[str], setup: tuple[torch.device, str], make: Optional[Callable] = None,
               check_images: bool = False) -> list[str]:
    """The dry run's lines after the data's (``lines``, whose first line gains whether every image decodes):
    the model and where its weights come from, the device (``setup``, from :func:`check_run_setup`), each
    seed's plan (made by ``make``, default :func:`make_plan`), each target, each strategy; every strategy's
    options are checked against the model, the plans and the device first."""
    from lamm_cl.model.clip import resolve_weights, weights_on_disk
    from lamm_cl.strategy_kit.setup import check_strategies, setup_of_arch

    b = cfg.benchmark
    dev, device_note = setup
    weights = resolve_weights(cfg.model.arch, cfg.model.pretrained)
    plans = {seed: (make or make_plan)(parts, b, seed) for seed in cfg.seeds}
    check_strategies(cfg.strategies, setup_of_arch(cfg.model.arch, list(plans.values()), dev))
    decoded = _decode_every_image(parts) if check_images else None
    lines = [lines[0] + ("" if decoded is None else f"; every image on disk decodes ({decoded})" if decoded else
                         "; images held in memory (nothing to decode)"),
             *lines[1:],
             f"model {cfg.model.arch} + {cfg.model.pretrained}"
             + (" (RANDOM weights: the numbers will say nothing about pretrained CLIP)" if weights is None else
                f": weights {weights_on_disk(cfg.model.arch, weights)[1]}"),
             f"device {dev}{device_note}"]
    for seed, plan in plans.items():
        lines.append(f"seed {seed}: class order {plan.order_name}, {plan.n_experiences} experiences "
                     f"of {[len(e) for e in plan.experiences]} classes")
        lines.extend("  " + line for line in plan.describe())
        note = plan.shots_note(b.shots) if b.shots else None
        if note:
            lines.append("  " + note)
    if b.evaluate_on:  # benchmark.evaluate_on: each target's classes and images, or what is missing
        from lamm_cl.data.targets import describe_targets

        lines.extend(describe_targets(cfg, parts, plan))
    for e in cfg.strategies:
        named = f"{e.run_label} ({e.name})" if e.label else e.name
        lines.append(f"strategy {named}: epochs {getattr(e.options, 'epochs', '-')}, "
                     f"batch {getattr(e.options, 'batch_size', '-')}, lr {getattr(e.options, 'lr', '-')}"
                     + _inputs_note(e.name))
    return lines


def _dry_run_device(name: str) -> tuple[torch.device, str]:
    """The device a run would use, and a note: a name the run refuses (``gpu``, ``tpu``) is refused here too,
    but CUDA asked for on a machine without it (a login node preparing a GPU job) is only noted.

    Raises:
        ConfigError: not a device name.
    """
    from lamm_cl.model.clip import resolve_device

    try:
        return resolve_device(name), ""
    except ConfigError:
        try:
            dev = torch.device(name)
        except RuntimeError:
            dev = None
        if dev is None or dev.type != "cuda":
            raise
        return dev, " (CUDA is not available on this machine: the run must start on one where it is)"


def _decode_every_image(parts) -> int:
    """Decode every image of both splits (those on disk; in-memory ones decode by construction).

    Returns:
        How many were decoded.
    Raises:
        ImageError: the first that does not decode, named.
    """
    n = 0
    pending = [parts.train, parts.test]
    while pending:
        samples = pending.pop(0)
        pending.extend(getattr(samples, "members", []))  # a sequence of datasets: each dataset's samples
        if hasattr(samples, "paths"):
            for i in range(len(samples)):
                samples.image(i)
                n += 1
    return n


def _inputs_note(strategy: str) -> str:
    """What a strategy reads, for the dry-run plan: image-reading strategies cannot use the feature cache."""
    from lamm_cl.registry import get_strategy

    if get_strategy(strategy).inputs == "images":
        return "; reads images every step (no feature cache)"
    return "; trains on cached image features"


def seen_classes(plan: Plan, upto: int) -> int:
    """Number of classes seen after experience ``upto`` (labels 0..n-1)."""
    return sum(len(e) for e in plan.experiences[: upto + 1])
