"""The frozen-feature store, training views, and the cached / cut text side (DESIGN section 7).

Tiny random-weight CLIP and a few embedded digits only; nothing here is timed
(``python -m lamm_cl.bench speed`` measures the speed).
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
from lamm_cl.runner import Inputs
from lamm_cl.strategies.lamm import LammOptions, lamm_model, lamm_objective
from lamm_cl.training import StrategyContext


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


def _adapt(model, classes):
    from avalanche.models.utils import avalanche_model_adaptation

    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=list(classes)))


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
    assert entry_bytes(10_000, 512, "float32") == 10_000 * 512 * 4 + 128


def test_features_config_picks_the_store(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lamm-cl" / "features"
    assert FeatureExtractor.from_config(tiny_clip, FeaturesConfig()).store.root == default_cache_dir()
    assert FeatureExtractor.from_config(tiny_clip, FeaturesConfig(cache_dir=str(tmp_path))).store.root == tmp_path
    assert FeatureExtractor.from_config(tiny_clip, FeaturesConfig(cache=False)).store is None


# ---------------------------------------------------------------------------
# training views
# ---------------------------------------------------------------------------

def test_draw_view_visits_every_view_reproducibly():
    seq = [draw_view(7, 0, e, 4) for e in range(8)]
    assert seq == [draw_view(7, 0, e, 4) for e in range(8)]
    assert sorted(seq[:4]) == [0, 1, 2, 3] and sorted(seq[4:]) == [0, 1, 2, 3]
    assert all(a != b for a, b in zip(seq[:3], seq[1:4]))
    assert [draw_view(8, 0, e, 4) for e in range(8)] != seq or [draw_view(7, 1, e, 4) for e in range(8)] != seq
    assert draw_view(0, 0, 5, 1) == 0


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
    _adapt(model, [0, 1, 2])
    _adapt(model, [3, 4])
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
    _adapt(model, [0, 1, 2])
    with torch.no_grad():  # as if experience 0 had trained them
        for c in (0, 1, 2):
            model.labels.vectors[str(c)].add_(0.05 * torch.randn_like(model.labels.vectors[str(c)]))
    _adapt(model, [3, 4])
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
        fresh = normalize(real([0, 1, 2], labels=model.labels.as_mapping([0, 1, 2])))
        fresh0 = normalize(real([0, 1, 2, 3], labels=model.labels.originals([0, 1, 2, 3])))
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


def test_speed_bench_runs_and_its_two_steps_agree(tiny_clip):
    # a smoke test of `python -m lamm_cl.bench speed` on the tiny model; the timing itself is not checked
    from lamm_cl.bench import speed

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
