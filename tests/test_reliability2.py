"""Reliability II (issue 17, and issue 15's store lock, warnings and SIGTERM): no silent wrong
results, no lost results, and every bad input in one line.

The regression corpus (:data:`CORPUS`) is generated at test time -- tiny PNGs, split files,
configs, checkpoints; no binary fixtures. Each case runs ``lamm-cl`` on top of earlier results
and asserts the exit status, that stderr is exactly one line naming the culprit, and that the
earlier results are byte-identical afterwards. The tests that need real processes (two
extractors of one store entry, SIGTERM, the lock race, a full disk, warnings at import) start
them; everything else calls ``lamm_cl.cli.main`` in this process.
"""
from __future__ import annotations

import errno
import json
import math
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lamm_cl import checkpoint, safe_io
from lamm_cl.cli import main
from lamm_cl.data import load_dataset
from lamm_cl.errors import DataNotFoundError, UserError
from lamm_cl.features import FeatureExtractor, FeatureStore
from lamm_cl.results import RunRecord, read_run, write_run
from lamm_cl.runner import inputs as runner_inputs
from lamm_cl.runner.record import run_config

DTD_CLASSES = ["banded", "dotted"]


# --------------------------------------------------------------------------- generated data


def write_png(path: Path, seed: int) -> None:
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


def config_data(root: Path, out: Path, **changes) -> dict:
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


def write_config(path: Path, data: dict) -> Path:
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
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lamm-cl: error: ") and culprit in lines[0], err


# --------------------------------------------------------------------------- the corpus
# Each case: (id, setup(root, out) -> (argv after the command, culprit)). ``root`` holds a generated DTD
# and ``out`` earlier results; the default argv runs the config at root/config.yaml with --overwrite,
# the strongest promise: bad input must not cost the earlier results even then.


def _run(root, out, *extra, **changes):
    cfg = write_config(root / "config.yaml", config_data(root, out, **changes))
    return ["run", str(cfg), "--no-progress", "--overwrite", *extra]


def truncated_image(root, out):
    victim = sorted((root / "dtd" / "images").rglob("*_test_1.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    return _run(root, out), victim.name


def garbage_image(root, out):
    victim = sorted((root / "dtd" / "images").rglob("*_train_2.png"))[-1]
    victim.write_bytes(b"this is not a png at all" * 3)
    return _run(root, out), victim.name


def missing_later_image(root, out):
    victim = sorted((root / "dtd" / "images").rglob("*_test_2.png"))[-1]  # the very last one listed
    victim.unlink()
    return _run(root, out), victim.name


def nan_lr(root, out):
    data = config_data(root, out, strategies=[{"name": "lamm", "epochs": 1}])
    text = yaml.safe_dump(data, sort_keys=False).replace("epochs: 1", "epochs: 1\n  lr: .nan")
    (root / "config.yaml").write_text(text)
    return ["run", str(root / "config.yaml"), "--overwrite"], "strategies[0].lr"


def inf_temperature(root, out):
    return _run(root, out, "--set", "strategies.0.name=lamm", "--set", "strategies.0.loss.temperature=.inf"), \
        "strategies[0].loss.temperature"


def nan_in_plugin_entry(root, out):
    return _run(root, out, "--set", "strategies.0.name=lamm",
                "--set", "strategies.0.plugins=[{name: replay, mem_size: .nan}]"), "strategies[0].plugins[0].mem_size"


def seed_too_large(root, out):
    return _run(root, out, seeds=[2**32]), "seeds[0]"


def seed_negative(root, out):
    return _run(root, out, seeds=[-1]), "seeds[0]"


def order_seed_too_large(root, out):
    return _run(root, out, **{"benchmark.class_order": "seeded", "benchmark.order_seed": 2**40}), \
        "benchmark.order_seed"


def template_too_long(root, out):
    return _run(root, out, **{"benchmark.template": "a photo " * 40 + "of a {}."}), "benchmark.template"


def empty_name(root, out):
    return _run(root, out, name=""), "name"


def key_twice(root, out):
    text = yaml.safe_dump(config_data(root, out), sort_keys=False)
    (root / "config.yaml").write_text(text.replace("device: cpu\n", "device: cpu\ndevice: cuda\n"))
    return ["run", str(root / "config.yaml"), "--overwrite"], "'device' is written twice"


def cache_dir_is_a_file(root, out):
    (root / "a_file").write_text("not a folder")
    return _run(root, out, **{"features.cache_dir": str(root / "a_file" / "features")}), "a_file"


def output_name_too_long(root, out):
    return _run(root, out, "--output", str(root / ("r" * 300))), "rrrrrrrr"


def empty_class_name(root, out):
    for split in ("train", "test"):
        for name in ("___", "cat"):
            write_png(root / "folder" / split / name / "a.png", 1)
    return _run(root, out, **{"benchmark.dataset": "imagefolder", "benchmark.root": str(root / "folder")}), "___"


def malformed_checkpoint(root, out):
    cfg = write_config(root / "config.yaml", config_data(root, out, strategies=[{"name": "lamm"}]))
    from lamm_cl import config

    loaded = config.load(cfg)
    run_dir = out / "lamm" / "seed0"
    run_dir.mkdir(parents=True)
    meta = {"strategy": "lamm", "seed": 0, "config": run_config(loaded.to_dict(), "lamm")}
    import torch

    torch.save({"format": checkpoint.FORMAT, "meta": meta, "experience": "one", "matrix": [[1.0]]},
               run_dir / checkpoint.CHECKPOINT_FILE)
    return ["run", str(cfg), "--no-progress", "--resume"], "experience"


def report_with_plots_a_file(root, out):
    for p in (out / "plots").iterdir():
        p.unlink()
    (out / "plots").rmdir()
    (out / "plots").write_text("a file where the plots folder goes")
    return ["report", str(out)], "plots"


CORPUS = [truncated_image, garbage_image, missing_later_image, nan_lr, inf_temperature, nan_in_plugin_entry,
          seed_too_large, seed_negative, order_seed_too_large, template_too_long, empty_name, key_twice,
          cache_dir_is_a_file, output_name_too_long, empty_class_name, malformed_checkpoint,
          report_with_plots_a_file]


@pytest.mark.parametrize("case", CORPUS, ids=[c.__name__ for c in CORPUS])
def test_corpus_one_line_status_2_earlier_results_intact(tmp_path, capsys, case):
    root, out = tmp_path / "data", tmp_path / "out"
    make_dtd(root)
    earlier_results(out)
    argv, culprit = case(root, out)
    before = snapshot(out)
    capsys.readouterr()
    assert main(argv) == 2
    one_line(capsys.readouterr().err, culprit)
    assert snapshot(out) == before
    assert not (out / safe_io.LOCK_FILE).exists()


# --------------------------------------------------------------------------- 1. dataset identity


def test_identity_changes_when_an_image_changes_behind_an_unchanged_split_file(tmp_path, tiny_clip):
    paths = make_dtd(tmp_path)
    first = load_dataset("dtd", tmp_path)
    ext = FeatureExtractor(tiny_clip, cache_dir=None)
    again = load_dataset("dtd", tmp_path)
    assert again.train.identity == first.train.identity  # nothing changed: the cache is shared

    victim = paths[4]  # a later train image, not the first listed
    st = victim.stat()
    write_png(victim, 999)  # other pixels; a PNG of 8x8 noise keeps its size only by chance
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    edited = load_dataset("dtd", tmp_path)
    assert edited.train.identity != first.train.identity
    assert edited.test.identity == first.test.identity  # the test images did not change
    assert ext.key(edited.train) != ext.key(first.train)

    # Same bytes count, same name, newer mtime (a file replaced by another of the same size): still caught.
    victim = paths[7]  # a test image
    size = victim.stat().st_size
    victim.write_bytes(bytes(size))
    assert victim.stat().st_size == size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert load_dataset("dtd", tmp_path).test.identity != first.test.identity


def test_identity_is_stat_only_and_follows_relative_paths(tmp_path):
    from lamm_cl.data.base import files_identity

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"12345")
    b.write_bytes(b"12345")
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    # same size and mtime under the same relative name: the same identity, whatever the bytes or the folder
    assert files_identity([("x.png", a)]) == files_identity([("x.png", b)])
    assert files_identity([("x.png", a)]) != files_identity([("y.png", a)])
    with pytest.raises(DataNotFoundError, match="gone.png"):
        files_identity([("x.png", a), ("gone.png", tmp_path / "gone.png")])


# --------------------------------------------------------------------------- 2. checksummed entries


def test_entry_garbled_at_the_same_size_is_recomputed(tmp_path, tiny_clip, digits):
    samples = digits.train.subset(range(12))
    ext = FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=12)
    good = ext.features(samples).clone()
    data, meta = ext.store.paths(ext.key(samples))
    for garble in (lambda raw: raw[:128] + bytes(len(raw) - 128),  # zeros after the header
                   lambda raw: raw[:128] + np.random.default_rng(0).bytes(len(raw) - 128)):
        raw = data.read_bytes()
        data.write_bytes(garble(raw))
        assert data.stat().st_size == len(raw)
        notes = []
        fresh = FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=12)
        fresh.log = notes.append
        again = fresh.features(samples)
        assert np.array_equal(again.numpy(), good.numpy())
        assert len(notes) == 1 and "checksum" in notes[0]
        assert json.loads(meta.read_text())["sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- 3./4. the results-folder lock


def test_a_run_that_filled_the_folder_meanwhile_is_not_overwritten(tmp_path, capsys, monkeypatch):
    # The first look finds the folder empty; another run finishes its results before this one takes the
    # lock (simulated where the weights are built): the second look, under the lock, must refuse.
    root, out = tmp_path / "data", tmp_path / "out"
    make_dtd(root)
    cfg = write_config(root / "config.yaml", config_data(root, out))
    build = runner_inputs.build_clip

    def other_run_finishes_meanwhile(*args, **kwargs):
        earlier_results(out)
        return build(*args, **kwargs)

    monkeypatch.setattr(runner_inputs, "build_clip", other_run_finishes_meanwhile)
    assert main(["run", str(cfg), "--no-progress"]) == 2
    snap = snapshot(out)
    one_line(capsys.readouterr().err, "is not empty")
    earlier = tmp_path / "earlier"
    earlier_results(earlier)
    assert snap == snapshot(earlier)


def _contend(out: str, stale: bool, barrier, results) -> None:
    barrier.wait()
    try:
        with safe_io.lock_output(Path(out)):
            start = time.monotonic()
            time.sleep(0.05)
            results.put(("held", os.getpid(), start, time.monotonic()))
    except UserError as e:
        results.put(("refused", os.getpid(), str(e), 0.0))


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale-lock"])
def test_lock_admits_one_holder_at_a_time(tmp_path, stale):
    ctx = multiprocessing.get_context("fork")  # the children only touch files
    dead = subprocess.Popen(["true"])
    dead.wait()
    overlaps = 0
    for trial in range(15):
        out = tmp_path / f"out{trial}"
        if stale:  # a lock left by a process that is gone: every contender may judge it stale at once
            out.mkdir()
            (out / safe_io.LOCK_FILE).write_text(f"{dead.pid} {os.uname().nodename}\n")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(out), stale, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        held = sorted((g[2], g[3]) for g in got if g[0] == "held")
        assert held, got
        overlaps += sum(b[0] < a[1] for a, b in zip(held, held[1:]))
        assert all("in use" in g[2] for g in got if g[0] == "refused"), got
        assert not (out / safe_io.LOCK_FILE).exists()
    assert overlaps == 0


# --------------------------------------------------------------------------- 7. full disks, read-only stores


def _write_entry_under_limit(root: str, limit: int, status) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    store = FeatureStore(root)
    try:
        with store.writer("k", (1000, 256), "float32") as arr:
            arr[:] = 1.0  # a sparse map would die of SIGBUS right here
        status.put("written")
    except UserError as e:
        status.put(f"error: {e}")


def test_full_cache_filesystem_is_one_line_not_sigbus(tmp_path):
    ctx = multiprocessing.get_context("fork")
    status = ctx.Queue()
    child = ctx.Process(target=_write_entry_under_limit, args=(str(tmp_path), 64 * 1024, status))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, f"the writer died with status {child.exitcode}"
    msg = status.get(timeout=5)
    assert msg.startswith("error: ") and "no space left" in msg and str(tmp_path) in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no temporary file left to trip over


def _lock_under_limit(out: str, status) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4, 4))  # the pid and host do not fit
    try:
        with safe_io.lock_output(Path(out)):
            status.put("held")
    except UserError as e:
        status.put(f"error: {e}")


def test_full_output_filesystem_at_the_lock_is_one_line(tmp_path):
    ctx = multiprocessing.get_context("fork")
    status = ctx.Queue()
    child = ctx.Process(target=_lock_under_limit, args=(str(tmp_path / "out"), status))
    child.start()
    child.join(timeout=60)
    msg = status.get(timeout=5)
    assert child.exitcode == 0 and msg.startswith("error: ") and "cannot write" in msg and "\n" not in msg, msg
    assert not (tmp_path / "out" / safe_io.LOCK_FILE).exists()


def test_full_output_filesystem_is_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    earlier_results(out)
    before = snapshot(out)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_io.os, "fsync", full)
    with pytest.raises(UserError, match="No space left") as e:
        safe_io.atomic_write_text(out / "summary.csv", "new")
    assert "summary.csv" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(safe_io.os, "fsync", real)
    assert snapshot(out) == before and not [p for p in out.rglob("*.tmp")]


def test_read_only_store_reads_what_it_holds_and_refuses_to_write_in_one_line(tmp_path, tiny_clip, digits,
                                                                             monkeypatch):
    import lamm_cl.features.store as store_module

    samples, other = digits.train.subset(range(6)), digits.train.subset(range(6, 12))
    held = FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=6).features(samples).clone()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(store_module.os, "open", read_only)
    ext = FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=6)
    assert np.array_equal(ext.features(samples).numpy(), held.numpy())  # no lock, no write needed
    with pytest.raises(UserError, match="Read-only file system") as e:
        ext.features(other)
    assert "features.cache_dir" in str(e.value)


# --------------------------------------------------------------------------- stale temporary files


def test_stale_temporaries_are_swept_and_live_ones_kept(tmp_path):
    import fcntl

    store = FeatureStore(tmp_path)
    old = time.time() - 3600
    stale = tmp_path / ("." + "a" * 40 + ".npy.99999999.deadbeef.tmp")
    live = tmp_path / ("." + "b" * 40 + ".npy.1.cafecafe.tmp")
    for p in (stale, live):
        p.write_bytes(b"partial")
        os.utime(p, (old, old))
    fd = os.open(tmp_path / ("b" * 40 + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer of entry b is alive
    try:
        assert store.sweep_temporaries() == [stale]
    finally:
        os.close(fd)
    assert live.exists() and not stale.exists()

    plots = tmp_path / "out" / "plots"
    plots.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = plots / f".seen_accuracy.png.{dead.pid}.0a1b2c3d.tmp"
    mine = plots / f".report.md.{os.getpid()}.0a1b2c3d.tmp"
    for p in (left, mine):
        p.write_bytes(b"half a plot")
        os.utime(p, (old, old))
    fresh = plots / f".other.png.{dead.pid}.0a1b2c3e.tmp"
    fresh.write_bytes(b"written after the run started")
    assert sorted(safe_io.sweep_temporaries(plots, before=time.time() - 60)) == sorted([left, mine])
    assert fresh.exists()


# --------------------------------------------------------------------------- 15a. one encoder run for two processes

EXTRACT = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from lamm_cl.data import load_dataset
    from lamm_cl.features import FeatureExtractor
    from lamm_cl.model.clip import build_clip

    store, log, go, out = (Path(a) for a in sys.argv[1:5])
    clip = build_clip("lamm-tiny", "none", "cpu")
    samples = load_dataset("digits").train.subset(range(40))
    ext = FeatureExtractor(clip, cache_dir=store, batch_size=8)
    real = ext._extract

    def slow_extract(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)  # long enough for the other process to arrive and wait
        return real(*args, **kwargs)

    ext._extract = slow_extract
    (out.parent / (out.name + ".ready")).touch()
    while not go.exists():
        time.sleep(0.01)
    np.save(out, ext.features(samples).numpy())
''')


def test_two_processes_extracting_one_entry_run_the_encoder_once(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT)
    store, log, go = tmp_path / "store", tmp_path / "encoder_runs.txt", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(store), str(log), str(go), str(tmp_path / f"f{i}.npy")],
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"f{i}.npy.ready").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    go.touch()  # both ask for the entry at the same moment
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(log.read_text().split()) == 1  # the encoder ran in one process only
    a, b = np.load(tmp_path / "f0.npy"), np.load(tmp_path / "f1.npy")
    assert a.shape == (40, 64) and np.array_equal(a, b)
    assert sorted(p.suffix for p in store.iterdir()) == [".json", ".lock", ".npy"]  # one entry, no temporaries


# --------------------------------------------------------------------------- 9. warnings; 15c. SIGTERM


def child(*args: str, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.Popen([sys.executable, "-c", "import sys; from lamm_cl.cli import main; sys.exit(main())",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_no_third_party_warning_before_the_error_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config_data(tmp_path, tmp_path / "out", **{"strategies.0.name": "lamz"})))
    proc = child("run", str(cfg))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert len(err.splitlines()) == 1 and err.startswith("lamm-cl: error: strategies[0].name"), err


def test_sigterm_keeps_finished_work_releases_the_lock_and_resume_continues(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    make_dtd(root)
    cfg = write_config(root / "config.yaml", config_data(
        root, out, strategies=[{"name": "zeroshot"}, {"name": "lamm", "epochs": 30, "batch_size": 2}],
        **{"benchmark.n_experiences": 2}))
    ckpt = out / "lamm" / "seed0" / checkpoint.CHECKPOINT_FILE
    proc = child("run", str(cfg), "--no-progress")
    deadline = time.monotonic() + 240
    while not ckpt.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = err.splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and "--resume" in lines[0], err
    assert not (out / safe_io.LOCK_FILE).exists()
    assert read_run(out / "zeroshot" / "seed0").n_experiences == 2
    assert checkpoint.load(ckpt)["experience"] == 0
    finished = snapshot(out / "zeroshot")

    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 0
    log = capsys.readouterr().out
    assert "lamm seed 0: resuming after experience 1/2" in log
    assert read_run(out / "lamm" / "seed0").n_experiences == 2
    assert snapshot(out / "zeroshot") == finished


def test_extracting_features_leaves_the_global_random_stream_alone(tmp_path, tiny_clip, digits):
    # A cold store extracts, a warm one reads: a run's training randomness must not depend on which.
    import torch

    samples = digits.train.subset(range(10))
    torch.manual_seed(3)
    FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=4).features(samples)  # cold: extracts
    after_cold = torch.rand(3)
    torch.manual_seed(3)
    FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=4).features(samples)  # warm: reads
    after_warm = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after_cold, after_warm) and torch.equal(after_cold, torch.rand(3))
