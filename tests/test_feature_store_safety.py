"""The feature store's safety: a dataset's identity follows its image files, checksummed entries,
full and read-only cache disks, stale temporaries swept, two processes extracting one entry run the
encoder once, and extraction leaves the global random stream alone."""
from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import subprocess
import time

import numpy as np
import pytest
import torch

from lamm_cl import safe_io
from lamm_cl.data import load_dataset
from lamm_cl.errors import DataNotFoundError, UserError
from lamm_cl.features import FeatureExtractor, FeatureStore

from builders import make_dtd, under_file_size_limit, write_png


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


def _write_entry(root: str) -> str:
    with FeatureStore(root).writer("k", (1000, 256), "float32") as arr:
        arr[:] = 1.0  # a sparse map would die of SIGBUS right here
    return "written"


def test_full_cache_filesystem_is_one_line_not_sigbus(tmp_path):
    ctx = multiprocessing.get_context("fork")
    status = ctx.Queue()
    child = ctx.Process(target=under_file_size_limit,
                        args=(64 * 1024, functools.partial(_write_entry, str(tmp_path)), status))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, f"the writer died with status {child.exitcode}"
    msg = status.get(timeout=5)
    assert msg.startswith("error: ") and "no space left" in msg and str(tmp_path) in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no temporary file left to trip over


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


def _extract_when_told(clip, samples, store, log, go, out) -> None:
    """In a forked child: wait for ``go``, then ask the store for ``samples``' features; each call of the
    encoder is logged (this process's pid) and slowed, so that the other process arrives while it runs."""
    torch.set_num_threads(1)  # a forked child has no OpenMP pool of its own: keep every op on this thread
    ext = FeatureExtractor(clip, cache_dir=store, batch_size=8)
    real = ext._extract

    def slow_extract(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other process to arrive and wait
        return real(*args, **kwargs)

    ext._extract = slow_extract
    (out.parent / (out.name + ".ready")).touch()
    while not go.exists():
        time.sleep(0.01)
    np.save(out, ext.features(samples).numpy())


@pytest.mark.integration
def test_two_processes_extracting_one_entry_run_the_encoder_once(tmp_path, tiny_clip, digits):
    # Two processes, each with its own FeatureExtractor and its own open of the entry's lock file (the
    # lock is between processes, not objects). Forked from this one: they already hold the tiny CLIP and
    # the digits, so neither pays a fresh interpreter's imports (seconds) to race for the lock.
    store, log, go = tmp_path / "store", tmp_path / "encoder_runs.txt", tmp_path / "go"
    samples = digits.train.subset(range(40))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_extract_when_told, args=(tiny_clip, samples, store, log, go, tmp_path / f"f{i}.npy"))
             for i in range(2)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"f{i}.npy.ready").exists() for i in range(2)):
            assert all(p.exitcode is None for p in procs), [p.exitcode for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.touch()  # both ask for the entry at the same moment
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0, p.exitcode  # its traceback, if any, is in the captured stderr
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    runs = log.read_text().split()
    assert len(runs) == 1 and int(runs[0]) in {p.pid for p in procs}  # the encoder ran in one child only
    a, b = np.load(tmp_path / "f0.npy"), np.load(tmp_path / "f1.npy")
    assert a.shape == (40, 64) and np.array_equal(a, b)
    assert sorted(p.suffix for p in store.iterdir()) == [".json", ".lock", ".npy"]  # one entry, no temporaries


def test_extracting_features_leaves_the_global_random_stream_alone(tmp_path, tiny_clip, digits):
    # A cold store extracts, a warm one reads: a run's training randomness must not depend on which.

    samples = digits.train.subset(range(10))
    torch.manual_seed(3)
    FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=4).features(samples)  # cold: extracts
    after_cold = torch.rand(3)
    torch.manual_seed(3)
    FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=4).features(samples)  # warm: reads
    after_warm = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after_cold, after_warm) and torch.equal(after_cold, torch.rand(3))
