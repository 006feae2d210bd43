"""Loading ``benchmark.evaluate_on`` (datasets a run never trains on, scored after every experience) and matching
their classes to the trained ones; the scoring itself is :mod:`lamm_cl.runner.targets`.

A target class is the same as a trained class when their keys are -- ImageNet's wnids
(:attr:`DatasetParts.class_keys`) where both datasets have keys -- or else their names (case and
spacing aside). Nothing here imports torch: a dry run lists the targets (:func:`describe_targets`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lamm_cl.data import load_dataset
from lamm_cl.data.base import DatasetParts
from lamm_cl.errors import DataNotFoundError


@dataclass
class Target:
    """One ``benchmark.evaluate_on`` entry, loaded.

    Attributes:
        label: what results name it: the dataset's name, ``<dataset>#<i>`` when a dataset is listed
            twice (from two roots).
        parts: the loaded dataset; its test images are scored.
        template: its prompt for classes the strategy has not trained (the entry's ``template``, else
            the dataset's own).
    """

    label: str
    parts: DatasetParts
    template: str

    @property
    def n_classes(self) -> int:
        return len(self.parts.classnames)


def load_targets(cfg) -> list[Target]:
    """Load every ``benchmark.evaluate_on`` dataset (its index only; no image is decoded).

    Raises:
        DataNotFoundError: a target's files are not there (the message names the entry).
        UserError: a target's files are malformed.
    """
    b = cfg.benchmark
    names = [t.dataset for t in b.evaluate_on]
    out = []
    for i, t in enumerate(b.evaluate_on):
        root = t.root if t.root is not None else b.root
        try:
            parts = load_dataset(t.dataset, root, download=False)
        except DataNotFoundError as e:
            raise DataNotFoundError(f"benchmark.evaluate_on[{i}]: {e}") from None
        if not len(parts.test):
            raise DataNotFoundError(f"benchmark.evaluate_on[{i}]: {t.dataset} in {Path(root).expanduser()} has no "
                                    "test images")
        label = t.dataset if names.count(t.dataset) == 1 else f"{t.dataset}#{i}"
        out.append(Target(label, parts, t.template or parts.template))
    return out


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def matched_labels(trained: DatasetParts, plan, target: DatasetParts) -> list[Optional[int]]:
    """For each class of ``target`` (by its label), the run's label of the same trained class, or None.

    Classes are the same when their keys are (ImageNet's wnids, :attr:`DatasetParts.class_keys`, when
    both datasets have keys), else when their names are (case and spacing aside).
    """
    by_keys = trained.class_keys is not None and target.class_keys is not None
    keys = trained.class_keys if by_keys else [_key(n) for n in trained.classnames]
    run_label = {keys[orig]: new for new, orig in enumerate(plan.class_order)}
    theirs = target.class_keys if by_keys else [_key(n) for n in target.classnames]
    return [run_label.get(k) for k in theirs]


def matched_names(trained: list[str], names: list[str]) -> list[Optional[int]]:
    """For each of ``names``, the label of the trained class of that name (``trained``: the class names by
    label; case and spacing aside, as :func:`matched_labels` matches names), or None."""
    label = {_key(n): i for i, n in enumerate(trained)}
    return [label.get(_key(n)) for n in names]


def describe_targets(cfg, trained: DatasetParts, plan) -> list[str]:
    """The dry run's lines for ``benchmark.evaluate_on``: each target's classes, images, and how many of
    its classes are trained classes.

    Raises:
        DataNotFoundError: a target's data is missing (one line naming the entry and what is missing).
    """
    lines = []
    for target in load_targets(cfg):
        matched = matched_labels(trained, plan, target.parts)
        n = sum(c is not None for c in matched)
        how = ("all trained classes: scored with the trained text" if n == target.n_classes else
               f"{n} trained classes, {target.n_classes - n} scored by name (open vocabulary)")
        lines.append(f"target {target.label}: {target.n_classes} classes, {len(target.parts.test)} test images "
                     f"(evaluated after every experience, among its own classes; {how}); "
                     f"template {target.template!r}")
    return lines
