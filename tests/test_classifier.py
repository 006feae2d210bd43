"""PromptClassifier: class order, the frozen-feature cache, t0, logits (lamm_cl.model.classifier)."""
import types

import pytest
import torch

from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.labels import LabelTable
from lamm_cl.model.prompts import ClassPrompts

NAMES = ["red", "blue", "green"]


def _experience(*classes):
    return types.SimpleNamespace(classes_in_this_experience=list(classes))


def _plain(clip, classes):
    """Normalised text features of the plain prompts: what every class starts as."""
    return torch.nn.functional.normalize(clip.encode_text([f"a photo of a {NAMES[c]}." for c in classes]), dim=-1)


@pytest.fixture
def lamm_classifier(tiny_clip):
    prompts = ClassPrompts(tiny_clip, NAMES, "a photo of a {}.")
    table = LabelTable(tiny_clip.model.token_embedding.weight, prompts, "min")
    return PromptClassifier(tiny_clip, prompts, labels=table)


def _grow(clf, *classes):
    clf.labels.adaptation(_experience(*classes))
    clf.adaptation(_experience(*classes))


def test_classes_join_in_sorted_order_once(lamm_classifier):
    clf = lamm_classifier
    assert clf.text_features().shape == (0, 64)  # no class yet: no rows, before and after invalidate()
    clf.invalidate()
    assert clf.text_features().shape == (0, 64)
    _grow(clf, 2, 0)
    _grow(clf, 0, 1)  # 0 is known: only 1 joins
    assert clf.classes == [0, 2, 1]
    assert clf.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    assert clf.clip is clf.encoder.clip
    assert not any(name.startswith("_clip") for name, _ in clf.named_modules())  # CLIP is not a submodule


def test_evaluation_serves_every_class_from_the_cache_without_gradients(tiny_clip, lamm_classifier):
    clf = lamm_classifier
    _grow(clf, 0, 1)
    clf.eval()
    t = clf.text_features()
    assert not t.requires_grad and clf._cached == [0, 1]
    assert torch.allclose(t, _plain(tiny_clip, [0, 1]), rtol=1e-5, atol=1e-5)
    assert clf.text_features() is t  # encoded once


def test_training_encodes_only_the_trainable_classes_with_gradients(tiny_clip, lamm_classifier):
    clf = lamm_classifier
    _grow(clf, 0, 1)
    clf.train()
    t = clf.text_features()
    assert t.requires_grad and clf._cached == []
    # the table grows and freezes 0 and 1 without the classifier being told (no invalidate):
    # the cache must still follow the frozen set
    clf.labels.add_classes([2])
    clf.classes.append(2)
    t = clf.text_features()
    assert clf._cached == [0, 1] and t.shape == (3, 64)
    assert torch.allclose(t.detach(), _plain(tiny_clip, [0, 1, 2]), rtol=1e-5, atol=1e-5)
    t[:2].sum().backward(retain_graph=True)
    assert not clf.labels.vectors["2"].grad.any()  # the old rows come from the cache
    t[2].sum().backward()
    assert clf.labels.vectors["2"].grad.abs().sum() > 0


def test_a_classifier_with_nothing_trainable_trains_nothing(tiny_clip):
    prompts = ClassPrompts(tiny_clip, NAMES, "a photo of a {}.")
    for context in (None, torch.nn.Parameter(torch.zeros(4, 64), requires_grad=False)):
        clf = PromptClassifier(tiny_clip, prompts, context=context)
        clf.adaptation(_experience(0, 1, 2))
        clf.train()
        t = clf.text_features()
        assert not t.requires_grad and clf._cached == [0, 1, 2]
    assert clf.encode([]).shape == (0, 64)


def test_t0_uses_the_names_even_after_the_label_vectors_moved(tiny_clip, lamm_classifier):
    clf = lamm_classifier
    _grow(clf, 0, 1)
    with torch.no_grad():
        clf.labels.vectors["1"].add_(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)))
    t0 = clf.original_text_features([1, 0])
    assert torch.allclose(t0, _plain(tiny_clip, [1, 0]), rtol=1e-5, atol=1e-5)
    moved = torch.nn.functional.normalize(clf.encode([1]), dim=-1)
    assert not torch.allclose(moved, t0[:1], atol=1e-3)


def test_forward_is_alpha_times_cosine_over_the_known_classes(tiny_clip, lamm_classifier):
    clf = lamm_classifier
    _grow(clf, 1, 2)
    clf.eval()
    x = torch.tensor([[1.0] * 64, [0.0] * 63 + [2.0]], dtype=torch.float64)  # any dtype comes in as t's
    logits = clf(x)
    t = _plain(tiny_clip, [1, 2])
    want = (1 / 0.07) * torch.nn.functional.normalize(x.float(), dim=-1) @ t.t()
    assert logits.dtype == torch.float32 and torch.allclose(logits, want, rtol=1e-5, atol=1e-4)
    assert clf.last_text is clf.text_features()
