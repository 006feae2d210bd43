"""Plain builders shared by the test files (imported as ``from builders import ...``; pytest puts tests/
on the path): generated datasets on disk, configs, a run that captures each strategy's template, and
`lamm-cl` child processes. Fixtures live in conftest.py; the loss formulas in formulas.py."""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from avalanche.training.plugins import ReplayPlugin, SupervisedPlugin
from PIL import Image

from lamm_cl import config, runner, safe_io
from lamm_cl.data.coop import SPLIT_FILE_DATASETS
from lamm_cl.registry import get_strategy
from lamm_cl.results import RunRecord, write_run

# --------------------------------------------------------------------------- generated datasets (CoOp layouts)

N_TRAIN, N_VAL, N_TEST = 3, 1, 2  # images per class in each part of a miniature split


def write_image(path: Path, seed: int) -> None:
    """A 6x6 RGB image whose colour depends on ``seed``, in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((6, 6, 3), [(seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256], dtype=np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    Image.fromarray(rgb).save(path, format=fmt)


# Per split-file dataset: the raw class names as CoOp's split files spell them
# (`readable` is what lamm-cl should turn each into) and how a relative image path looks.
SPLIT_CLASSES = {
    "caltech101": [("accordion", "accordion"), ("BACKGROUND_Google", None), ("yin_yang", "yin yang"),
                   ("airplanes", "airplane")],
    "oxford_pets": [("abyssinian", "abyssinian"), ("american_bulldog", "american bulldog"),
                    ("great_pyrenees", "great pyrenees")],
    "stanford_cars": [("2000 AM General Hummer SUV", "2000 AM General Hummer SUV"),
                      ("2012 Acura RL Sedan", "2012 Acura RL Sedan")],
    "oxford_flowers": [("pink primrose", "pink primrose"), ("globe thistle", "globe thistle")],
    "food101": [("apple_pie", "apple pie"), ("baby_back_ribs", "baby back ribs")],
    "sun397": [("abbey", "abbey"), ("outdoor apartment_building", "outdoor apartment building")],
    "dtd": [("banded", "banded"), ("blotchy", "blotchy"), ("zigzagged", "zigzagged")],
    # The published EuroSAT split already has CoOp's names; a raw folder name is renamed too.
    "eurosat": [("Annual Crop Land", "Annual Crop Land"), ("Forest", "Forest"), ("SeaLake", "Sea or Lake")],
    "ucf101": [("Apply_Eye_Makeup", "Apply Eye Makeup"), ("Baby_Crawling", "Baby Crawling")],
}


def rel_path(name: str, raw: str, label: int, i: int) -> str:
    stem = f"{raw.replace(' ', '_')}_{i:04d}.jpg"
    if name == "oxford_pets":
        return stem  # flat images/ folder
    if name == "stanford_cars":
        return f"cars_train/{label:02d}{i:03d}.jpg"  # relative to stanford_cars/ itself
    return f"{raw.replace(' ', '_')}/{stem}"


def make_split_file_dataset(root: Path, name: str) -> Path:
    spec = SPLIT_FILE_DATASETS[name]
    image_dir = root / spec.folder / spec.image_dir
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    i = 0
    for label, (raw, _) in enumerate(SPLIT_CLASSES[name]):
        for part, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
            for _ in range(n):
                rel = rel_path(name, raw, label, i)
                write_image(image_dir / rel, i)
                split[part].append([rel, label, raw])
                i += 1
    split_path = root / spec.folder / spec.split_file
    split_path.write_text(json.dumps(split))
    return split_path


def make_imagefolder(root: Path) -> None:
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        for k, cls in enumerate(["tabby_cat", "golden_retriever"]):
            for i in range(n):
                suffix = ".PNG" if i % 2 else ".jpg"  # extensions match in any letter case
                write_image(root / part / cls / f"img{i}{suffix}", 10 * k + i)
            (root / part / cls / "notes.txt").write_text("not an image")


DTD_CLASSES = ["banded", "dotted"]


def write_png(path: Path, seed: int) -> None:
    """An 8x8 PNG of noise drawn from ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="PNG")


def make_dtd(root: Path, per_class: int = 3) -> list[Path]:
    """A CoOp-layout DTD with 2 classes: ``per_class`` train and test images each. Returns the image
    paths in split-file order (train first)."""
    folder = root / "dtd"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    paths = []
    for part in ("train", "test"):
        for label, name in enumerate(DTD_CLASSES):
            for i in range(per_class):
                rel = f"{name}/{name}_{part}_{i}.png"
                write_png(folder / "images" / rel, len(paths))
                split[part].append([rel, label, name])
                paths.append(folder / "images" / rel)
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return paths


def dtd_config_data(root: Path, out: Path, **changes) -> dict:
    """A zero-shot run of the :func:`make_dtd` data at ``root`` into ``out``; ``changes``: dotted key -> value."""
    data = {
        "name": "rel17", "output": str(out), "seeds": [0], "device": "cpu",
        "benchmark": {"dataset": "dtd", "root": str(root), "n_experiences": 2, "class_order": [0, 1]},
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "features": {"cache": True, "cache_dir": str(root / "cache")},
        "strategies": [{"name": "zeroshot"}],
    }
    for dotted, value in changes.items():
        *head, last = dotted.split(".")
        node = data
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return data


def write_yaml(path: Path, data: dict) -> Path:
    """``data`` as YAML at ``path`` (keys in their order); returns ``path``."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def earlier_results(out: Path) -> None:
    """A finished run, a plot, summary.csv and report.md, written by hand (no training)."""
    A = np.array([[50.0, math.nan], [40.0, 60.0]])
    record = RunRecord(benchmark="rel17", strategy="zeroshot", seed=0, matrix=A, test_counts=[3, 3],
                       experiences=[[0], [1]], class_names=DTD_CLASSES, class_order=[0, 1],
                       per_class_accuracy=[40.0, 60.0], config={"name": "rel17"}, matrix_task_aware=A,
                       info={"seconds": 1.0, "weights": {"arch": "lamm-tiny", "pretrained": "none", "file": None,
                                                         "sha256": None}})
    write_run(out / "zeroshot" / "seed0", record)
    (out / "plots").mkdir()
    (out / "plots" / "seen_accuracy.png").write_bytes(b"\x89PNG earlier plot")
    (out / "summary.csv").write_text("strategy,avg\nzeroshot,55\n")
    (out / "report.md").write_text("# earlier report\n")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (the lock file aside: it comes and goes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != safe_io.LOCK_FILE}


def one_line(err: str, culprit: str) -> None:
    """``err`` is exactly one `lamm-cl: error:` line naming ``culprit``."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lamm-cl: error: ") and culprit in lines[0], err


# --------------------------------------------------------------------------- configs


def write_digits_config(env: Path, path: Path, strategies, **benchmark) -> Path:
    """A quickstart-sized config: digits, 5 experiences of 2 classes, tiny random CLIP, 8 shots, with
    ``env``'s test strategies (conftest's ``run_env``) and the session's feature store (conftest's
    ``feature_store``: the default store, under the session's private XDG_CACHE_HOME)."""
    from lamm_cl.features.store import default_cache_dir

    data = {
        "name": "reliability",
        "seeds": [0],
        "device": "cpu",
        "plugins": [str(env / "test_strategies.py")],
        "benchmark": {"dataset": "digits", "n_experiences": 5, "class_order": "seeded", "order_seed": 0,
                      "shots": 8, **benchmark},
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "features": {"cache": True, "cache_dir": str(default_cache_dir())},
        "strategies": strategies,
    }
    return write_yaml(path, data)


# zero-shot, then LAMM with replay (conftest's run_env registers lamm_replay): resumable mid-run
RESUMABLE = [{"name": "zeroshot"}, {"name": "lamm_replay", "epochs": 2, "batch_size": 8}]


def digits_config(strategies: list[dict], cache_dir) -> dict:
    """Digits in 2 experiences of 5 classes, 10 shots per class, tiny random CLIP."""
    return {"name": "baselines", "seeds": [0], "device": "cpu",
            "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": 10,
                          "class_order": "seeded", "order_seed": 0},
            "model": {"arch": "lamm-tiny", "pretrained": "none"},
            "features": {"cache": True, "cache_dir": str(cache_dir)},
            "strategies": strategies}


def files_under(folder: Path) -> list[str]:
    """Every path under ``folder``, relative and sorted ([] when it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------- runs


class Snapshot(SupervisedPlugin):
    """Records the model's state after every training experience, and the replay buffer before each."""

    def __init__(self):
        super().__init__()
        self.after = []
        self.buffer_before = []  # (size, labels) of every replay plugin's buffer, per experience

    def before_training_exp(self, strategy, **kwargs):
        for p in strategy.plugins:
            if isinstance(p, ReplayPlugin):
                buf = p.storage_policy.buffer
                self.buffer_before.append((len(buf), sorted({int(buf[i][1]) for i in range(len(buf))})))

    def after_training_exp(self, strategy, **kwargs):
        self.after.append({k: v.detach().clone() for k, v in strategy.model.state_dict().items()})


def run_capturing(data: dict, out, stop_at=None, **run_kw) -> tuple[list, list]:
    """Run ``data`` through lamm_cl.runner.run; return its records and, per strategy entry in the order
    they were built, a namespace: ``name``, ``template``, ``snap`` (a :class:`Snapshot`), ``clip`` and
    ``clip_before`` (the CLIP's state_dict before the strategy was built).

    ``stop_at=t`` interrupts the run (KeyboardInterrupt, as Ctrl-C) when experience t starts training.
    """
    captured = []
    with pytest.MonkeyPatch.context() as mp:
        for name in {s["name"] for s in data["strategies"]}:
            spec = get_strategy(name)

            def build(ctx, opts, _orig=spec.build, _name=name):
                snap = Snapshot()
                ctx.plugins.append(snap)
                before = {k: v.clone() for k, v in ctx.clip.model.state_dict().items()}
                template = _orig(ctx, opts)
                captured.append(SimpleNamespace(name=_name, template=template, snap=snap, clip=ctx.clip,
                                                clip_before=before))
                if stop_at is not None:
                    train = template.train

                    def interrupted(exp, **kw):
                        if exp.current_experience == stop_at:
                            raise KeyboardInterrupt
                        return train(exp, **kw)

                    template.train = interrupted
                return template

            mp.setattr(spec, "build", build)
        records = runner.run(config.parse(data), out, progress=False, **run_kw)
    return captured, records


def adapt(model, classes) -> None:
    """Grow ``model`` by an experience of ``classes``, as Avalanche does before training it."""
    from avalanche.models.utils import avalanche_model_adaptation

    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=list(classes)))


def child(*args: str, **kwargs) -> subprocess.Popen:
    """`lamm-cl ARGS` in a subprocess, without the parent's PYTHONWARNINGS (it must show its own)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.Popen([sys.executable, "-c", "import sys; from lamm_cl.cli import main; sys.exit(main())",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def _command_in_this_child(argv: list, stdout: str, stderr: str) -> None:
    """The body of :func:`forked_command`'s child: `lamm-cl ARGV` with its output in two files."""
    import warnings

    import torch

    from lamm_cl.cli import main

    # A forked child has no OpenMP pool of its own (libgomp does not survive fork): one thread, as the
    # parent's tests that compare numbers with it set for themselves.
    torch.set_num_threads(1)
    # Warnings as a fresh `lamm-cl` without PYTHONWARNINGS starts (child() drops it): no -W options and none
    # of the test session's filters; main() applies the command's own rule.
    sys.warnoptions.clear()
    warnings.resetwarnings()
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.exit(main(argv))  # multiprocessing makes the status the child's exit code


class ForkedCommand:
    """`lamm-cl ARGS` in a forked child of this process: a real process (its own pid, signals, locks)
    that starts with everything this one has imported, instead of paying a fresh interpreter's ~10 s of
    torch/open_clip/Avalanche imports. The bits of :class:`subprocess.Popen` the tests use: ``pid``,
    ``poll``, ``send_signal``, ``kill``, ``communicate`` and ``returncode`` (-N when signal N ended it).

    What a fresh interpreter would add (import-time noise on stderr, a third-party warning) is not seen
    here; the test that needs it starts a real `lamm-cl` (:func:`child`).
    """

    def __init__(self, args: tuple, folder: Path):
        import multiprocessing

        folder.mkdir(parents=True, exist_ok=True)
        self._out, self._err = folder / "child.stdout", folder / "child.stderr"
        ctx = multiprocessing.get_context("fork")
        self._proc = ctx.Process(target=_command_in_this_child, args=(list(args), str(self._out), str(self._err)))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self):
        return self._proc.exitcode

    def poll(self):
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for the child (killing it after ``timeout`` seconds); its stdout and stderr."""
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            raise subprocess.TimeoutExpired(f"forked lamm-cl (pid {self.pid})", timeout)
        return self._out.read_text(), self._err.read_text()


def forked_command(*args: str, folder: Path) -> ForkedCommand:
    """`lamm-cl ARGS` in a forked child (see :class:`ForkedCommand`); its output goes to files in ``folder``."""
    return ForkedCommand(args, folder)


def under_file_size_limit(limit: int, action, status) -> None:
    """In a (forked) child: cap the size of any file it writes at ``limit`` bytes, as a full disk would, run
    ``action()`` and put ``"done: <its value>"`` or ``"error: <the UserError's line>"`` on ``status``."""
    import resource
    import signal

    from lamm_cl.errors import UserError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        status.put(f"done: {action()}")
    except UserError as e:
        status.put(f"error: {e}")


# --------------------------------------------------------------------------- reports without drawing

# every figure function build_report calls (lamm_cl/report.py's build_report)
PLOT_FUNCTIONS = ("plot_seen_accuracy", "plot_final_accuracy_forgetting", "plot_old_new_accuracy",
                  "plot_accuracy_matrices", "plot_accuracy_matrix", "plot_sequence_matrix")


def record_plots(mp: pytest.MonkeyPatch) -> list:
    """Through ``mp``, make reports draw nothing (each matplotlib figure costs ~0.5 s): every figure function
    of lamm_cl.plots returns its own name instead of a figure, and ``save_figure`` writes no file; it records
    ``(figure function, file name, formats)`` and returns the paths it would have written.

    For tests whose claim is report.md, summary.csv or summary.tex: the figures themselves are drawn by
    test_plots.py and by test_report.py's real builds (every file, byte-identical rebuilds, SVG and PDF).

    Returns:
        The record, a list that grows with each figure saved, in order.
    """
    from lamm_cl import plots

    saved: list = []
    for name in PLOT_FUNCTIONS:
        mp.setattr(plots, name, lambda *a, _name=name, **k: _name)

    def save(fig, stem, formats=("png",)):
        stem = Path(stem)
        saved.append((fig, stem.name, tuple(formats)))
        return [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]

    mp.setattr(plots, "save_figure", save)
    return saved


@contextlib.contextmanager
def torch_threads(n: int):
    """Run this process's torch on ``n`` threads for a while: a reference run made here then reduces floats
    as a child process (a job, a forked `lamm-cl`) with that many threads does, with or without xdist."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
