"""``lamm-cl sweep SWEEP.yaml --dry-run --calibrate``: measure the ``cost:`` seconds on this machine.

The defaults under ``cost:`` are rough estimates (:class:`~lamm_cl.sweep.spec.CostConfig`); this
replaces them with timings of the code a job runs, on the sweep's model and device:

* ``encode_image_s``: the frozen image tower on a batch of preprocessed images, the batch size,
  autocast and ``no_grad`` of :class:`~lamm_cl.features.FeatureExtractor` (decoding and
  resizing, done by loader workers in parallel, are not counted);
* ``feature_step_s``: one training step (forward, loss, backward, optimizer step) of the sweep's
  feature-input strategy (``lamm`` when it has it), built by the strategy's own builder with the
  options of its benchmark file, on random cached-feature inputs;
* ``image_step_s``: the same for its image-input strategy (``maple``, ``maple_lamm``, ``finetune``,
  in that preference), on random preprocessed images.

Steps are timed by an Avalanche plugin from ``before_training_iteration`` to
``after_training_iteration`` inside ``template.train`` (so data loading is left out), after
warm-up steps, with ``torch.cuda.synchronize`` on CUDA; the median is kept. No dataset is read:
one experience of ``classes`` made-up classes stands in, so a step over many more classes (ImageNet's
100 per experience, or MaPLe's text tower over every class seen) costs more than measured here.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from lamm_cl.errors import UserError
from lamm_cl.sweep.spec import CostConfig, Sweep

# the order in which a strategy is picked to stand for its kind: the method itself, then MaPLe (most image steps)
FEATURE_PREFERENCE = ("lamm", "coop_lamm", "coop", "rapf", "linear_probe")
IMAGE_PREFERENCE = ("maple", "maple_lamm", "finetune")


@dataclass
class Timing:
    """One measured unit: what was timed and its median seconds."""

    what: str  # e.g. "lamm step (batch 32, 10 classes)"
    seconds: float
    samples: int  # timed repetitions behind the median


@dataclass
class Calibration:
    """What ``--calibrate`` measured, and the ``cost:`` it makes (rounded to 3 significant digits)."""

    device: str
    model: str  # "arch + pretrained"
    encode: Timing
    feature_step: Optional[Timing]  # None: the sweep has no trained feature-input strategy
    image_step: Optional[Timing]  # None: the sweep has no image-input strategy
    cost: CostConfig

    def cost_line(self) -> str:
        """The ready-to-paste line for the sweep file."""
        c = self.cost
        return (f"cost: {{encode_image_s: {_plain(c.encode_image_s)}, feature_step_s: {_plain(c.feature_step_s)}, "
                f"image_step_s: {_plain(c.image_step_s)}}}")


def _three_digits(seconds: float) -> float:
    return float(f"{seconds:.3g}")


def _plain(x: float) -> str:
    """A float in positional notation (``0.0000123``, never ``1.23e-05``: YAML 1.1 reads ``1e-05`` as text)."""
    import numpy as np

    return np.format_float_positional(x, trim="-")


class StepTimer:
    """Seconds of every training iteration, from before to after it (an Avalanche plugin)."""

    def __init__(self, device):
        from avalanche.training.plugins import SupervisedPlugin

        timer = self

        class _Plugin(SupervisedPlugin):
            def before_training_iteration(self, strategy, **kwargs):
                timer._sync()
                timer._start = time.perf_counter()

            def after_training_iteration(self, strategy, **kwargs):
                timer._sync()
                timer.times.append(time.perf_counter() - timer._start)

        self.device = device
        self.times: list[float] = []
        self._start = 0.0
        self.plugin = _Plugin()

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _pick(sweep: Sweep, kind: str) -> Optional[tuple]:
    """(strategy name, a job config holding it) of the sweep's strategy that stands for ``kind``."""
    from lamm_cl.registry import get_strategy
    from lamm_cl.sweep.job import _config

    first_job = {}
    for j in sweep.jobs:
        first_job.setdefault(j.strategy, j)
    trained = [s for s, j in first_job.items() if get_strategy(_config(j).strategies[0].name).inputs == kind
               and int(getattr(_config(j).strategies[0].options, "epochs", 0) or 0) > 0]
    preference = FEATURE_PREFERENCE if kind == "features" else IMAGE_PREFERENCE
    ranked = [s for s in preference if s in trained] + [s for s in trained if s not in preference]
    if not ranked:
        return None
    return ranked[0], _config(first_job[ranked[0]])


def _time_encoder(clip, device, warmup: int, repeats: int) -> Timing:
    import torch

    from lamm_cl.features import autocast, extraction_batch_size

    n = extraction_batch_size(device)
    x = torch.randn(n, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast(device, precision=clip.precision):
                clip.encode_images(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) / n)
    return Timing(f"image encoder (batch {n})", statistics.median(times), len(times))


def _time_steps(clip, name: str, cfg, classes: int, warmup: int, repeats: int) -> Timing:
    """Median seconds of one training step of strategy ``name`` as its builder makes it."""
    import numpy as np
    import torch

    from lamm_cl.data.orders import CIFAR100_CLASS_NAMES as CLASS_NAMES
    from lamm_cl.benchmark import make_streams
    from lamm_cl.features import AutocastPlugin
    from lamm_cl.registry import get_strategy
    from lamm_cl.runner.execute import seed_everything
    from lamm_cl.strategy_kit.context import StrategyContext

    spec = get_strategy(cfg.strategies[0].name)  # `name` is the job's label
    opts = replace(cfg.strategies[0].options, epochs=1)  # one epoch of exactly the timed steps; its plugins stay
    batch = int(opts.batch_size)
    n = batch * (warmup + repeats)
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    if spec.inputs == "features":
        data = torch.nn.functional.normalize(torch.randn(n, clip.embed_dim, generator=g), dim=-1).to(clip.dtype)
    else:
        data = torch.randn(n, 3, clip.image_size, clip.image_size, generator=g)
    labels = np.arange(n) % classes
    plan = _OneExperience(class_order=list(range(classes)), train_index=[np.arange(n)],
                          test_index=[np.arange(classes)])
    read = lambda t, idx: (lambda i, idx=idx: data[idx[i]])  # noqa: E731 - the reader make_streams wants
    scenario = make_streams(plan, read, read, labels, labels)
    device = clip.device
    timer = StepTimer(device)
    cast = device.type == "cuda" and clip.precision == "bf16-autocast"
    plugins = [timer.plugin, *([AutocastPlugin(device)] if cast else [])]
    names = [CLASS_NAMES[i % len(CLASS_NAMES)] for i in range(classes)]
    ctx = StrategyContext(clip=clip, class_names=names, template="a photo of a {}.", device=device, seed=0,
                          shots=cfg.benchmark.shots, plugins=plugins)
    template = spec.build(ctx, opts)
    template.train(scenario.train_stream[0])
    times = timer.times[warmup:]
    if not times:
        raise UserError(f"--calibrate: {name} trained no step on {n} samples of batch {batch}")
    return Timing(f"{name} step (batch {batch}, {classes} classes)", statistics.median(times), len(times))


@dataclass
class _OneExperience:
    """The part of a :class:`~lamm_cl.benchmark.Plan` that :func:`make_streams` reads."""

    class_order: list
    train_index: list
    test_index: list


def calibrate(sweep: Sweep, classes: int = 10, warmup: int = 3, repeats: int = 10,
              log: Optional[Callable[[str], None]] = None) -> Calibration:
    """Time the units of ``cost:`` on the sweep's model and device (see the module docstring).

    Args:
        classes: classes of the stand-in experience (all trained, all in the softmax).
        warmup: untimed steps (and encoder calls, at least one) first.
        repeats: timed steps; the median is kept.
        log: told what is being timed.

    Returns:
        The timings and the ``cost:`` they make; a kind the sweep lacks keeps the sweep's value.

    Raises:
        UserError: the model cannot be built offline, or a strategy trains no step.
    """
    from lamm_cl.model.clip import build_clip, resolve_device
    from lamm_cl.sweep.job import _config

    say = log or (lambda _msg: None)
    cfg = _config(sweep.jobs[0])
    models = {(c.model.arch, c.model.pretrained) for c in (_config(j) for j in _first_per_file(sweep))}
    if len(models) > 1:
        say(f"note: the sweep uses {len(models)} models; timing the first, {cfg.model.arch} + {cfg.model.pretrained}")
    device = resolve_device(cfg.device)
    say(f"calibrating on {device} with {cfg.model.arch} + {cfg.model.pretrained} ...")
    clip = build_clip(cfg.model.arch, cfg.model.pretrained, device, cfg.model.precision)
    if device.type == "cuda":
        import torch

        # TF32, as every run gets it (FeatureExtractor.from_config), unless the runs ask for fp32 throughout
        torch.set_float32_matmul_precision("highest" if clip.precision == "fp32" else "high")
    encode = _time_encoder(clip, device, max(1, warmup), max(1, repeats // 3))
    steps = {}
    for kind in ("features", "images"):
        picked = _pick(sweep, kind)
        steps[kind] = None if picked is None else _time_steps(clip, picked[0], picked[1], classes, warmup, repeats)
    old = sweep.config.cost
    cost = CostConfig(
        encode_image_s=_three_digits(encode.seconds),
        feature_step_s=old.feature_step_s if steps["features"] is None else _three_digits(steps["features"].seconds),
        image_step_s=old.image_step_s if steps["images"] is None else _three_digits(steps["images"].seconds),
    )
    sweep.cost_device = str(device)  # the estimate made with these numbers is in that device's hours
    return Calibration(device=str(device), model=f"{cfg.model.arch} + {cfg.model.pretrained}", encode=encode,
                       feature_step=steps["features"], image_step=steps["images"], cost=cost)


def _first_per_file(sweep: Sweep) -> list:
    seen, out = set(), []
    for j in sweep.jobs:
        if j.config not in seen:
            seen.add(j.config)
            out.append(j)
    return out


def report_lines(cal: Calibration) -> list[str]:
    """What ``--calibrate`` prints before the estimate: each timing, then the line to paste."""
    lines = [f"measured on {cal.device}, {cal.model} (median after warm-up):",
             f"  encode_image_s  {cal.encode.seconds:.3g} s per image, {cal.encode.what}"]
    for key, t in (("feature_step_s", cal.feature_step), ("image_step_s", cal.image_step)):
        lines.append(f"  {key:<15} " + (f"{t.seconds:.3g} s, {t.what}" if t is not None
                                         else "not measured (no such strategy in the sweep): kept"))
    lines.append("paste into the sweep file to keep them:")
    lines.append(f"  {cal.cost_line()}")
    return lines
