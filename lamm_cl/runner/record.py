"""What a run leaves behind: the record of one finished (strategy, seed) and the part of the config it
depends on (:func:`run_config`), writing it
(:class:`RunRecords`), and removing what earlier runs wrote (:func:`clear_results`, for ``--overwrite``)."""
from __future__ import annotations

import json
import platform
from contextlib import suppress
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from lamm_cl import checkpoint, safe_io
from lamm_cl.formatting import plain, yaml_data
from lamm_cl.benchmark import Plan, fewshot_images, seen_classes
from lamm_cl.config import Config
from lamm_cl.model.clip import FrozenCLIP
from lamm_cl.saved_model import MODEL_FILE
from lamm_cl.results import (CLASS_ORDER_FILE, CONFIG_FILE, MATRIX_FILE, MATRIX_SEQUENCE_FILE,
                             MATRIX_TASK_AWARE_FILE, METRICS_FILE, PER_CLASS_FILE, SUMMARY_FILE, TARGETS_FILE,
                             RunRecord, find_run_dirs, write_run)


FEWSHOT_FILE = "fewshot.json"  # the training images a few-shot run drew, per class


def versions() -> dict:
    """Library versions recorded with every run."""
    import avalanche
    import open_clip

    return {"python": platform.python_version(), "torch": torch.__version__,
            "open_clip": open_clip.__version__, "avalanche": getattr(avalanche, "__version__", "?"),
            "numpy": np.__version__}


def run_config(config: dict, strategy: str) -> dict:
    """The part of a resolved config that decides one (strategy, seed) run's numbers; ``strategy`` is the
    entry's label (its name when it has no ``label``).

    Leaves out where results go, the other strategies and seeds, whether features are cached and whether
    the trained model is saved,
    so adding a strategy or a seed to a config does not invalidate the runs already finished.
    """
    view = {k: v for k, v in config.items()
            if k not in ("output", "seeds", "strategies", "plugins", "loggers", "save_model")}
    view["features"] = {k: v for k, v in (config.get("features") or {}).items() if k not in ("cache", "cache_dir")}
    if isinstance(view.get("model"), dict):  # runs from before model.precision existed ran its default
        view["model"] = {"precision": "bf16-autocast", **view["model"]}
    entry = config_entry(config, strategy)
    # whether the trained model is kept changes no number: keeping it too must not rerun a finished run
    view["strategy"] = None if entry is None else {k: v for k, v in entry.items() if k != "save_model"}
    return yaml_data(yaml.safe_dump(plain(view), sort_keys=True))


def config_entry(config: dict, strategy: str) -> Optional[dict]:
    """The ``strategies`` entry labelled ``strategy`` (its name when it has no ``label``) of a resolved config
    (as a run records it), or None."""
    return next((s for s in config.get("strategies") or [] if (s.get("label") or s.get("name")) == strategy), None)


def make_record(cfg: Config, *, strategy: str, source: str, seed: int, plan: Plan, matrix: np.ndarray,
                matrix_task_aware: np.ndarray, per_class: dict, seconds: float, device: torch.device,
                clip: FrozenCLIP, resumed: bool, targets: Optional[list] = None,
                scores_unseen: bool = False) -> RunRecord:
    """The record of one finished (strategy, seed): its accuracy matrices (``[t, j]``: on experience j
    after training experience t), per-class accuracies after the last experience, and what made it.

    Args:
        source: where the strategy's code comes from (its registry entry's ``source``).
        seconds: training and evaluation time, resumed runs included.
        resumed: the run continued from a checkpoint.
        targets: the ``benchmark.evaluate_on`` rows (:func:`lamm_cl.runner.targets.evaluate_targets`).
        scores_unseen: the strategy scores classes it has not trained (a sequence's upper triangle is measured).
    """
    T = plan.n_experiences
    n_classes = seen_classes(plan, T - 1)
    return RunRecord(
        benchmark=cfg.name, strategy=strategy, seed=seed, matrix=matrix,
        test_counts=[int(len(i)) for i in plan.test_index], experiences=plan.experiences,
        class_names=plan.class_names, class_order=plan.class_order,
        per_class_accuracy=[float(per_class.get(c, float("nan"))) for c in range(n_classes)],
        config=cfg.to_dict(),
        matrix_task_aware=matrix_task_aware,
        info={"versions": versions(), "device": str(device), "order": plan.order_name,
              "template": plan.template, "seconds": round(seconds, 2),
              "seed": seed, "order_seed": cfg.benchmark.order_seed, "deterministic": device.type == "cpu",
              "resumed": resumed,
              "random_weights": cfg.model.pretrained == "none", "source": source,
              # hashed once when the run built CLIP (prepare_inputs), shared by every strategy and seed
              "weights": clip.weights_record()},
        targets=list(targets or []),
        sequence=_sequence_info(plan, scores_unseen),
    )


def _sequence_info(plan: Plan, scores_unseen: bool):
    """What a record of a sequence of datasets says about it (None for a split benchmark)."""
    members = getattr(plan, "members", None)
    if members is None:
        return None
    return {"evaluation": plan.evaluation, "scores_unseen": bool(scores_unseen),
            "datasets": [{"dataset": m.dataset, "offset": m.offset, "n_classes": m.n_classes} for m in members]}


def write_fewshot(run_dir: Path, cfg: Config, plan: Plan, parts, seed: int) -> None:
    """Write ``fewshot.json`` (:func:`lamm_cl.benchmark.fewshot_images`) into ``run_dir`` when the benchmark is
    few-shot: written before training, so a failed or killed run still tells which images it drew."""
    if not cfg.benchmark.shots:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    record = fewshot_images(plan, parts, cfg.benchmark.shots, seed)
    safe_io.atomic_write_text(run_dir / FEWSHOT_FILE, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


class RunRecords(list):
    """The records of every finished (strategy, seed), in run order (a plain list), plus
    ``failed``: one message per run stopped by a non-finite loss (its results were not written)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.failed: list[str] = []

    def write(self, run_dir: Path, rec: RunRecord) -> None:
        """Write a finished run's results into ``run_dir`` (its checkpoint goes) and add its record."""
        write_run(run_dir, rec)
        checkpoint.remove(run_dir / checkpoint.CHECKPOINT_FILE)
        self.append(rec)

    def fail(self, run_dir: Path, msg: str, warn: Callable[[str], None]) -> None:
        """Note a run that a non-finite loss stopped: its checkpoint goes, ``msg`` is warned and kept."""
        checkpoint.remove(run_dir / checkpoint.CHECKPOINT_FILE)
        warn(msg)
        self.failed.append(msg)


RUN_FILES = (CONFIG_FILE, CLASS_ORDER_FILE, MATRIX_FILE, MATRIX_TASK_AWARE_FILE, MATRIX_SEQUENCE_FILE, METRICS_FILE,
             PER_CLASS_FILE, SUMMARY_FILE, checkpoint.CHECKPOINT_FILE, FEWSHOT_FILE, TARGETS_FILE, MODEL_FILE)


def clear_run(run_dir: Path) -> None:
    """Delete what an earlier run wrote in one ``<strategy>/seed<k>/`` folder (its result files, saved
    model, checkpoint and temporaries), before it is run again; files lamm-cl does not write stay."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    safe_io.remove_stale_temporaries(run_dir)


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
        clear_run(run_dir)
        with suppress(OSError):
            run_dir.rmdir()
        with suppress(OSError):
            run_dir.parent.rmdir()
    if (out / "plots").is_dir():
        remove([f for f in (out / "plots").iterdir() if f.suffix in (".png", ".svg", ".pdf")], out / "plots")
    remove([out / "summary.csv", out / "report.md"], out)
