"""``lamm-cl sweep --dry-run``: what a grid will cost, before anything runs.

Counts are exact where the data is there (the dataset index is read, the class-incremental
plan of every job is built, no image is opened); a CoOp dataset or CIFAR-100 that is not there is
counted from its known split sizes (:data:`KNOWN_SPLITS`, each class an equal share), and the
estimate says so: images to encode once per feature group
(every image at the centre crop, plus ``train_views`` augmented views of the training images each
job reads: a few-shot job's own draw), and training steps per strategy (per experience: ``epochs x floor(images / batch_size)``,
the last partial batch dropped as Dassl does). The GPU-hours multiply them by the sweep's
``cost:`` seconds. Their defaults (:class:`~lamm_cl.sweep.spec.CostConfig`) are rough estimates
for ViT-B/16 on one current data-centre GPU, not measurements: no GPU timed them.
``--calibrate`` (:mod:`lamm_cl.sweep.calibrate`) measures them on the user's own hardware and
estimates with those; or set them under ``cost:``.
"""
from __future__ import annotations

from collections import defaultdict

from lamm_cl.errors import UserError
from lamm_cl.sweep.spec import Sweep


# Class count, training and test images of each dataset in the split lamm-cl reads (CoOp's split files;
# CIFAR-100's own), for estimating before the data is there. Sums: README "What the full grid costs".
KNOWN_SPLITS = {
    "imagenet": (1000, 1_281_167, 50_000),
    "caltech101": (100, 4_128, 2_465),
    "oxford_pets": (37, 2_944, 3_669),
    "stanford_cars": (196, 6_509, 8_041),
    "oxford_flowers": (102, 4_093, 2_463),
    "food101": (101, 50_500, 30_300),
    "fgvc_aircraft": (100, 3_334, 3_333),
    "sun397": (397, 15_880, 19_850),
    "dtd": (47, 2_820, 1_692),
    "eurosat": (10, 13_500, 8_100),
    "ucf101": (101, 7_639, 3_783),
    "cifar100": (100, 50_000, 10_000),
    "mnist": (10, 60_000, 10_000),
}


def _load_sequence(b, sized: set):
    """A sequence's parts for counting: its datasets where they are, known split sizes where not.

    Raises:
        UserError: a dataset that is neither there nor of known size.
    """
    from dataclasses import replace

    from lamm_cl.data import load_dataset
    from lamm_cl.sequence import join, load_sequence

    loaded = []
    for e in b.sequence:
        try:
            load_sequence(replace(b, sequence=[e]), download=False)  # the sequence's own checks and messages
            loaded.append(load_dataset(e.dataset, e.root, False))
        except UserError:
            if e.dataset not in KNOWN_SPLITS:
                raise
            loaded.append(stand_in(e.dataset))
            sized.add(e.dataset)
    return join(loaded)


class _Counted:
    """Stand-in samples: labels only (``n`` images spread over ``k`` classes as evenly as they go), no image."""

    def __init__(self, labels, identity: str):
        import numpy as np

        self.labels = np.asarray(labels, dtype=np.int64)
        self.identity = identity

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "_Counted":
        return _Counted(self.labels[list(indices)], self.identity)


def stand_in(name: str):
    """A :class:`~lamm_cl.data.base.DatasetParts` with ``name``'s known split sizes and no images (for counting)."""
    import numpy as np

    from lamm_cl.data.base import DatasetParts

    k, n_train, n_test = KNOWN_SPLITS[name]
    return DatasetParts(name=name, classnames=[f"class {i}" for i in range(k)],
                        train=_Counted(np.sort(np.arange(n_train) % k), f"{name}:train"),
                        test=_Counted(np.sort(np.arange(n_test) % k), f"{name}:test"))


def _sequence_evaluations(plan, scores_unseen: bool) -> list[int]:
    """(dataset evaluations, test images scored) of one sequence job: T x T when the strategy scores unseen
    classes, the T(T+1)/2 cells on and below the diagonal when not."""
    T = plan.n_experiences
    n = [len(i) for i in plan.test_index]
    if scores_unseen:
        return [T * T, T * sum(n)]
    return [T * (T + 1) // 2, sum((T - d) * n[d] for d in range(T))]


def _steps(plan, opts) -> int:
    epochs = int(getattr(opts, "epochs", 0) or 0)
    batch = int(getattr(opts, "batch_size", 0) or 0)
    if epochs <= 0 or batch <= 0:
        return 0
    return sum(epochs * (len(idx) // batch) for idx in plan.train_index)


def estimate(sweep: Sweep) -> list[str]:
    """Lines describing the sweep's jobs and cost (nothing is written or trained)."""
    from lamm_cl.data import load_dataset
    from lamm_cl.sequence import plan_for
    from lamm_cl.registry import get_strategy
    from lamm_cl.sweep.job import feature_group, job_configs, needs_features, reads_views, view_images

    cost = sweep.config.cost
    folders = sorted({j.results for j in sweep.jobs})
    lines = [f"sweep {sweep.config.name}: {len(sweep.jobs)} jobs in {len(folders)} results folders, "
             f"launcher {sweep.config.launcher.get('name')}, output {sweep.output}"]
    parts_of: dict[tuple, object] = {}
    missing: dict[str, str] = {}
    sized: set[str] = set()  # datasets absent here, counted from their known split sizes
    images: dict[tuple, int] = {}  # per feature group: test + train at the centre crop
    views: dict[tuple, dict] = defaultdict(dict)  # per feature group: each distinct set of viewed images -> views
    steps: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    unknown_steps: set[str] = set()
    evals: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # sequence jobs: (dataset evaluations, test images)
    plans: dict[tuple, object] = {}
    for j, cfg in job_configs(sweep.jobs):
        b = cfg.benchmark
        key = (b.dataset, b.root, b.download) if b.sequence is None else repr(b.sequence)
        if key not in parts_of and b.describe() not in missing:
            try:
                parts_of[key] = (load_dataset(b.dataset, b.root, b.download) if b.sequence is None
                                 else _load_sequence(b, sized))
            except UserError as e:
                if b.sequence is not None:
                    missing[b.describe()] = " ".join(str(e).split())
                elif b.dataset in KNOWN_SPLITS:
                    parts_of[key] = stand_in(b.dataset)
                    sized.add(b.dataset)
                else:
                    missing[b.dataset] = " ".join(str(e).split())
        parts = parts_of.get(key)
        kinds[j.strategy] = get_strategy(cfg.strategies[0].name).inputs
        if parts is None:
            unknown_steps.add(j.strategy)
            continue
        if needs_features(cfg):  # what the feature stage encodes (job.prepare_features)
            group = feature_group(cfg)
            images[group] = len(parts.test) + len(parts.train)
        plan_key = (key, repr(b), j.seed)  # every strategy of a (benchmark, seed) shares its plan: draw it once
        if plan_key not in plans:
            plans[plan_key] = plan_for(parts, b, j.seed)
        plan = plans[plan_key]
        if reads_views(cfg):
            idx = view_images(cfg, parts, j.seed, plan)  # a few-shot job's views are of its own draw
            key = None if idx is None else idx.tobytes()
            views[group][key] = (len(parts.train) if idx is None else len(idx)) * cfg.features.train_views
        steps[j.strategy] += _steps(plan, cfg.strategies[0].options)
        if b.sequence is not None:
            more = _sequence_evaluations(plan, get_strategy(cfg.strategies[0].name).scores_unseen)
            evals[j.strategy] = [x + y for x, y in zip(evals[j.strategy], more)]
    n_views = sum(n for sets in views.values() for n in sets.values())
    n_images = sum(images.values()) + n_views
    lines.append(f"images to encode once: {n_images:,} in {len(images)} feature group(s)"
                 + (f", {n_views:,} of them augmented training views" if n_views else "")
                 + (" (plus the datasets not found below)" if missing else ""))
    lines.append("training steps per strategy (all its jobs):")
    for s in sorted(kinds, key=lambda s: -steps[s]):
        note = " + jobs whose dataset is missing" if s in unknown_steps else ""
        lines.append(f"  {s:<16} {steps[s]:>12,} steps  ({'images' if kinds[s] == 'images' else 'cached features'})"
                     f"{note}")
    if evals:
        lines.append("evaluations of sequence jobs (after every experience, on every dataset it can score; "
                     "features strategies: text encodings + a matrix product on cached test features, no image pass):")
        for s in sorted(evals):
            n, imgs = evals[s]
            lines.append(f"  {s:<16} {n:>6,} dataset evaluations, {imgs:>12,} test images scored"
                         + ("  (images: one image pass each)" if kinds[s] == "images" else ""))
    seconds = n_images * cost.encode_image_s + sum(
        n * (cost.image_step_s if kinds[s] == "images" else cost.feature_step_s) for s, n in steps.items())
    where = sweep.cost_device
    what = "GPU-hours" if where is None or where.startswith("cuda") else f"hours on {where} (not GPU-hours)"
    lines.append(f"estimated {what}: {seconds / 3600:.1f} ({seconds:,.0f} s; encode {cost.encode_image_s} s/image, "
                 f"{cost.feature_step_s} s/step on features, {cost.image_step_s} s/step on images"
                 + (f", measured on {where}" if where else "; set them under `cost:`") + "; evaluation not counted)")
    if sized:
        lines.append(f"not here, counted from their known split sizes (CoOp's splits; CIFAR-100's own), every "
                     f"class given an equal share: {', '.join(sorted(sized))}")
    for name, why in missing.items():
        lines.append(f"not counted: {name}: {why}")
    return lines
