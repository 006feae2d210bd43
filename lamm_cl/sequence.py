"""A benchmark made of a sequence of datasets (MTIL, X-TAIL): one experience per dataset, in the listed order.

The datasets are loaded one by one and put end to end as one :class:`~lamm_cl.data.base.DatasetParts`
whose labels are global: dataset d's own label ``y`` becomes ``offset_d + y``, where ``offset_d`` counts the
classes of the datasets before it, so two datasets never share a label even when they share a class name.
Each dataset keeps its own :class:`~lamm_cl.data.base.Samples` inside :class:`SequenceSamples`, so its
cached features carry the same store key as in a split benchmark of that dataset (the extractor reads
the members one by one, :func:`member_samples`).

The plan (:class:`SequencePlan`) is a :class:`~lamm_cl.benchmark.Plan` with the identity class order and
one experience per dataset; few-shot draws are made per dataset with the run's seed, as a split benchmark
of that dataset in its own label order draws them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from lamm_cl.benchmark import Plan, make_plan, plan_lines
from lamm_cl.config import BenchmarkConfig
from lamm_cl.data.base import DatasetParts, Samples
from lamm_cl.errors import ConfigError, DataNotFoundError

DEFAULT_TEMPLATE = "a photo of a {}."  # when the datasets' own templates differ (one prompt layout for every class)


class SequenceSamples(Samples):
    """Several datasets' samples end to end, with labels offset to be global.

    Attributes:
        members: each dataset's own samples, in order.
        names: the dataset of each member.
        offsets: the first global label of each member.
    """

    def __init__(self, members: Sequence[Samples], names: Sequence[str], offsets: Sequence[int]):
        self.members = list(members)
        self.names = list(names)
        self.offsets = [int(o) for o in offsets]
        self.starts = np.cumsum([0] + [len(m) for m in self.members])  # first row of each member
        self.labels = np.concatenate([m.labels + o for m, o in zip(self.members, self.offsets)]) \
            if self.members else np.zeros(0, dtype=np.int64)
        self.identity = "sequence(" + ",".join(m.identity for m in self.members) + ")"
        self.index = np.arange(len(self.labels), dtype=np.int64)

    def locate(self, i: int) -> tuple[int, int]:
        """(member, row in the member) of sample ``i``."""
        m = int(np.searchsorted(self.starts, i, side="right")) - 1
        return m, int(i - self.starts[m])

    def image(self, i: int) -> Image.Image:
        m, j = self.locate(i)
        return self.members[m].image(j)

    @property
    def paths(self) -> list[str]:
        """Each sample as ``<dataset>:<its path>`` (``#<row>`` for in-memory datasets)."""
        out = []
        for name, m in zip(self.names, self.members):
            own = getattr(m, "paths", None)
            out.extend(f"{name}:{own[j] if own is not None else f'#{j}'}" for j in range(len(m)))
        return out

    def subset(self, indices: Sequence[int]) -> "SequenceSamples":
        """The samples at ``indices``, which must go through the members in order (sorted indices do),
        as a sequence of each member's own subset (so each keeps its own identity)."""
        idx = np.asarray(indices, dtype=np.int64)
        member = np.searchsorted(self.starts, idx, side="right") - 1
        if np.any(np.diff(member) < 0):
            raise ValueError("a sequence's subset must take its datasets in order")
        parts = [m.subset((idx[member == k] - self.starts[k]).tolist()) for k, m in enumerate(self.members)]
        return SequenceSamples(parts, self.names, self.offsets)


def member_samples(samples: Samples) -> Optional[list[Samples]]:
    """The datasets' own samples when ``samples`` is a sequence's (features are extracted and stored per
    dataset, under the keys a split benchmark of that dataset uses), else None."""
    return samples.members if isinstance(samples, SequenceSamples) else None


@dataclass
class Member:
    """One dataset of a sequence: its name, first global label and class count."""

    dataset: str
    offset: int
    n_classes: int
    template: str  # the dataset's own template


@dataclass
class SequenceParts(DatasetParts):
    """The datasets of a sequence as one :class:`DatasetParts` with global labels."""

    members: list[Member] = field(default_factory=list)


def load_sequence(b: BenchmarkConfig, download: Optional[bool] = None) -> SequenceParts:
    """Load every dataset of ``b.sequence`` and put them end to end.

    Args:
        download: None: each entry's own ``download``; False: never (a dry run).

    Raises:
        ConfigError: an unknown dataset (the message names its ``benchmark.sequence[i]``).
        DataNotFoundError: a dataset's files are not there (the message names the entry and its root).
    """
    from lamm_cl.data import list_datasets, load_dataset

    known = list_datasets()
    loaded: list[DatasetParts] = []
    for i, e in enumerate(b.sequence or []):
        if e.dataset not in known:
            raise ConfigError(f"benchmark.sequence[{i}].dataset: unknown dataset {e.dataset!r}; "
                              f"known: {', '.join(known)}")
        try:
            loaded.append(load_dataset(e.dataset, e.root, e.download if download is None else download))
        except DataNotFoundError as err:
            hint = ("; a dry run does not download, a real run will (download: true)"
                    if e.download and download is False else "")
            raise DataNotFoundError(f"benchmark.sequence[{i}] ({e.dataset}, root {e.root}): {err}{hint}") from None
    return join(loaded)


def join(loaded: Sequence[DatasetParts]) -> SequenceParts:
    """Datasets end to end, labels offset by the classes of the datasets before."""
    members, offset = [], 0
    for p in loaded:
        members.append(Member(p.name, offset, len(p.classnames), p.template))
        offset += len(p.classnames)
    names = [m.dataset for m in members]
    templates = {p.template for p in loaded}
    return SequenceParts(
        name="+".join(names),
        classnames=[c for p in loaded for c in p.classnames],
        train=SequenceSamples([p.train for p in loaded], names, [m.offset for m in members]),
        test=SequenceSamples([p.test for p in loaded], names, [m.offset for m in members]),
        template=templates.pop() if len(templates) == 1 else DEFAULT_TEMPLATE,
        members=members,
    )


@dataclass
class SequencePlan(Plan):
    """A plan whose experience d is dataset d of the sequence (labels ``offset_d .. offset_d + n_d - 1``).

    Attributes:
        members: the datasets, in order.
        evaluation: ``task_aware`` (each dataset among its own classes) or ``all_classes``.
    """

    members: list[Member] = field(default_factory=list)
    evaluation: str = "task_aware"

    @property
    def n_classes(self) -> int:
        return sum(m.n_classes for m in self.members)

    def class_dataset(self) -> list[str]:
        """The dataset of each global label (class names keep their dataset)."""
        return [m.dataset for m in self.members for _ in range(m.n_classes)]

    def describe(self) -> list[str]:
        lines = []
        for t, m in enumerate(self.members):
            names = ", ".join(self.class_names[c] for c in self.experiences[t][:5])
            lines.append(f"experience {t}: {m.dataset}: {m.n_classes} classes ({names}, ...), labels "
                         f"{m.offset}..{m.offset + m.n_classes - 1}; {len(self.train_index[t])} train / "
                         f"{len(self.test_index[t])} test images")
        return lines


def make_sequence_plan(parts: SequenceParts, b: BenchmarkConfig, seed: int) -> SequencePlan:
    """The plan of a sequence for run seed ``seed``: each dataset is one experience; with ``shots``, each
    dataset's shots are drawn with ``seed`` exactly as a one-experience split of that dataset in its own
    label order (:func:`lamm_cl.benchmark.make_plan`) draws them.

    Raises:
        ConfigError: a class with no training or no test images.
    """
    one = replace(b, sequence=None, dataset=None, class_order="identity", n_experiences=1,
                  classes_per_experience=None)
    experiences, train_index, test_index, short = [], [], [], []
    train, test = parts.train, parts.test
    for k, m in enumerate(parts.members):
        own = DatasetParts(m.dataset, parts.classnames[m.offset:m.offset + m.n_classes],
                           train.members[k], test.members[k], m.template)
        p = make_plan(own, one, seed)
        experiences.append(list(range(m.offset, m.offset + m.n_classes)))
        train_index.append(p.train_index[0] + train.starts[k])
        test_index.append(p.test_index[0] + test.starts[k])
        short.extend((f"{m.dataset}/{name}", n) for name, n in p.short_classes)
    return SequencePlan(
        dataset=parts.name, class_order=list(range(len(parts.classnames))), class_names=list(parts.classnames),
        experiences=experiences, train_index=train_index, test_index=test_index,
        template=b.template or parts.template, order_name="sequence", short_classes=short, sampling=b.sampling,
        members=list(parts.members), evaluation=b.evaluation)


def dry_run_lines(b: BenchmarkConfig) -> tuple[SequenceParts, list[str]]:
    """Load every dataset of the sequence without downloading: one line per dataset (classes, images).

    Raises:
        DataNotFoundError: one or more datasets are not there; the one line names every missing one.
        ConfigError: an unknown dataset.
    """
    lines, missing, loaded = [], [], []
    for i, e in enumerate(b.sequence or []):
        try:
            parts = load_sequence(replace(b, sequence=[e]), download=False)
        except DataNotFoundError as err:
            missing.append(str(err).replace("benchmark.sequence[0]", f"benchmark.sequence[{i}]"))
            continue
        except ConfigError as err:
            raise ConfigError(str(err).replace("benchmark.sequence[0]", f"benchmark.sequence[{i}]")) from None
        own = parts.members[0]
        loaded.append(DatasetParts(own.dataset, parts.classnames, parts.train.members[0], parts.test.members[0],
                                   own.template))
        lines.append(f"  {e.dataset} ({Path(e.root).expanduser()}): {len(parts.classnames)} classes, "
                     f"{len(parts.train)} train / {len(parts.test)} test images")
    if missing:
        head = f"{len(missing)} of {len(b.sequence)} datasets of the sequence are missing: " if len(missing) > 1 else ""
        raise DataNotFoundError(head + " | ".join(missing))
    return join(loaded), lines


def plan_for(parts: DatasetParts, b: BenchmarkConfig, seed: int) -> Plan:
    """The plan of any benchmark: :func:`make_sequence_plan` for a sequence (``parts`` from
    :func:`load_sequence`), :func:`lamm_cl.benchmark.make_plan` for a split of one dataset."""
    return make_sequence_plan(parts, b, seed) if b.sequence is not None else make_plan(parts, b, seed)


def load_benchmark(b: BenchmarkConfig, download: Optional[bool] = None) -> DatasetParts:
    """The data of any benchmark: a sequence's datasets end to end, or the one dataset."""
    from lamm_cl.data import load_dataset

    if b.sequence is not None:
        return load_sequence(b, download)
    return load_dataset(b.dataset, b.root, b.download if download is None else download)


def dry_run(cfg, device: Optional[str] = None, check_images: bool = False) -> list[str]:
    """:func:`lamm_cl.benchmark.dry_run`, for a sequence too: one line per dataset (classes, images), then each
    seed's plan (one experience per dataset) and each strategy, with whether it scores unseen classes.
    ``device`` and ``check_images`` as there.

    Raises:
        UserError: whatever is wrong; a sequence's missing datasets all named in one line.
    """
    from lamm_cl.benchmark import check_run_setup
    from lamm_cl.benchmark import dry_run as split_dry_run
    from lamm_cl.registry import get_strategy

    b = cfg.benchmark
    if b.sequence is None:
        return split_dry_run(cfg, device, check_images)
    setup = check_run_setup(cfg, device)
    parts, per_dataset = dry_run_lines(b)
    lines = plan_lines(cfg, parts, [f"sequence of {len(b.sequence)} datasets, evaluation {b.evaluation}; "
                                    f"{len(parts.classnames)} classes in all; template "
                                    f"{(b.template or parts.template)!r}", *per_dataset], setup,
                       make=make_sequence_plan, check_images=check_images)
    T = len(b.sequence)
    for e in cfg.strategies:
        unseen = get_strategy(e.name).scores_unseen
        lines.append(f"strategy {e.run_label}: " + (f"scores unseen classes: {T * T} dataset evaluations per seed"
                                                    if unseen else
                                                    f"cannot score unseen classes: {T * (T + 1) // 2} dataset "
                                                    "evaluations per seed, Transfer n/a"))
    return lines
