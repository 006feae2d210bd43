"""Runs a benchmark, in stages: check everything that can be checked (:mod:`.validate`), prepare the
inputs every strategy shares (:mod:`.inputs`), then for each seed, for each strategy, train experience by
experience and evaluate on every class seen so far (:mod:`.execute`), and write the results of each
(strategy, seed) as it finishes (:mod:`.record`).

It also keeps a run recoverable (:mod:`lamm_cl.checkpoint`): all input is checked before the results
folder is touched, the folder is locked while a run writes to it, a checkpoint follows every experience
so ``resume`` continues a killed run bit-identically on CPU, and a NaN or infinite loss fails only its
own strategy.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

from lamm_cl.heavy_imports import collector_paused

with collector_paused():  # torch and Avalanche (through .execute): what makes a run's process start slow
    import torch

    from lamm_cl import safe_io
    from lamm_cl.benchmark import Plan
    from lamm_cl.config import Config
    from lamm_cl.runner.execute import Log, deterministic, run_strategy
    from lamm_cl.runner.inputs import Inputs, few_shot_images, prepare_inputs
    from lamm_cl.runner.record import RunRecords, clear_results, clear_run, config_entry, write_fewshot
    from lamm_cl.runner.validate import (EarlierRuns, check_images, check_request, check_under_lock,
                                         earlier_runs, replaced_runs, selected)
    from lamm_cl.runner.validate import check_strategy_options
    from lamm_cl.saved_model import MODEL_FILE


def run(cfg: Config, out: Path, device: Optional[str] = None, progress: bool = True,
        log: Log = lambda s: None, *, resume: bool = False, overwrite: bool = False,
        warn: Optional[Log] = None, lock_runs: bool = False, only: Optional[list[str]] = None) -> RunRecords:
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
        only: run just these strategies (labels, :func:`lamm_cl.config.only_labels`); the folder may hold
            other runs, left byte for byte as they are. Without ``resume`` the named strategies' earlier
            runs are replaced; with it, those whose config is unchanged are kept.

    With ``resume``, a finished run or checkpoint whose own resolved config changed since
    (:func:`~lamm_cl.runner.record.run_config`) is run again from scratch, with one line saying what changed.

    Returns:
        The records of every (strategy, seed) that finished, in run order; ``.failed`` lists
        the runs a NaN or infinite loss stopped (the others still ran and were written).

    Raises:
        UserError: bad input; nothing was written.
        KeyboardInterrupt: finished runs and the last checkpoint are kept.
    """
    out = Path(out)
    dev = check_request(cfg, out, device, resume=resume, overwrite=overwrite, only=only)
    if out.is_dir() and (resume or only is not None):
        earlier = earlier_runs(cfg, out, only) if resume else replaced_runs(cfg, out, only)
    else:
        earlier = EarlierRuns()
    plans, inputs = prepare_inputs(cfg, dev, progress, log)
    check_strategy_options(cfg, plans, inputs.clip, dev)
    records = RunRecords()
    started = time.time()
    with (nullcontext() if lock_runs else safe_io.lock_output(out)), deterministic(dev):
        earlier = check_under_lock(cfg, out, plans, earlier, resume=resume, overwrite=overwrite, only=only)
        for folder in (out, out / "plots"):
            safe_io.sweep_temporaries(folder, before=started)
        if overwrite:
            check_images(inputs, cfg)  # a corrupt image must not cost the old results
            clear_results(out)
        for seed in cfg.seeds:
            plan = plans[seed]
            seed_inputs = inputs.views_for(few_shot_images(cfg, {seed: plan}))
            log(f"seed {seed}: {plan.n_experiences} experiences, class order {plan.order_name}")
            if cfg.benchmark.shots and plan.short_classes:
                log(f"seed {seed}: {plan.shots_note(cfg.benchmark.shots)}")
            for entry in selected(cfg, only):
                run_dir = out / entry.run_label / f"seed{seed}"
                if (entry.run_label, seed) in earlier.done:
                    kept = earlier.done[entry.run_label, seed]
                    log(f"  {entry.run_label} seed {seed}: already finished, kept{_no_model_note(cfg, entry, kept, run_dir)}")
                    records.append(kept)
                    continue
                with safe_io.lock_run(run_dir):  # the per-run lock a sweep job takes too
                    if (entry.run_label, seed) in earlier.rerun:
                        log(f"  {entry.run_label} seed {seed}: {earlier.rerun[entry.run_label, seed]}")
                        clear_run(run_dir)
                    _run_and_write(cfg, entry, seed, plan, seed_inputs, dev, run_dir, records, progress=progress,
                                   log=log, warn=warn or log,
                                   resume_from=earlier.checkpoints.get((entry.run_label, seed)))
    return records


def _no_model_note(cfg: Config, entry, kept, run_dir: Path) -> str:
    """What to add to "already finished, kept" when the config keeps models but the kept run (its record
    ``kept``) has none: it ran without ``save_model`` (which changes no number, so ``--resume`` keeps it),
    or its model could not be saved (its log said why), or the file was deleted since."""
    if not entry.saves_model(cfg) or (run_dir / MODEL_FILE).is_file():
        return ""
    then = config_entry(kept.config, entry.run_label) or {}
    asked = kept.config.get("save_model", False) if then.get("save_model") is None else then["save_model"]
    why = "its model.pt is not there" if asked else "it ran without save_model"
    return f" (without a saved model: {why}; --only {entry.run_label} runs it again to keep one)"


def _run_and_write(cfg: Config, entry, seed: int, plan: Plan, inputs: Inputs, dev: torch.device, run_dir: Path,
                   records: RunRecords, *, progress: bool, log: Log, warn: Log, resume_from: Optional[dict]) -> None:
    """Run ``entry``'s strategy on ``seed`` and write its results into ``run_dir``; a NaN or infinite loss
    fails this run only (``warn`` tells, ``records.failed`` keeps it)."""
    if run_dir.is_dir():
        safe_io.remove_stale_temporaries(run_dir)
    write_fewshot(run_dir, cfg, plan, inputs.parts, seed)
    try:
        rec = run_strategy(cfg, entry, seed, plan, inputs, dev, progress, log, run_dir=run_dir, resume_from=resume_from)
    except FloatingPointError as e:
        records.fail(run_dir, f"{entry.run_label} seed {seed} failed: {e}; its results were not written", warn)
        return
    records.write(run_dir, rec)
