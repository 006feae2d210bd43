"""The frozen-feature store, training views, and the cached / cut text side (DESIGN section 7).

Tiny random-weight CLIP and a few embedded digits only; nothing here is timed
(``python -m lamm_cl.speed speed`` measures the speed).
"""
from __future__ import annotations

import hashlib
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from lamm_cl.config import FeaturesConfig
from lamm_cl.data.base import DatasetParts
from lamm_cl.features import (FeatureExtractor, FeatureStore, ImageReader, TrainViewPlugin, default_cache_dir,
                              draw_view, entry_bytes)
from lamm_cl.model.clip import normalize
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
from lamm_cl.runner.inputs import Inputs
from lamm_cl.strategy_kit.lamm import LammOptions, lamm_model, lamm_objective
from lamm_cl.strategy_kit.context import StrategyContext

from builders import adapt


@pytest.fixture
def samples(digits):
    return digits.train.subset(range(24))


@pytest.fixture
def calls(tiny_clip, monkeypatch):
    """Counts images through the image encoder."""
    seen = []
    real = tiny_clip.encode_images

    def counting(x):
        seen.append(len(x))
        return real(x)

    monkeypatch.setattr(tiny_clip, "encode_images", counting)
    return seen


def _extractor(clip, store, **kw):
    return FeatureExtractor(clip, cache_dir=store, batch_size=10, **kw)


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------

def test_store_hit_returns_exactly_the_stored_values_without_encoding(tiny_clip, samples, calls, tmp_path):
    first = _extractor(tiny_clip, tmp_path).features(samples)
    assert sum(calls) == len(samples)
    data, meta = FeatureStore(tmp_path).paths(_extractor(tiny_clip, tmp_path).key(samples))
    assert json.loads(meta.read_text())["shape"] == [len(samples), tiny_clip.embed_dim]

    calls.clear()
    again = _extractor(tiny_clip, tmp_path).features(samples)  # a fresh extractor: no in-process memo
    assert calls == []
    assert torch.equal(again, first)
    assert np.array_equal(np.load(data), again.numpy())


def test_store_is_shared_and_matches_a_store_free_extraction(tiny_clip, samples, tmp_path):
    stored = _extractor(tiny_clip, tmp_path).features(samples)
    in_memory = _extractor(tiny_clip, None).features(samples)
    assert torch.equal(stored, in_memory)
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_a_changed_transform_or_weights_identity_misses(tiny_clip, samples, calls, tmp_path, monkeypatch):
    _extractor(tiny_clip, tmp_path).features(samples)
    calls.clear()

    monkeypatch.setattr(tiny_clip, "identity", tiny_clip.identity + ":finetuned")
    _extractor(tiny_clip, tmp_path).features(samples)
    assert sum(calls) == len(samples)
    monkeypatch.undo()

    calls.clear()
    shifted = T.Compose([*tiny_clip.preprocess.transforms[:-1], T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    monkeypatch.setattr(tiny_clip, "preprocess", shifted)
    real = tiny_clip.encode_images
    monkeypatch.setattr(tiny_clip, "encode_images", lambda x: (calls.append(len(x)), real(x))[1])
    _extractor(tiny_clip, tmp_path).features(samples)
    assert sum(calls) == len(samples)
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_other_images_or_dtype_miss(tiny_clip, digits, tmp_path):
    ext = _extractor(tiny_clip, tmp_path)
    a, b = digits.train.subset(range(10)), digits.train.subset(range(1, 11))
    assert ext.key(a) != ext.key(b)
    assert ext.key(a) != _extractor(tiny_clip, tmp_path, dtype="float16").key(a)
    assert ext.key(a) != ext.key(a, view=0)


def test_a_truncated_store_file_is_detected_and_recomputed(tiny_clip, samples, calls, tmp_path):
    good = _extractor(tiny_clip, tmp_path).features(samples).clone()
    data, meta = FeatureStore(tmp_path).paths(_extractor(tiny_clip, tmp_path).key(samples))
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])

    calls.clear()
    again = _extractor(tiny_clip, tmp_path).features(samples)
    assert sum(calls) == len(samples)
    assert torch.equal(again, good)
    assert data.stat().st_size == len(raw)


def test_a_half_written_entry_is_never_read(tiny_clip, samples, calls, tmp_path):
    ext = _extractor(tiny_clip, tmp_path)
    good = ext.features(samples).clone()
    data, meta = FeatureStore(tmp_path).paths(ext.key(samples))
    meta.unlink()  # data renamed into place, metadata never written: a crash in between
    np.save(data, np.zeros_like(good.numpy()))

    calls.clear()
    again = _extractor(tiny_clip, tmp_path).features(samples)
    assert sum(calls) == len(samples)
    assert torch.equal(again, good)


def test_a_key_mismatch_is_never_read(tiny_clip, samples, calls, tmp_path):
    ext = _extractor(tiny_clip, tmp_path)
    good = ext.features(samples).clone()
    data, meta = FeatureStore(tmp_path).paths(ext.key(samples))
    info = json.loads(meta.read_text())
    # another key's entry under this name (a collision, or files copied by hand): right shape, wrong values
    np.save(data, np.zeros_like(good.numpy()))
    info["key"] = info["key"].replace("view: center", "view: 0")
    info["nbytes"] = data.stat().st_size
    meta.write_text(json.dumps(info))

    calls.clear()
    again = _extractor(tiny_clip, tmp_path).features(samples)
    assert sum(calls) == len(samples)
    assert torch.equal(again, good)
    assert json.loads(meta.read_text())["key"] == ext.key(samples)


def test_a_shape_or_dtype_mismatch_is_never_read(tmp_path):
    store = FeatureStore(tmp_path)
    with store.writer("k", (3, 4), "float32") as arr:
        arr[:] = 1.0
    assert store.load("k", (3, 4), "float32") is not None
    assert store.load("k", (3, 4), "float16") is None  # and the entry is gone
    assert not any(tmp_path.iterdir())


def test_an_interrupted_write_publishes_nothing(tmp_path):
    store = FeatureStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.writer("k", (3, 4), "float32") as arr:
            arr[0] = 1.0
            raise KeyboardInterrupt
    assert not any(tmp_path.iterdir())
    assert store.load("k", (3, 4), "float32") is None


def test_fp16_store_halves_the_size_and_keeps_the_values(tiny_clip, samples, tmp_path):
    f32 = _extractor(tiny_clip, tmp_path / "a").features(samples)
    f16 = _extractor(tiny_clip, tmp_path / "b", dtype="float16").features(samples)
    assert f16.dtype == torch.float16
    assert torch.allclose(f16.float(), f32, rtol=1e-2, atol=1e-3)
    n, d = f32.shape
    assert (tmp_path / "a").glob("*.npy").__next__().stat().st_size == entry_bytes(n, d, "float32")
    assert (tmp_path / "b").glob("*.npy").__next__().stat().st_size == entry_bytes(n, d, "float16")
    assert entry_bytes(10_000, 512, "float32") == entry_bytes(10_000, 512) == 10_000 * 512 * 4 + 128


def test_features_config_picks_the_store(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lamm-cl" / "features"
    assert FeatureExtractor.from_config(tiny_clip, FeaturesConfig()).store.root == default_cache_dir()
    assert FeatureExtractor.from_config(tiny_clip, FeaturesConfig(cache_dir=str(tmp_path))).store.root == tmp_path
    assert FeatureExtractor.from_config(tiny_clip, FeaturesConfig(cache=False)).store is None


def test_from_config_passes_dtype_progress_and_log_on_and_allows_tf32_on_cuda_only(tiny_clip, monkeypatch):
    import copy
    import os

    asked = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", asked.append)
    progress, log = (lambda it, n, desc: it), (lambda line: None)
    ext = FeatureExtractor.from_config(tiny_clip, FeaturesConfig(cache=False, dtype="float16"), progress=progress, log=log)
    assert (ext.dtype, ext.progress, ext.log, asked) == ("float16", progress, log, [])
    on_cuda = copy.copy(tiny_clip)
    on_cuda.device = torch.device("cuda")  # nothing below touches the device but its memory size, faked here
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=16 * 2**30))
    ext = FeatureExtractor.from_config(on_cuda, FeaturesConfig(cache=False))
    assert asked == ["high"] and ext.batch_size == 256 and ext.num_workers == min(8, os.cpu_count() or 1)
    for cpus, workers in ((16, 8), (3, 3), (None, 1)):  # decoding workers on CUDA: one per core, 1 to 8
        monkeypatch.setattr(os, "cpu_count", lambda n=cpus: n)
        assert FeatureExtractor(on_cuda).num_workers == workers


# ---------------------------------------------------------------------------
# training views
# ---------------------------------------------------------------------------

def test_draw_view_visits_every_view_reproducibly():
    seq = [draw_view(7, 0, e, 4) for e in range(8)]
    assert seq == [draw_view(7, 0, e, 4) for e in range(8)]
    assert sorted(seq[:4]) == [0, 1, 2, 3] and sorted(seq[4:]) == [0, 1, 2, 3]
    assert all(a != b for a, b in zip(seq[:3], seq[1:4]))
    # the seed and the experience both choose the order
    assert [draw_view(8, 0, e, 4) for e in range(8)] != seq and [draw_view(7, 1, e, 4) for e in range(8)] != seq
    assert draw_view(0, 0, 5, 1) == 0
    # epoch e of a cycle of V epochs: place e % V of the permutation drawn from (seed mod 2^32, experience, e // V)
    assert [draw_view(7, 2, e, 3) for e in range(6)] == [
        int(np.random.default_rng([7, 2, e // 3]).permutation(3)[e % 3]) for e in range(6)]
    assert [draw_view(-1, 0, e, 4) for e in range(8)] == [draw_view(2**32 - 1, 0, e, 4) for e in range(8)]


def test_views_differ_from_each_other_and_are_reproducible(tiny_clip, samples, tmp_path):
    ext = _extractor(tiny_clip, tmp_path)
    v0, v1, centre = ext.features(samples, view=0), ext.features(samples, view=1), ext.features(samples)
    assert not torch.allclose(v0, v1) and not torch.allclose(v0, centre)
    fresh = _extractor(tiny_clip, None).features(samples, view=1)  # recomputed from scratch
    assert torch.equal(fresh, v1)


def test_training_reader_switches_view_per_epoch(tiny_clip, digits, tmp_path):
    parts = DatasetParts("digits", digits.classnames, digits.train.subset(range(20)), digits.test.subset(range(10)))
    inputs = Inputs(parts, tiny_clip, _extractor(tiny_clip, tmp_path), train_views=3)
    (plugin,) = inputs.plugins(seed=5)
    assert isinstance(plugin, TrainViewPlugin)
    read = inputs.reader("features", "train")(0, np.arange(20))
    test = inputs.reader("features", "test")(0, np.arange(10))
    centre_test = inputs.extractor.features(parts.test)
    seen = []
    for epoch in range(3):
        plugin.before_training_epoch(SimpleNamespace(experience=SimpleNamespace(current_experience=0),
                                                     clock=SimpleNamespace(train_exp_epochs=epoch)))
        view = draw_view(5, 0, epoch, 3)
        assert torch.equal(read(4), inputs.extractor.features(parts.train, view=view)[4].float())
        assert torch.equal(test(4), centre_test[4])  # test images: always the centre crop
        seen.append(read(4))
    assert not torch.allclose(seen[0], seen[1]) and not torch.allclose(seen[1], seen[2])
    assert Inputs(parts, tiny_clip, _extractor(tiny_clip, tmp_path)).plugins(seed=5) == []  # no views, CPU


# ---------------------------------------------------------------------------
# the text side and the training loss
# ---------------------------------------------------------------------------

def _lamm(clip, names):
    ctx = StrategyContext(clip=clip, class_names=names, template="a photo of the number {}.",
                          device=clip.device, seed=0)
    opts = LammOptions()
    return lamm_model(ctx, opts), opts.weights(None)


def test_cached_features_and_images_give_the_same_lamm_loss(tiny_clip, digits, tmp_path):
    model, weights = _lamm(tiny_clip, digits.classnames)
    adapt(model, [0, 1, 2])
    adapt(model, [3, 4])
    model.train()
    idx = np.flatnonzero(digits.train.labels < 5)[:16]
    batch = digits.train.subset(idx)
    y = torch.as_tensor(batch.labels)

    cached = _extractor(tiny_clip, tmp_path).features(batch)
    cached = _extractor(tiny_clip, tmp_path).features(batch).float()  # read back from the store
    images = torch.stack([ImageReader(batch, tiny_clip.preprocess)[i] for i in range(len(batch))])
    live = tiny_clip.encode_images(images)

    a = float(lamm_objective(model, cached, model(cached), y, weights)[0])
    b = float(lamm_objective(model, live, model(live), y, weights)[0])
    assert abs(a - b) <= 1e-5 * abs(b)


def test_old_classes_cached_text_features_equal_fresh_ones(tiny_clip, digits):
    model, weights = _lamm(tiny_clip, digits.classnames)
    adapt(model, [0, 1, 2])
    with torch.no_grad():  # as if experience 0 had trained them
        for c in (0, 1, 2):
            model.labels.vectors[str(c)].add_(0.05 * torch.randn_like(model.labels.vectors[str(c)]))
    adapt(model, [3, 4])
    model.train()
    encoded = []
    real = model.encoder.encode
    model.encoder.encode = lambda classes, **kw: (encoded.append(list(classes)), real(classes, **kw))[1]
    x = torch.randn(8, tiny_clip.embed_dim)
    y = torch.tensor([0, 3, 4, 1, 3, 4, 2, 3])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)

    before = model(x)
    lamm_objective(model, x, before, y, weights)[0].backward()
    opt.step()
    encoded.clear()
    model(x)
    assert encoded == [[3, 4]]  # only the trainable prompts go through the text encoder
    with torch.no_grad():
        # fresh through the model's own text path (the shared prefix where the tower fits)
        prefix = model.prefix_state()
        fresh = normalize(real([0, 1, 2], labels=model.labels.as_mapping([0, 1, 2]), prefix=prefix))
        fresh0 = normalize(real([0, 1, 2, 3], labels=model.labels.originals([0, 1, 2, 3]), prefix=prefix))
    assert torch.allclose(model.last_text[:3], fresh, rtol=1e-6, atol=1e-7)
    assert torch.allclose(model.original_text_features([0, 1, 2, 3]), fresh0, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(model.last_text[3:], normalize(model.encode([3, 4], original=True)), atol=1e-4)


def test_eot_cut_text_features_equal_open_clips_encode_text(tiny_clip):
    texts = ["a photo of a zero.", "a photo of the number seven, a type of handwritten digit.", "x"]
    ours, ref = tiny_clip.encode_text(texts), tiny_clip.model.encode_text(tiny_clip.tokenizer(texts))
    assert tiny_clip.tokenize(texts).ids.shape[1] < 77
    assert float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max()) < 1e-5


def test_eot_cut_prompts_with_spliced_vectors_equal_open_clip_at_77_tokens(tiny_clip):
    # splicing the word embeddings of another name must give open_clip's own feature of that prompt
    names, swapped = ["zero", "aquarium fish", "one"], ["tiger", "sweet pepper", "two"]
    prompts = ClassPrompts(tiny_clip, names, "a photo of a {}.")
    other = ClassPrompts(tiny_clip, swapped, "a photo of a {}.")
    assert [len(n) for n in prompts.name_ids] == [len(n) for n in other.name_ids]
    words = tiny_clip.model.token_embedding.weight
    labels = {c: words[torch.tensor(other.name_ids[c])] for c in range(3)}
    ours = PromptEncoder(tiny_clip, prompts).encode([0, 1, 2], labels=labels)
    ref = tiny_clip.model.encode_text(tiny_clip.tokenizer([f"a photo of a {n}." for n in swapped]))
    assert float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max()) < 1e-5


def test_speed_runs_and_its_two_steps_agree(tiny_clip):
    # a smoke test of `python -m lamm_cl.speed speed` on the tiny model; the timing itself is not checked
    from lamm_cl.speed import speed

    lines = []
    ratio = speed(arch="lamm-tiny", n_classes=12, n_trainable=3, batch=4, naive_steps=1, fast_steps=1,
                  log=lines.append)
    # the ratio returned is the one printed, naive step time over lamm-cl step time as logged
    assert lines[-1] == f"speedup: {ratio:.0f}x"
    def logged(pattern: str) -> float:
        (match,) = [m for m in (re.search(pattern, x) for x in lines) if m]
        return float(match.group(1))

    naive = logged(r"^naive step .*: ([0-9.]+) s [(]")
    fast = logged(r"^lamm-cl step .*: ([0-9.]+) s [(]")
    assert ratio == pytest.approx(naive / fast, rel=0.1)  # the logged times are rounded
    diff = logged(r"relative difference ([0-9.e+-]+)[)]")
    assert diff < 1e-4  # the two steps compute the same loss


def test_a_checkpoint_file_is_identified_by_its_bytes_not_its_path(tmp_path):
    # a retrained checkpoint saved over the old file must not reuse the old file's cached features
    from lamm_cl.model.clip import weights_identity

    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"weights of the first training")
    first = weights_identity("lamm-tiny", str(path))
    assert first == "lamm-tiny:file:" + hashlib.sha256(b"weights of the first training").hexdigest()[:20]
    path.write_bytes(b"weights of the second training")
    assert weights_identity("lamm-tiny", str(path)) == (
        "lamm-tiny:file:" + hashlib.sha256(b"weights of the second training").hexdigest()[:20])
    # the same bytes elsewhere are the same weights
    (tmp_path / "copy.pt").write_bytes(b"weights of the first training")
    assert weights_identity("lamm-tiny", str(tmp_path / "copy.pt")) == first
    assert weights_identity("ViT-B-16", "openai") == "ViT-B-16:openai"
    assert weights_identity("lamm-tiny", "none") != weights_identity("lamm-tiny", "openai")


# ---------------------------------------------------------------------------
# the store's files, checks and messages, on hand-made entries (no encoder)
# ---------------------------------------------------------------------------

def _entry(tmp_path, key="k"):
    """A store holding ``key``: the [3, 4] float32 array 0..11."""
    store = FeatureStore(tmp_path)
    with store.writer(key, (3, 4), "float32") as arr:
        arr[:] = np.arange(12, dtype=np.float32).reshape(3, 4)
    return store, *store.paths(key)


def test_entry_files_are_named_by_the_keys_sha256_and_hold_what_was_written(tmp_path):
    store, data, meta = _entry(tmp_path / "s")
    name = hashlib.sha256(b"k").hexdigest()[:40]
    assert (data, meta) == (tmp_path / "s" / f"{name}.npy", tmp_path / "s" / f"{name}.json")
    assert store.lock_path("k") == tmp_path / "s" / f"{name}.lock"
    raw = data.read_bytes()
    assert json.loads(meta.read_text()) == {"key": "k", "shape": [3, 4], "dtype": "float32", "nbytes": len(raw),
                                            "sha256": hashlib.sha256(raw).hexdigest()}
    got = store.load("k", (3, 4), "float32")
    np.testing.assert_array_equal(got, np.arange(12).reshape(3, 4))
    got[0, 0] = 99.0  # copy-on-write: the file keeps its values
    np.testing.assert_array_equal(np.load(data), np.arange(12).reshape(3, 4))
    assert store.discarded == [] and FeatureStore(tmp_path / "none").load("k", (3, 4), "float32") is None


def _garble(how, data, meta):
    info = json.loads(meta.read_text())
    if how == "another key":
        meta.write_text(json.dumps({**info, "key": "other"}))
    elif how == "metadata of another shape":
        meta.write_text(json.dumps({**info, "shape": [4, 3]}))  # the file itself still holds [3, 4]
    elif how == "not a mapping":
        meta.write_text("[1, 2]")
    elif how == "longer":
        data.write_bytes(data.read_bytes() + b"\0")
    elif how == "one byte flipped":
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 1
        data.write_bytes(bytes(raw))
    elif how == "no data file":
        data.unlink()
    elif how == "no metadata file":  # killed between publishing the data and its metadata
        meta.unlink()
    elif how == "broken metadata":
        meta.write_text("{")
    elif how in ("header [4, 3]", "fortran order"):
        # a well-formed entry whose metadata vouches for a file holding another array
        arr = np.zeros((4, 3), np.float32) if how == "header [4, 3]" else np.asfortranarray(np.zeros((3, 4), "<f4"))
        np.save(data, arr)
        raw = data.read_bytes()
        meta.write_text(json.dumps({**info, "nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}))


@pytest.mark.parametrize("how, why", [
    ("another key", "belongs to another key"),
    ("not a mapping", "belongs to another key"),
    ("metadata of another shape", "has another shape or dtype"),
    ("longer", "has the wrong size"),
    ("one byte flipped", "failed its checksum (garbled on disk)"),
    ("no data file", "is incomplete"),
    ("no metadata file", "is incomplete"),
    ("broken metadata", "is unreadable (JSONDecodeError)"),
    ("header [4, 3]", "has another shape or dtype"),
    ("fortran order", "has another shape or dtype"),
])
def test_a_bad_entry_is_reported_and_deleted_only_when_discarding(tmp_path, how, why):
    store, data, meta = _entry(tmp_path)
    _garble(how, data, meta)
    there = sorted(p.name for p in tmp_path.iterdir())
    assert store.load("k", (3, 4), "float32", discard=False) is None
    assert store.discarded == [] and sorted(p.name for p in tmp_path.iterdir()) == there
    assert store.load("k", (3, 4), "float32") is None
    assert store.discarded == [f"feature store {tmp_path}: entry {data.name} {why}; recomputing it"]
    assert not data.exists() and not meta.exists()


def test_no_entry_at_all_is_no_news_and_a_one_value_entry_reads_its_value(tmp_path):
    store = FeatureStore(tmp_path)
    assert store.load("k", (3, 4), "float32") is None and store.discarded == [] and list(tmp_path.iterdir()) == []
    with store.writer("one", (1, 1), "float32") as arr:
        arr[:] = 7.5
    np.testing.assert_array_equal(store.load("one", (1, 1), "float32"), [[7.5]])


def test_a_shape_or_dtype_other_than_the_metadatas_is_reported(tmp_path):
    for shape, dtype in (((3, 5), "float32"), ((3, 4), "float16")):
        store, data, _ = _entry(tmp_path)
        assert store.load("k", shape, dtype) is None
        assert store.discarded == [f"feature store {tmp_path}: entry {data.name} has another shape or dtype; "
                                   "recomputing it"]


def test_a_version_2_header_and_an_empty_entry_are_read(tmp_path):
    store, data, meta = _entry(tmp_path)
    with open(data, "wb") as f:
        np.lib.format.write_array(f, np.full((3, 4), 2.5, np.float32), version=(2, 0))
    raw = data.read_bytes()
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}))
    np.testing.assert_array_equal(store.load("k", (3, 4), "float32"), np.full((3, 4), 2.5))

    with store.writer("empty", (0, 4), "float16") as arr:
        assert arr.shape == (0, 4) and arr.dtype == np.float16
    got = store.load("empty", (0, 4), "float16")
    assert got.shape == (0, 4) and got.dtype == np.float16 and store.discarded == []
    # nothing else is left behind (np.save once wrote a stray "<temporary>.npy" beside the entry)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for key in ("k", "empty") for p in store.paths(key))


def test_file_sha256_reads_a_path_or_an_open_file_from_its_start(tmp_path):
    from lamm_cl.safe_io import file_sha256

    path = tmp_path / "f"
    path.write_bytes(b"some bytes" * 100)
    want = hashlib.sha256(b"some bytes" * 100).hexdigest()
    assert file_sha256(path) == file_sha256(str(path)) == want
    with open(path, "rb") as f:
        f.read(7)
        assert file_sha256(f) == want
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_store_errors_name_the_folder_and_what_to_do(tmp_path):
    import errno

    from lamm_cl.errors import UserError

    store = FeatureStore(tmp_path / "s")
    full = store._unwritable(OSError(errno.ENOSPC, "No space left on device"), " for a 1.5 MiB entry")
    assert str(full) == (f"feature store {tmp_path / 's'}: no space left for a 1.5 MiB entry (No space left on "
                         "device); free space there, set features.cache_dir to another folder, or set "
                         "features.cache: false")
    assert "no space left (Disk quota exceeded)" in str(store._unwritable(OSError(errno.EDQUOT, "Disk quota exceeded")))
    assert str(store._unwritable(OSError(errno.EROFS, "Read-only file system"))) == (
        f"feature store {tmp_path / 's'}: cannot write there (Read-only file system); set features.cache_dir to a "
        "writable folder, or set features.cache: false")
    assert "cannot write there (plain)" in str(store._unwritable(OSError("plain")))

    (tmp_path / "file").write_text("")
    FeatureStore(tmp_path / "new" / "deeper").check()  # folders still to be made are fine
    for root in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(UserError) as e:
            FeatureStore(root).check()
        assert str(e.value) == (f"features.cache_dir: {root} cannot be a folder because {tmp_path / 'file'} is a "
                                "file; set features.cache_dir to a folder")


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    import fcntl
    import os

    store, data, _ = _entry(tmp_path)
    dead = data.with_name(f".{data.name}.1.aaaa.tmp")
    live = tmp_path / ("." + "f" * 40 + ".npy.2.bbbb.tmp")
    new = data.with_name(f".{data.name}.3.cccc.tmp")
    for p in (dead, live):
        p.write_bytes(b"x")
        os.utime(p, (1000, 1000))
    new.write_bytes(b"x")
    edge = data.with_name(f".{data.name}.4.dddd.tmp")
    edge.write_bytes(b"x")
    os.utime(edge, (2000, 2000))  # written at the run's start exactly: possibly the run's own, kept
    fd = os.open(tmp_path / ("f" * 40 + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer of that entry is at work
    try:
        assert store.sweep_temporaries(before=2000) == [dead]
    finally:
        os.close(fd)
    assert live.exists() and new.exists() and data.exists() and edge.exists()
    assert sorted(store.sweep_temporaries()) == sorted([live, new, edge])
    umask = os.umask(0)
    os.umask(umask)
    orphan = tmp_path / ("." + "e" * 40 + ".npy.5.eeee.tmp")  # its lock file does not exist yet: the sweep makes it
    orphan.write_bytes(b"x")
    os.utime(orphan, (1000, 1000))
    assert store.sweep_temporaries(before=2000) == [orphan]
    assert (tmp_path / ("e" * 40 + ".lock")).stat().st_mode & 0o777 == 0o666 & ~umask  # not executable
    assert FeatureStore(tmp_path / "absent").sweep_temporaries() == []



@pytest.mark.parametrize("code", ["EINVAL", "EOPNOTSUPP"])
def test_without_fallocate_the_entrys_blocks_are_written_as_zeros_and_synced(tmp_path, monkeypatch, code):
    import errno
    import os

    import lamm_cl.features.store as store_module

    def refuse(fd, offset, n):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(store_module.os, "posix_fallocate", refuse)
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "x.npy"
    arr = FeatureStore(tmp_path)._allocate(path, (3, 5), np.dtype("float32"))
    assert path.stat().st_size == entry_bytes(3, 5) and len(synced) == 1
    assert isinstance(arr, np.memmap) and arr.shape == (3, 5) and arr.dtype == np.float32 and not arr.any()
    arr[:] = 2.0
    arr.flush()
    np.testing.assert_array_equal(np.load(path), np.full((3, 5), 2.0, np.float32))
    assert FeatureStore(tmp_path)._allocate(tmp_path / "empty.npy", (0, 5), np.dtype("float16")).shape == (0, 5)


def test_a_store_folder_is_made_with_its_parents_and_an_unmakeable_one_is_one_line(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from lamm_cl.errors import UserError

    store, data, _ = _entry(tmp_path / "a" / "b" / "c")
    assert data.parent == tmp_path / "a" / "b" / "c" and store.load("k", (3, 4), "float32") is not None

    def refuse(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(UserError) as e:
        with FeatureStore(tmp_path / "ro").writer("k", (1, 1), "float32"):
            pass
    assert str(e.value) == (f"feature store {tmp_path / 'ro'}: cannot write there (Read-only file system); set "
                            "features.cache_dir to a writable folder, or set features.cache: false")


def test_a_full_disk_at_allocation_is_one_line_naming_the_entrys_size_and_leaves_no_file(tmp_path, monkeypatch):
    import errno

    import lamm_cl.features.store as store_module
    from lamm_cl.errors import UserError

    def full(fd, offset, n):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "posix_fallocate", full)
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(UserError) as e:
        with store.writer("k", (1000, 256), "float32"):
            raise AssertionError("the writer must fail before it yields")
    assert str(e.value) == (f"feature store {tmp_path / 's'}: no space left for a 1.0 MiB entry (No space left on "
                            "device); free space there, set features.cache_dir to another folder, or set "
                            "features.cache: false")
    assert sorted(p.suffix for p in (tmp_path / "s").iterdir()) == []


# ---------------------------------------------------------------------------
# the extractor's key, defaults and small helpers
# ---------------------------------------------------------------------------

def test_the_key_names_every_input_of_the_features(tiny_clip, samples):
    import open_clip

    from lamm_cl.features import STORE_FORMAT, transform_identity

    ext = _extractor(tiny_clip, None)
    d = tiny_clip.embed_dim
    versions = f" (open_clip {open_clip.__version__}, torch {torch.__version__.split('+')[0]})"
    assert ext.key(samples).split("\n") == [
        STORE_FORMAT, "arch: lamm-tiny", f"weights: {tiny_clip.identity}{versions}",
        f"images: {samples.identity} (n=24)", f"transform: {transform_identity(tiny_clip.preprocess)}",
        "view: center", f"dim: {d}", "dtype: float32", "encoder: fp32"]  # model.precision's arithmetic (CPU)
    assert STORE_FORMAT == "lamm-cl features v2"
    view = ext.key(samples, view=2).split("\n")
    assert view[5] == "view: 2" and view[4] == f"transform: {transform_identity(ext.transform(2))}" != ext.key(
        samples).split("\n")[4]


def test_transform_identity_ignores_addresses_only():
    from lamm_cl.features import transform_identity

    class Named:
        def __init__(self, text):
            self.text = text

        def __repr__(self):
            return self.text

    same = transform_identity(Named("Compose(<function f at 0x7f00aa>)"))
    assert same == transform_identity(Named("Compose(<function f at 0x7f11bb>)"))
    assert same == hashlib.sha1(b"Compose(<function f>)").hexdigest()[:16]
    assert transform_identity(Named("Compose(<function g at 0x7f00aa>)")) != same


def test_extractor_defaults_on_the_cpu(tiny_clip, tmp_path, monkeypatch):
    from lamm_cl.features import autocast, extraction_batch_size

    ext = FeatureExtractor(tiny_clip)
    assert (ext.store, ext.dtype, ext.batch_size, ext.num_workers, ext.log) == (None, "float32", 64, 0, None)
    ext = FeatureExtractor(tiny_clip, cache_dir=tmp_path, dtype="float16", batch_size=5, num_workers=3)
    assert (ext.store.root, ext.dtype, ext.batch_size, ext.num_workers) == (tmp_path, "float16", 5, 3)
    with pytest.raises(ValueError) as e:
        FeatureExtractor(tiny_clip, dtype="float64")
    assert str(e.value) == "feature dtype must be one of float32, float16, got 'float64'"
    assert extraction_batch_size(torch.device("cpu")) == 64
    assert isinstance(autocast(torch.device("cpu")), type(contextlib_null()))
    # on CUDA: 128 images per 8 GiB of device memory, from 128 to 1024
    for gib, size in ((4, 128), (16, 256), (20, 256), (24, 384), (80, 1024)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, g=gib: SimpleNamespace(total_memory=g * 2**30))
        assert extraction_batch_size(torch.device("cuda")) == size
    # the memory of the device asked about, not of the current one
    memory = {torch.device("cuda:0"): 80, torch.device("cuda:1"): 16}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=memory[d] * 2**30))
    assert extraction_batch_size(torch.device("cuda:1")) == 256


def contextlib_null():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.filterwarnings("ignore")
def test_autocast_on_cuda_is_bf16_or_fp16_for_inference_only(monkeypatch):
    from lamm_cl.features import autocast

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    for training in (False, True):
        ctx = autocast(cuda, training=training)
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    ctx = autocast(cuda)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16 and ctx.device == "cuda"
    assert not isinstance(autocast(cuda, training=True), torch.autocast)
    if hasattr(torch, "set_autocast_dtype"):  # torch >= 2.4
        default = torch.get_autocast_dtype("cuda")
        torch.set_autocast_dtype("cuda", torch.bfloat16)  # fp16 is asked for by name: no other default leaks in
        try:
            assert autocast(cuda).fast_dtype == torch.float16
        finally:
            torch.set_autocast_dtype("cuda", default)


def test_discarded_entries_reach_the_log_once(tiny_clip, samples, tmp_path):
    ext = _extractor(tiny_clip, tmp_path)
    good = ext.features(samples).clone()
    data, meta = FeatureStore(tmp_path).paths(ext.key(samples))
    meta.write_text("{")
    told = []
    ext = _extractor(tiny_clip, tmp_path)
    ext.log = told.append
    assert torch.equal(ext.features(samples), good)
    assert told == [f"feature store {tmp_path}: entry {data.name} is unreadable (JSONDecodeError); recomputing it"]
    assert ext.store.discarded == []
    assert ext.features(samples) is ext.features(samples)  # kept in memory after the first read


def test_default_cache_dir_without_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for xdg in ("", None):
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME")
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert default_cache_dir() == tmp_path / ".cache" / "lamm-cl" / "features"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/c")
    assert default_cache_dir() == tmp_path / "c" / "lamm-cl" / "features"


def test_a_view_is_its_seeds_augmentation_and_leaves_the_global_stream_alone(tiny_clip, samples):
    from lamm_cl.features import AugmentedView, ViewReader, view_seed

    augment = AugmentedView.for_clip(tiny_clip)
    norm = tiny_clip.preprocess.transforms[-1]
    assert (augment.tail.transforms[-1].mean, augment.tail.transforms[-1].std) == (norm.mean, norm.std)
    assert augment.crop.size == (tiny_clip.image_size, tiny_clip.image_size) and augment.crop.scale == (0.08, 1.0)
    assert view_seed(2, 5) == int(np.random.SeedSequence([2, 5]).generate_state(1)[0])
    assert len({view_seed(0, 1), view_seed(1, 0), view_seed(1, 1)}) == 3
    reader = ViewReader(samples, augment, view=2)
    torch.manual_seed(0)
    got = reader[5]
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.rand(1) == after  # the draw did not move the caller's stream
    torch.manual_seed(view_seed(2, 5))
    want = augment.tail(augment.flip(augment.crop(samples.image(5))))
    assert torch.equal(got, want) and len(reader) == 24
    assert augment.crop.interpolation == T.InterpolationMode.BICUBIC  # CoOp's RRCROP with bicubic
    assert AugmentedView(8, (0.5,), (0.5,), scale=(0.5, 1.0)).crop.scale == (0.5, 1.0)
    for preprocess in (T.Compose([T.ToTensor()]), lambda image: image):  # no Normalize; not even a Compose
        with pytest.raises(ValueError, match=r"^the model's preprocessing has no Normalize step to copy for "
                                             r"augmented views$"):
            AugmentedView.for_clip(SimpleNamespace(preprocess=preprocess, image_size=8))


def test_an_undecodable_image_is_handed_on_as_its_message():
    from lamm_cl.features.extractor import _collate_checked

    assert _collate_checked([torch.ones(2), "cannot read x.png", "cannot read y.png"]) == "cannot read x.png"
    torch.testing.assert_close(_collate_checked([torch.ones(2), torch.zeros(2)]), torch.tensor([[1.0, 1], [0, 0]]))


def test_an_image_that_cannot_be_decoded_reaches_the_user_as_its_own_message(tiny_clip, samples):
    from lamm_cl.data.base import ImageError
    from lamm_cl.features.extractor import _Checked

    class Broken:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            if i == 1:
                raise ImageError("cannot read b.png: truncated")
            return torch.zeros(2)

    assert _Checked(Broken())[1] == "cannot read b.png: truncated" and torch.equal(_Checked(Broken())[0], torch.zeros(2))
    ext = FeatureExtractor(tiny_clip, batch_size=4)
    real = samples.image
    samples.image = lambda i: (_ for _ in ()).throw(ImageError(f"cannot read {i}.png: truncated")) if i == 5 else real(i)
    with pytest.raises(ImageError, match=r"^cannot read 5\.png: truncated$"):
        ext.features(samples)


def test_progress_is_told_the_batches_and_the_label(tiny_clip, samples, tmp_path):
    told = []

    def progress(batches, total, desc):
        told.append((total, desc))
        return batches

    ext = FeatureExtractor(tiny_clip, batch_size=10, progress=progress)
    assert ext.features(samples).dtype == torch.float32  # 24 images: batches of 10, 10 and 4
    ext.features(samples, view=0, desc="view 0")
    FeatureExtractor(tiny_clip, cache_dir=tmp_path, batch_size=10, progress=progress).features(samples, desc="stored")
    assert told == [(3, "features"), (3, "view 0"), (3, "stored")]
    assert FeatureExtractor(tiny_clip, dtype="float16").features(samples).dtype == torch.float16  # no store either


def test_a_valid_entry_is_read_without_the_lock(tiny_clip, samples, tmp_path):
    # several jobs read a shared (even read-only) store at once: only a missing or bad entry takes the lock
    good = _extractor(tiny_clip, tmp_path).features(samples)
    ext = _extractor(tiny_clip, tmp_path)

    def no_lock(key):
        raise AssertionError("a valid entry was read under the lock")

    ext.store.locked = no_lock
    assert torch.equal(ext.features(samples), good)


def test_under_the_lock_the_entry_is_checked_again_and_only_there_deleted(tiny_clip, samples, calls, tmp_path):
    import contextlib

    good = _extractor(tiny_clip, tmp_path).features(samples).clone()
    ext = _extractor(tiny_clip, tmp_path)
    data, meta = ext.store.paths(ext.key(samples))
    meta.write_text("{")  # a bad entry: another job may be publishing it right now, so no deleting without the lock
    real, seen = ext.store.locked, []

    @contextlib.contextmanager
    def locked(key):
        seen.append(data.exists() and meta.exists())
        with real(key):
            yield

    ext.store.locked = locked
    calls.clear()
    assert torch.equal(ext.features(samples), good) and seen == [True] and sum(calls) == len(samples)

    # no entry yet; another job publishes it while this one waits for the lock: it is read, not recomputed
    data.unlink()
    meta.unlink()
    ext = _extractor(tiny_clip, tmp_path)
    real = ext.store.locked

    @contextlib.contextmanager
    def locked_after_another_job(key):
        _extractor(tiny_clip, tmp_path).features(samples)
        with real(key):
            yield

    ext.store.locked = locked_after_another_job
    calls.clear()
    assert torch.equal(ext.features(samples), good)
    assert sum(calls) == len(samples) and ext.store.discarded == []  # the other job's encoding only


def test_an_entry_that_vanishes_after_writing_is_an_error_naming_the_store(tiny_clip, samples, tmp_path):
    ext = _extractor(tiny_clip, tmp_path)
    ext.store.load = lambda *args, **kwargs: None  # a folder that loses files as they are written
    with pytest.raises(OSError) as e:
        ext.features(samples)
    assert str(e.value) == f"feature store {tmp_path}: an entry vanished right after it was written"


def test_autocast_plugin_opens_the_context_for_the_forward_and_closes_it_once(monkeypatch):
    """Forward and loss run inside autocast; backward outside; a skipped backward still closes it, once."""
    from lamm_cl.features import AutocastPlugin, precision

    log = []

    class Recorder:
        def __init__(self, device, training):
            log.append(("make", device.type, training))

        def __enter__(self):
            log.append("enter")

        def __exit__(self, *exc):
            log.append(("exit", exc))

    monkeypatch.setattr(precision, "autocast", Recorder)
    plugin = AutocastPlugin(torch.device("cuda"))
    assert plugin.device == torch.device("cuda")
    plugin.before_backward(None)  # nothing opened yet: nothing to close
    plugin.after_training_iteration(None)
    assert log == []
    plugin.before_forward(None)
    assert log == [("make", "cuda", True), "enter"]
    plugin.before_backward(None)
    assert log[2:] == [("exit", (None, None, None))]
    plugin.after_training_iteration(None)  # already closed: nothing more
    assert len(log) == 3
    plugin.before_forward(None)  # an iteration whose backward a plugin skipped
    plugin.after_training_iteration(None)
    assert log[3:] == [("make", "cuda", True), "enter", ("exit", (None, None, None))]
    plugin.after_training_iteration(None)
    assert len(log) == 6
