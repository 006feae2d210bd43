"""Speed benchmarks behind DESIGN section 7 (timed here, never in tests: timed tests are flaky).

    python -m lamm_cl.speed speed   # one LAMM step: naive loop vs lamm-cl's; one CoOp step on 1,000 classes
    python -m lamm_cl.speed run     # one quickstart experience with the feature store on and off
    python -m lamm_cl.speed identity   # stat-based dataset identity: files per second, extrapolated to ImageNet
    python -m lamm_cl.speed checksum   # the feature store's SHA-256 check of a large entry
    python -m lamm_cl.speed device     # on CUDA: the CoOp paths, one step of every strategy, a cost: line

``speed`` builds ViT-B-16 with random weights (the time of a step does not
depend on the weight values), 100 classes of which the last 10 train, a batch
of 32 random 224 px images, and times

(a) the naive step: the image encoder on the batch, every class's prompt
    through the text encoder at the full 77-token context, the LAMM loss,
    backward, SGD step;
(b) lamm-cl's step: cached image features, the old classes' text features
    cached for the experience, prompts cut after the longest EOT, only the 10
    trainable prompts through the text encoder.

Both see the same label vectors and the same batch; their losses must agree
within 1e-4 (relative) or the run fails. Both use the constant t0 (CLIP's own
name embeddings) computed once, which flatters the naive step. The last line
printed for it is ``speedup: <ratio>x``, the ratio of the median step times.

Then ``speed`` times (c) a CoOp step on ImageNet's 1,000 class names (ViT-B-16's
text tower, random weights, cached image features): every class's prompt through
the text encoder with gradient into the shared context, once with each prompt run
whole (the full path) and once with the shared prefix run once and each class's
own tokens after it (:mod:`lamm_cl.model.shared_prefix`), in the same run on the
same batch. It checks that both give the same loss and context gradient, prints
both step times, ``coop 1000-class step: <ratio>x``, and the peak memory of one
step on each path (tensor memory counted by torch's profiler, which sees CPU
tensors; ``tracemalloc`` does not).

Other processes on the machine distort every ratio (small matmuls on two threads
suffer most), so the load average is printed beside the timings: measure on an
idle machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from lamm_cl.data.orders import CIFAR100_CLASS_NAMES as CLASS_NAMES

Log = Callable[[str], None]



def store_size_lines(dim: int = 512, n_images: int = 10_000) -> list[str]:
    """The feature store's size per ``n_images`` images at feature width ``dim``, fp32 and fp16."""
    from lamm_cl.features import entry_bytes

    out = []
    for dtype in ("float32", "float16"):
        b = entry_bytes(n_images, dim, dtype)
        out.append(f"store size per {n_images:,} images (D={dim}, {dtype}): {b / 2**20:.2f} MiB "
                   f"({b:,} bytes per view)")
    return out


def _timed(step: Callable[[], float], warmup: int, repeats: int) -> tuple[float, float]:
    """(median, best) seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def _load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover - not every platform has it
        return "load average unknown"


def _adapt(model, classes: Sequence[int]) -> None:
    from avalanche.models.utils import avalanche_model_adaptation

    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=list(classes)))


def speed(arch: str = "ViT-B-16", n_classes: int = 100, n_trainable: int = 10, batch: int = 32,
          naive_steps: int = 2, fast_steps: int = 20, seed: int = 0, log: Log = print) -> float:
    """Time the naive LAMM step against lamm-cl's on the same batch; return the speedup.

    Raises:
        AssertionError: the two steps' losses differ by more than 1e-4 (relative).
    """
    from lamm_cl.data.base import ArraySamples
    from lamm_cl.features import FeatureExtractor, ImageReader
    from lamm_cl.losses import lamm_loss
    from lamm_cl.model.clip import build_clip, normalize
    from lamm_cl.strategy_kit.context import StrategyContext
    from lamm_cl.strategy_kit.lamm import lamm_model, lamm_objective
    from lamm_cl.strategy_kit.options import LammOptions
    from lamm_cl.strategy_kit.recipe import sgd

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = build_clip(arch, "none", "cpu")
    names = [CLASS_NAMES[i % len(CLASS_NAMES)] + ("" if i < len(CLASS_NAMES) else f" {i}") for i in range(n_classes)]
    new = list(range(n_classes - n_trainable, n_classes))
    rng = np.random.default_rng(seed)
    size = clip.image_size
    y = torch.as_tensor(rng.choice(new, size=batch), dtype=torch.long)
    samples = ArraySamples(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), y.numpy(),
                           f"bench-random-{size}px:seed{seed}")
    log(f"{arch} (random weights), {n_classes} classes ({n_trainable} trainable), batch {batch}, "
        f"{size} px, {torch.get_num_threads()} CPU threads")

    # lamm-cl's model: 90 old classes (frozen vectors), then an experience of 10 new ones
    opts = LammOptions()
    ctx = StrategyContext(clip=clip, class_names=names, template="a photo of a {}.", device=clip.device, seed=seed)
    model = lamm_model(ctx, opts)
    _adapt(model, range(n_classes - n_trainable))
    _adapt(model, new)
    model.train()
    weights = opts.weights(None)
    table = model.labels
    with torch.no_grad():  # give the old classes trained-looking vectors, so frozen != original
        for c in table.classes[: n_classes - n_trainable]:
            table.vectors[str(c)].add_(0.01 * torch.randn_like(table.vectors[str(c)]))

    # the naive loop's view of the same prompts: every class at the full context, vectors spliced in
    prompts = model.encoder.prompts
    context = int(clip.model.positional_embedding.shape[0])
    ids77 = torch.zeros(n_classes, context, dtype=torch.long)
    ids77[:, : prompts.ids.shape[1]] = prompts.ids
    start = prompts.name_start
    naive_vectors = {c: table.vectors[str(c)].detach().clone().requires_grad_(c in new) for c in range(n_classes)}

    def naive_text(vectors: dict) -> torch.Tensor:
        emb = clip.embed_tokens(ids77)
        rows = [torch.cat([emb[c, :start], vectors[c], emb[c, start + vectors[c].shape[0]:]]) for c in range(n_classes)]
        return clip.encode_text_embeddings(torch.stack(rows), prompts.eot)

    with torch.no_grad():
        t0_all = normalize(naive_text({c: table.original(c) for c in range(n_classes)}))  # constant, not timed
    images = torch.stack([ImageReader(samples, clip.preprocess)[i] for i in range(batch)])
    alpha = clip.logit_scale
    naive_opt = sgd([naive_vectors[c] for c in new], opts)

    def naive_loss() -> torch.Tensor:
        f = normalize(clip.encode_images(images))
        t = normalize(naive_text(naive_vectors))
        z, z0 = alpha * f @ t.t(), alpha * f @ t0_all.t()
        pairs = [(naive_vectors[c], table.original(c)) for c in new]
        return lamm_loss(z, z0, y, t[y], t0_all[y], pairs, weights)[0]

    with tempfile.TemporaryDirectory() as store:
        x = FeatureExtractor(clip, cache_dir=store).features(samples).float().clone()
    fast_opt = sgd([p for p in model.parameters() if p.requires_grad], opts)

    def fast_loss() -> torch.Tensor:
        return lamm_objective(model, x, model(x), y, weights)[0]

    a, b = float(naive_loss().detach()), float(fast_loss().detach())
    rel = abs(a - b) / abs(a)
    log(f"loss on the same batch: naive {a:.6f}, lamm-cl {b:.6f} (relative difference {rel:.1e})")
    assert rel < 1e-4, f"the naive and lamm-cl steps disagree: relative loss difference {rel:.1e} >= 1e-4"

    def step(loss_fn, opt):
        def run() -> float:
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            return float(loss.detach())
        return run

    # the ratio uses medians: with other processes about, the many short lamm-cl steps would catch
    # quiet moments that the few long naive steps cannot, and best-of times would flatter lamm-cl
    log(f"timing on {_load()}: median of {naive_steps} naive / {fast_steps} lamm-cl steps (best in brackets)")
    t_naive, b_naive = _timed(step(naive_loss, naive_opt), warmup=1, repeats=naive_steps)
    log(f"naive step (image encoder + {n_classes} prompts at {context} tokens): {t_naive:.3f} s ({b_naive:.3f} s)")
    t_fast, b_fast = _timed(step(fast_loss, fast_opt), warmup=3, repeats=fast_steps)
    log(f"lamm-cl step (cached features, {n_trainable} prompts at {prompts.ids.shape[1]} tokens): "
        f"{t_fast:.4f} s ({b_fast:.4f} s)")
    for line in store_size_lines(clip.embed_dim):
        log(line)
    log(f"finished on {_load()}")
    ratio = t_naive / t_fast
    log(f"speedup: {ratio:.0f}x")
    return ratio


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) while inside."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> int:
    """The most tensor memory ``fn()`` held at once on ``device`` beyond what was there before it.

    CUDA: the caching allocator's statistics. CPU: the allocation records of torch's profiler
    (``Total Allocated`` of its memory events; ``tracemalloc`` does not see tensors).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0]
    return max([0, *totals])


def coop_names(n_classes: int) -> list[str]:
    """``n_classes`` distinct class names: ImageNet's (open_clip ships them), a number appended past 1,000."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    return [names[i % len(names)] + ("" if i < len(names) else f" {i}") for i in range(n_classes)]


def coop_speed(arch: str = "ViT-B-16", n_classes: int = 1000, batch: int = 32, steps: int = 2, seed: int = 0,
               log: Log = print, device: str = "cpu") -> float:
    """Time a CoOp step over ``n_classes`` on the full-prompt path and with the shared prefix; return the ratio.

    On CUDA the timed steps run under the training autocast (bf16) as runs do; the check that both
    paths agree runs in float32 first.

    Raises:
        AssertionError: the two paths' losses or context gradients differ by more than 1e-4 (relative).
    """
    from torch import nn

    from lamm_cl.features import autocast
    from lamm_cl.model.classifier import PromptClassifier
    from lamm_cl.model.clip import build_clip
    from lamm_cl.model.prompts import ClassPrompts

    dev = torch.device(device)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = build_clip(arch, "none", dev)
    prompts = ClassPrompts(clip, coop_names(n_classes), "a photo of a {}.")
    with torch.no_grad():
        init = clip.embed_tokens(torch.tensor(prompts.prefix_ids)).clone()
    model = PromptClassifier(clip, prompts, context=nn.Parameter(init))
    if not model.shared_prefix:
        log(f"coop: {arch}'s text tower does not fit the shared prefix ({model.encoder.unfit}); nothing to compare")
        return 1.0
    _adapt(model, range(n_classes))
    model.train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, clip.embed_dim, generator=gen).to(dev)
    y = torch.randint(0, n_classes, (batch,), generator=gen).to(dev)
    opt = torch.optim.SGD([model.context], lr=1e-3, momentum=0.9)  # a small step: the timing does not care
    log(f"coop: {arch} text tower (random weights), {n_classes} classes, batch {batch} of cached features, "
        f"prompts of {prompts.ids.shape[1]} tokens at most, {model.encoder.prefix_length} of them shared, "
        + (f"{torch.get_num_threads()} CPU threads" if dev.type == "cpu" else f"{torch.cuda.get_device_name(dev)}"))

    def loss_of(shared: bool, cast: bool = False) -> torch.Tensor:
        model.shared_prefix = shared
        with autocast(dev, training=True) if cast else contextlib.nullcontext():
            return torch.nn.functional.cross_entropy(model(x), y)

    first, peak = {}, {}
    for shared in (False, True):  # also the warm-up of each path
        def check(shared: bool = shared) -> None:  # bound now: called before the loop moves on
            loss = loss_of(shared)
            (grad,) = torch.autograd.grad(loss, model.context)
            first[shared] = float(loss.detach()), grad
        peak[shared] = peak_tensor_bytes(check, dev)
    (a, ga), (b, gb) = first[False], first[True]
    rel = abs(a - b) / abs(a)
    grad_rel = float((ga - gb).abs().max() / ga.abs().max())
    log(f"coop loss on the same batch: full {a:.6f}, shared prefix {b:.6f} (relative difference {rel:.1e}; "
        f"context gradient {grad_rel:.1e})")
    assert rel < 1e-4 and grad_rel < 1e-4, f"the two CoOp paths disagree: loss {rel:.1e}, gradient {grad_rel:.1e}"
    m_full, m_shared = peak[False], peak[True]
    log(f"coop step peak tensor memory (forward and backward, float32): full {m_full / 2**20:.0f} MiB, shared prefix "
        f"{m_shared / 2**20:.0f} MiB ({100 * m_shared / max(m_full, 1):.0f} % of full)")

    def step(shared: bool) -> Callable[[], float]:
        def run() -> float:
            opt.zero_grad()
            loss = loss_of(shared, cast=dev.type == "cuda")
            loss.backward()
            opt.step()
            return float(loss.detach())  # waits for the device
        return run

    log(f"timing on {_load()}: median of {steps} steps each (best in brackets)"
        + (", under bf16 autocast" if dev.type == "cuda" else ""))
    t_full, b_full = _timed(step(False), warmup=0, repeats=steps)
    log(f"coop full-prompt step ({n_classes} prompts whole): {t_full:.3f} s ({b_full:.3f} s)")
    t_shared, b_shared = _timed(step(True), warmup=0, repeats=steps)
    log(f"coop shared-prefix step (the prefix once, {n_classes} prompts after it): {t_shared:.3f} s ({b_shared:.3f} s)")
    log(f"finished on {_load()}")
    ratio = t_full / t_shared
    log(f"coop {n_classes}-class step: {ratio:.2f}x")
    return ratio


def device_check(arch: str = "ViT-B-16", device: str = "cuda", coop_classes: int = 1000, classes: int = 10,
                 warmup: int = 2, repeats: int = 3, strategies: Optional[Sequence[str]] = None,
                 options: Optional[dict] = None, log: Log = print) -> bool:
    """The CUDA code paths no CPU test reaches, in a few minutes: the CoOp step on ``coop_classes`` on both
    text paths (time, peak memory), one training step of every strategy as its builder makes it under the
    runs' autocast (MaPLe's autocast, RAPF's float32 adapter, ``--calibrate``'s synchronisation, all
    through :mod:`lamm_cl.sweep.calibrate`'s own timing), and a ``cost:`` line for a sweep file.

    Args:
        strategies: names to step (default: every registered strategy).
        options: strategy name -> extra options for its config entry.
    Returns:
        True when every strategy stepped; a failure is logged and the others still run.
    """
    from lamm_cl import config as config_mod
    from lamm_cl.errors import UserError
    from lamm_cl.model.clip import build_clip
    from lamm_cl.registry import list_strategies
    from lamm_cl.sweep.calibrate import Calibration, _three_digits, _time_encoder, _time_steps
    from lamm_cl.sweep.spec import CostConfig

    started = time.perf_counter()
    dev = torch.device(device)
    coop_speed(arch, coop_classes, 32, steps=repeats, log=log, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = build_clip(arch, "none", dev)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as every run gets it
    encode = _time_encoder(clip, dev, max(1, warmup), repeats)
    log(f"image encoder: {encode.seconds * 1e3:.3f} ms per image ({encode.what})")
    steps, ok = {}, True
    for name in strategies or [spec.name for spec in list_strategies()]:
        entry = {"name": name, **(options or {}).get(name, {})}
        cfg = config_mod.parse({"name": "device", "benchmark": {"dataset": "digits", "n_experiences": 1},
                                "model": {"arch": arch, "pretrained": "none"}, "strategies": [entry]})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                steps[name] = _time_steps(clip, name, cfg, classes, warmup, repeats)
            log(f"{name}: {steps[name].seconds * 1e3:.2f} ms per step ({steps[name].what})")
        except UserError as e:  # a strategy that trains no step (zeroshot)
            log(f"{name}: no training step ({e})")
        except Exception as e:  # noqa: BLE001 - the check reports every strategy, then fails
            ok = False
            log(f"{name}: FAILED: {type(e).__name__}: {' '.join(str(e).split())}")
    defaults = CostConfig()
    feature, image = steps.get("lamm"), steps.get("maple")
    cost = CostConfig(encode_image_s=_three_digits(encode.seconds),
                      feature_step_s=_three_digits(feature.seconds) if feature else defaults.feature_step_s,
                      image_step_s=_three_digits(image.seconds) if image else defaults.image_step_s)
    line = Calibration(device=str(dev), model=f"{arch} + none", encode=encode, feature_step=feature,
                       image_step=image, cost=cost).cost_line()
    log(f"device check {'passed' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s on {dev}")
    log(line)
    return ok


def run_experience(config: str = "benchmarks/quickstart.yaml", strategy: str = "lamm", views: int = 0,
                   log: Log = print) -> float:
    """Time the first experience of ``strategy`` in ``config`` with the feature store on (warm) and off.

    "Off" is ``features.cache: false``: the run extracts its features itself. "On" reads
    the features a previous run left in the store (a temporary folder here).
    Returns:
        off / on.
    """
    from lamm_cl import config as config_mod
    from lamm_cl.benchmark import make_plan
    from lamm_cl.data import load_dataset
    from lamm_cl.features import FeatureExtractor
    from lamm_cl.model.clip import build_clip, resolve_device
    from lamm_cl.runner.execute import run_strategy
    from lamm_cl.runner.inputs import Inputs

    cfg = config_mod.load(config, [f"features.train_views={views}"])
    entry = next((e for e in cfg.strategies if e.name == strategy), None)
    if entry is None:
        raise SystemExit(f"{config} has no strategy {strategy!r}; it has {', '.join(e.name for e in cfg.strategies)}")
    dev = resolve_device(cfg.device)
    seed = cfg.seeds[0]
    parts = load_dataset(cfg.benchmark.dataset, cfg.benchmark.root, cfg.benchmark.download)
    plan = make_plan(parts, cfg.benchmark, seed)
    plan = replace(plan, experiences=plan.experiences[:1], train_index=plan.train_index[:1],
                   test_index=plan.test_index[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = build_clip(cfg.model.arch, cfg.model.pretrained, dev)
    log(f"{cfg.name}: {strategy}, experience 1 ({len(plan.train_index[0])} training images, "
        f"{entry.options.epochs} epochs), {cfg.model.arch}, train_views {views}, {dev}")

    def once(cache_dir: Optional[str]) -> float:
        inputs = Inputs(parts, clip, FeatureExtractor(clip, cache_dir=cache_dir), train_views=views)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_strategy(cfg, entry, seed, plan, inputs, dev, False, lambda s: None)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as store:
        once(store)  # fills the store (and warms up everything else)
        off = once(None)
        on = once(store)
        size = sum(p.stat().st_size for p in Path(store).glob("*.npy"))
    log(f"store off (features extracted by the run): {off:.2f} s")
    log(f"store on (features read from the store, {size / 2**20:.2f} MiB): {on:.2f} s")
    for line in store_size_lines(512):
        log(line + " [ViT-B-16]")
    log(f"store on vs off: {off / on:.2f}x")
    return off / on


IMAGENET_FILES = 1_331_167  # ImageNet-1k train (1,281,167) + val (50,000)


def identity_speed(n_files: int = 50_000, log: Log = print) -> float:
    """Time :func:`lamm_cl.data.base.files_identity` over ``n_files`` generated files (100 per folder).

    The files are fresh, so their inodes are in the page cache: this is the warm-cache rate.
    A cold cache (first run after a reboot, a network filesystem) is bound by the storage's
    metadata latency instead. Returns files per second.
    """
    from lamm_cl.data.base import files_identity

    with tempfile.TemporaryDirectory() as root:
        rel = [f"c{i // 100:05d}/img_{i:07d}.jpg" for i in range(n_files)]
        for r in rel:
            full = Path(root) / r
            full.parent.mkdir(exist_ok=True)
            full.write_bytes(b"x" * (len(r) % 7))
        pairs = [(r, f"{root}/{r}") for r in rel]
        files_identity(pairs)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            files_identity(pairs)
            times.append(time.perf_counter() - t0)
    best = min(times)
    rate = n_files / best
    log(f"dataset identity (stat of every file, warm cache): {n_files:,} files in {best:.3f} s = "
        f"{rate:,.0f} files/s; {_load()}")
    log(f"extrapolated to ImageNet ({IMAGENET_FILES:,} files): {IMAGENET_FILES / rate:.1f} s")
    return rate


def checksum_speed(n_images: int = 100_000, dim: int = 512, log: Log = print) -> tuple[float, float]:
    """Time reading an ``[n_images, dim]`` fp32 feature-store entry with and without its SHA-256 check.

    Returns:
        (seconds with the check, seconds without it), best of three, file in the page cache.
    """
    from lamm_cl.features import FeatureStore

    with tempfile.TemporaryDirectory() as root:
        store = FeatureStore(root)
        rng = np.random.default_rng(0)
        with store.writer("bench", (n_images, dim), "float32") as arr:
            for i in range(0, n_images, 65536):
                arr[i: i + 65536] = rng.standard_normal((min(65536, n_images - i), dim), dtype=np.float32)
        data, _ = store.paths("bench")
        size = data.stat().st_size
        checked, plain = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            a = store.load("bench", (n_images, dim), "float32")
            float(a[-1, -1])
            checked.append(time.perf_counter() - t0)
            del a
            t0 = time.perf_counter()
            a = np.load(data, mmap_mode="c")
            float(a[-1, -1])
            plain.append(time.perf_counter() - t0)
            del a
    on, off = min(checked), min(plain)
    gib = size / 2**30
    log(f"feature-store entry {n_images:,} x {dim} float32 ({size / 2**20:.0f} MiB): load with SHA-256 check "
        f"{on:.3f} s, without {off:.4f} s; check rate {gib / max(on - off, 1e-9):.2f} GiB/s; {_load()}")
    imagenet = 1_281_167 * dim * 4 / 2**30
    log(f"extrapolated to ImageNet train features ({imagenet:.2f} GiB at D={dim}): "
        f"{imagenet / gib * (on - off):.1f} s per load")
    return on, off


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lamm_cl.speed {speed,run,identity,checksum,device}``."""
    p = argparse.ArgumentParser(prog="python -m lamm_cl.speed", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed", help="one LAMM step: naive loop vs lamm-cl's; one CoOp step on 1,000 classes, "
                                     "full prompts vs the shared prefix (ViT-B-16, random weights)")
    s.add_argument("--arch", default="ViT-B-16")
    s.add_argument("--classes", type=int, default=100)
    s.add_argument("--trainable", type=int, default=10)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--naive-steps", type=int, default=2, help="timed naive steps (after one warm-up)")
    s.add_argument("--fast-steps", type=int, default=20, help="timed lamm-cl steps (after three warm-ups)")
    s.add_argument("--coop-classes", type=int, default=1000, help="classes of the CoOp step (0: skip it)")
    s.add_argument("--coop-steps", type=int, default=2, help="timed CoOp steps per path (after one untimed)")
    r = sub.add_parser("run", help="one quickstart experience with the feature store on and off")
    r.add_argument("--config", default="benchmarks/quickstart.yaml")
    r.add_argument("--strategy", default="lamm")
    r.add_argument("--views", type=int, default=0, help="features.train_views")
    i = sub.add_parser("identity", help="the stat-based dataset identity: files per second")
    i.add_argument("--files", type=int, default=50_000)
    c = sub.add_parser("checksum", help="the feature store's SHA-256 check on a large entry")
    c.add_argument("--images", type=int, default=100_000)
    c.add_argument("--dim", type=int, default=512)
    d = sub.add_parser("device", help="on CUDA: the CoOp paths at 1,000 classes, one step of every strategy under "
                                      "autocast, and a cost: line for a sweep")
    d.add_argument("--arch", default="ViT-B-16")
    args = p.parse_args(argv)
    if args.mode == "device":
        if not torch.cuda.is_available():
            print("python -m lamm_cl.speed device: no CUDA device here; run it on a machine with a GPU",
                  file=sys.stderr)
            return 2
        return 0 if device_check(args.arch) else 1
    if args.mode == "identity":
        identity_speed(args.files)
        return 0
    if args.mode == "checksum":
        checksum_speed(args.images, args.dim)
        return 0
    if args.mode == "speed":
        speed(args.arch, args.classes, args.trainable, args.batch, args.naive_steps, args.fast_steps)
        if args.coop_classes:
            coop_speed(args.arch, args.coop_classes, args.batch, args.coop_steps)
    else:
        if not Path(args.config).is_file():
            print(f"{args.config}: no such config; run from the repository root or pass --config", file=sys.stderr)
            return 2
        run_experience(args.config, args.strategy, args.views)
    return 0


if __name__ == "__main__":
    sys.exit(main())
