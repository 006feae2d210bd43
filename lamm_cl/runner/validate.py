"""Everything a run checks before it touches its results folder: the request (``resume`` with
``overwrite``, the device, the strategies, their plugins and loggers, the folder and its run folders),
the finished runs and checkpoints ``resume`` would reuse (:func:`earlier_runs`), the prompts against
CLIP's context, and, under the folder's lock, the same again plus every image (before ``--overwrite``
removes the old results)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from lamm_cl import checkpoint, run_folder, safe_io
from lamm_cl.benchmark import Plan
from lamm_cl.config import Config
from lamm_cl.errors import ConfigError, UserError
from lamm_cl.model.clip import FrozenCLIP, resolve_device
from lamm_cl.registry import get_strategy
from lamm_cl.results import SUMMARY_FILE, read_run
from lamm_cl.runner.record import run_config
from lamm_cl.avalanche_plugins import build_avalanche_plugins, check_loggers


def check_request(cfg: Config, out: Path, device: Optional[str], *, resume: bool, overwrite: bool,
                  only: Optional[list[str]] = None) -> torch.device:
    """What can be checked before any data is read, in this order: ``resume`` with ``overwrite``, the
    device, every strategy name, Avalanche plugin and logger of ``cfg``, the results folder ``out`` (in
    use, writable, empty unless ``resume`` or ``overwrite``) and each of its run folders (a sweep job may
    hold one). With ``only`` (strategy labels, :func:`lamm_cl.config.only_labels`) the folder may hold
    other runs, which are kept, and ``overwrite`` (which would remove them) is refused.

    Returns:
        The device to run on.

    Raises:
        UserError: the first problem found (a ConfigError where a config value is wrong).
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one")
    if only is not None and overwrite:
        raise UserError("--only keeps the other strategies' results and --overwrite removes them; give one "
                        "(--only alone replaces the named strategies' results)")
    dev = resolve_device(device or cfg.device)
    check_loggers(cfg.loggers)
    for i, e in enumerate(cfg.strategies):
        get_strategy(e.name)
        build_avalanche_plugins(getattr(e.options, "plugins", []) or [], path=f"strategies[{i}].plugins")
    run_folder.check_output(out, resume=resume or only is not None, overwrite=overwrite)
    for seed in cfg.seeds:
        for entry in selected(cfg, only):
            holder = safe_io.lock_holder(out / entry.run_label / f"seed{seed}")
            if holder is not None:
                raise safe_io.in_use(out / entry.run_label / f"seed{seed}", holder)
    return dev


def selected(cfg: Config, only: Optional[list[str]] = None) -> list:
    """The strategy entries of ``cfg`` a run runs: every one, or those labelled in ``only``."""
    return [e for e in cfg.strategies if only is None or e.run_label in only]


@dataclass
class EarlierRuns:
    """What a run finds in its results folder, by ``(strategy, seed)``: with ``--resume``, the records of
    finished runs (``done``) and the states of checkpointed ones (``checkpoints``) it keeps; and the runs
    it runs again from scratch (``rerun``: why, one line each) -- with ``--resume`` those whose config
    changed since, with ``--only`` (no ``--resume``) every earlier run of the named strategies."""

    done: dict = field(default_factory=dict)
    checkpoints: dict = field(default_factory=dict)
    rerun: dict = field(default_factory=dict)


def earlier_runs(cfg: Config, out: Path, only: Optional[list[str]] = None) -> EarlierRuns:
    """The finished runs and checkpoints of ``cfg``'s strategies (those of ``only``) and seeds in
    ``out``, each checked against ``cfg``: one made with the same resolved config
    (:func:`~lamm_cl.runner.record.run_config`, the strategy's own part and what every run shares) is
    kept, one made with another is to be run again (in ``rerun``, naming the first difference).

    Raises:
        UserError: a run folder holds another run, or a finished run or checkpoint is unreadable.
    """
    found = EarlierRuns()
    full = cfg.to_dict()
    for seed in cfg.seeds:
        for entry in selected(cfg, only):
            key, run_dir = (entry.run_label, seed), out / entry.run_label / f"seed{seed}"
            now = run_config(full, entry.run_label)
            if (run_dir / SUMMARY_FILE).is_file():
                rec = read_run(run_dir)
                if rec.strategy != entry.run_label or rec.seed != seed:
                    raise UserError(f"{run_dir} holds the run of {rec.strategy} seed {rec.seed}; "
                                    "use --overwrite to start over, or another --output")
                then = run_config(rec.config, entry.run_label)
                if now != then:
                    found.rerun[key] = f"its config changed since it ran ({first_difference(now, then)}); running it again"
                else:
                    found.done[key] = rec
            elif (run_dir / checkpoint.CHECKPOINT_FILE).is_file():
                state = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
                meta = state.get("meta") or {}
                if meta.get("strategy") != entry.run_label or meta.get("seed") != seed:
                    raise UserError(f"{run_dir / checkpoint.CHECKPOINT_FILE} is not a checkpoint of {entry.run_label} "
                                    f"seed {seed}; delete it to restart that run")
                if meta.get("config") != now:
                    found.rerun[key] = (f"its checkpoint is of another config ({first_difference(now, meta.get('config'))}); "
                                        "starting it over")
                    continue
                checkpoint.check_fields(state, run_dir / checkpoint.CHECKPOINT_FILE)
                found.checkpoints[key] = state
    return found


def replaced_runs(cfg: Config, out: Path, only: list[str]) -> EarlierRuns:
    """``--only`` without ``--resume``: every earlier run folder of the named strategies and the config's
    seeds is run again from scratch (its old files go just before, under the run's lock)."""
    found = EarlierRuns()
    for seed in cfg.seeds:
        for entry in selected(cfg, only):
            if (out / entry.run_label / f"seed{seed}").is_dir():
                found.rerun[entry.run_label, seed] = "replacing its earlier results (--only)"
    return found


def first_difference(a, b, path: str = "") -> str:
    """The first key path where two plain-data configs differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path or 'config'}: {a!r} now, {b!r} there"


def check_templates(cfg: Config, plans: dict, clip: FrozenCLIP) -> None:
    """Every prompt the run will build fits CLIP's context (open_clip would silently cut it).

    Raises:
        ConfigError: naming the template's key and the class whose prompt is too long.
    """
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


def check_strategy_options(cfg: Config, plans: dict, clip: FrozenCLIP, device: torch.device) -> None:
    """Every strategy's options against the built CLIP, each seed's plan and the device's free memory
    (``check_setup``), before the first strategy trains: a bad last strategy must not cost the first ones'
    results, nor leave a folder that a corrected rerun finds "not empty".

    Raises:
        ConfigError: naming ``strategies[i].<key>``.
    """
    from lamm_cl.strategy_kit.setup import check_strategies, setup_of_clip

    check_strategies(cfg.strategies, setup_of_clip(clip, list(plans.values()), device))


def check_under_lock(cfg: Config, out: Path, plans: dict[int, Plan], earlier: EarlierRuns, *,
                     resume: bool, overwrite: bool, only: Optional[list[str]] = None) -> EarlierRuns:
    """The results folder checked again once locked (another run may have written there since the first
    look): empty unless ``resume``, ``overwrite`` or ``only``; with ``resume``, its finished runs and
    checkpoints read again, each checkpoint's accuracy matrix fitting its seed's plan; with ``only``
    alone, the named strategies' run folders found again.

    Returns:
        What the run keeps and what it runs again (``earlier`` unless read again).
    """
    if not (resume or overwrite or only is not None):
        run_folder.check_empty(out)
    if resume:
        earlier = earlier_runs(cfg, out, only)
    elif only is not None:
        earlier = replaced_runs(cfg, out, only)
    for key, state in earlier.checkpoints.items():
        if len(state["matrix"]) != plans[key[1]].n_experiences:
            raise UserError(f"{out / key[0] / f'seed{key[1]}' / checkpoint.CHECKPOINT_FILE}: malformed "
                            "checkpoint (its accuracy matrix has another number of experiences); delete it")
    return earlier


def check_images(inputs, cfg: Config) -> None:
    """Decode every image of ``inputs`` (:class:`~lamm_cl.runner.inputs.Inputs`) once (by extracting the
    features the run needs anyway, where a strategy reads features), so that ``--overwrite`` removes the
    old results only once the new data has checked out."""
    if any(get_strategy(e.name).inputs == "features" for e in cfg.strategies):
        inputs.features("train")
        inputs.features("test")
        return
    for samples in (inputs.parts.train, inputs.parts.test):
        if hasattr(samples, "paths"):  # in-memory datasets decode by construction
            for i in range(len(samples)):
                samples.image(i)
