"""The label table grows per experience; new rows train; old rows stay bit-identical."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lamm_cl import config
from lamm_cl.benchmark import make_plan, make_streams
from lamm_cl.features import FeatureExtractor
from lamm_cl.model.labels import LabelTable, label_token_counts
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.registry import get_strategy
from lamm_cl.runner.execute import seed_everything
from lamm_cl.runner.inputs import Inputs
from lamm_cl.strategy_kit.context import StrategyContext


def _cfg(**lamm):
    return config.parse({
        "name": "t", "device": "cpu",
        "benchmark": {"dataset": "digits", "n_experiences": 3, "class_order": [0, 1, 2, 3, 4, 5]},
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "strategies": [{"name": "lamm", "epochs": 2, "lr": 0.5, **lamm}],
    })


@pytest.fixture(scope="module")
def digit_inputs(digits, tiny_clip, feature_store):
    """The digits' image features for the module's two training tests, from the session's store (frozen
    CLIP: the same features every time; encoded here only if no earlier test of this worker did)."""
    return Inputs(digits, tiny_clip, FeatureExtractor(tiny_clip, cache_dir=feature_store))


def test_label_token_counts(tiny_clip):
    prompts = ClassPrompts(tiny_clip, ["zero", "aquarium fish", "sweet pepper plant"], "a photo of a {}.")
    # CLIP's BPE has one piece for each of these words: "zero" 5848; "aquarium" 16814, "fish" 2759;
    # "sweet" 2418, "pepper" 8253, "plant" 3912
    assert prompts.name_ids == [[5848], [16814, 2759], [2418, 8253, 3912]]
    assert label_token_counts(prompts, "all") == [1, 2, 3]
    assert label_token_counts(prompts, "min") == [1, 1, 1]
    assert label_token_counts(prompts, 2) == [1, 2, 2]
    assert label_token_counts(prompts, 5) == [1, 2, 3]
    with pytest.raises(ValueError):
        label_token_counts(prompts, 0)


def test_name_init_copies_the_name_embeddings(tiny_clip):
    prompts = ClassPrompts(tiny_clip, ["zero", "aquarium fish"], "a photo of a {}.")
    words = tiny_clip.model.token_embedding.weight
    table = LabelTable(words, prompts, "all", "name")
    table.add_classes([1, 0])
    ids = torch.tensor(prompts.name_ids[1])
    assert torch.equal(table.vectors["1"].detach(), words[ids])
    assert torch.equal(table.original(1), words[ids])
    rand = LabelTable(words, prompts, "all", "random")
    torch.manual_seed(0)
    rand.add_classes([0, 1])
    assert not torch.equal(rand.vectors["1"].detach(), words[ids])
    assert float(rand.vectors["1"].detach().std()) == pytest.approx(0.02, rel=0.6)


def test_old_label_vectors_are_bit_identical_after_later_experiences(tiny_clip, digits, digit_inputs):
    cfg = _cfg()
    plan = make_plan(digits, cfg.benchmark, seed=0)
    inputs = digit_inputs
    seed_everything(0)
    ctx = StrategyContext(clip=tiny_clip, class_names=plan.class_names, template=plan.template,
                          device=torch.device("cpu"), seed=0)
    scenario = make_streams(plan, inputs.reader("features", "train"), inputs.reader("features", "test"),
                            digits.train.labels, digits.test.labels)
    template = get_strategy("lamm").build(ctx, cfg.strategies[0].options)
    table = template.model.labels

    exp = scenario.train_stream
    assert table.classes == [] and len(table.vectors) == 0  # nothing before the first experience
    template.train(exp[0])
    assert sorted(table.classes) == [0, 1] and table.trainable == [0, 1]
    after0 = {c: table.vectors[str(c)].detach().clone() for c in (0, 1)}
    init0 = {c: table.original(c).clone() for c in (0, 1)}
    assert any(not torch.equal(after0[c], init0[c]) for c in (0, 1)), "the first classes' vectors did not train"

    template.train(exp[1])
    assert sorted(table.classes) == [0, 1, 2, 3] and table.trainable == [2, 3]
    assert all(not table.vectors[str(c)].requires_grad for c in (0, 1))
    assert any(not torch.equal(table.vectors[str(c)].detach(), table.original(c)) for c in (2, 3))
    template.train(exp[2])
    template.eval(scenario.test_stream[0])  # evaluation must not grow or unfreeze anything
    assert sorted(table.classes) == list(range(6)) and table.trainable == [4, 5]
    for c in (0, 1):
        assert torch.equal(table.vectors[str(c)].detach(), after0[c])


def test_old_class_text_features_are_cached_and_equal_fresh_ones(tiny_clip, digits, digit_inputs):
    cfg = _cfg()
    plan = make_plan(digits, cfg.benchmark, seed=0)
    inputs = digit_inputs
    ctx = StrategyContext(clip=tiny_clip, class_names=plan.class_names, template=plan.template,
                          device=torch.device("cpu"), seed=0)
    scenario = make_streams(plan, inputs.reader("features", "train"), inputs.reader("features", "test"),
                            digits.train.labels, digits.test.labels)
    template = get_strategy("lamm").build(ctx, cfg.strategies[0].options)
    template.train(scenario.train_stream[0])
    template.train(scenario.train_stream[1])
    model = template.model
    model.train()
    model.zero_grad(set_to_none=True)  # training leaves the last step's gradients behind
    t = model.text_features()
    assert model._cached == [0, 1]  # the old classes are served from the cache
    fresh = torch.nn.functional.normalize(model.encode([0, 1]), dim=-1)
    assert torch.allclose(t[:2], fresh, atol=1e-6)
    t[:2].sum().backward(retain_graph=True)  # old rows come from the cache: no gradient reaches the table
    table = model.labels
    assert all(table.vectors[str(c)].grad is None or not table.vectors[str(c)].grad.any() for c in (2, 3))
    t[2:].sum().backward()
    assert all(float(table.vectors[str(c)].grad.abs().sum()) > 0 for c in (2, 3))
    np.testing.assert_array_equal(sorted(model.classes), [0, 1, 2, 3])


# ----------------------------------------------------------------------------- k per class, growth, anchors


NAMES = ["zero", "aquarium fish", "sweet pepper plant"]  # 1, 2 and 3 BPE pieces (test_label_token_counts)


def test_label_tokens_per_experience_and_bad_values(tiny_clip):
    prompts = ClassPrompts(tiny_clip, NAMES, "a photo of a {}.")
    assert label_token_counts(prompts, "min_experience", [[0], [2, 1]]) == [1, 2, 2]
    assert label_token_counts(prompts, "min_experience", [[], [2], [0, 1]]) == [1, 1, 3]
    assert label_token_counts(prompts, 1) == [1, 1, 1]
    with pytest.raises(ValueError) as e:
        label_token_counts(prompts, "min_experience")
    assert str(e.value) == "label_tokens 'min_experience' needs the classes of each experience"
    with pytest.raises(ValueError) as e:
        label_token_counts(prompts, "min_experience", [[0], [2]])
    assert str(e.value) == "label_tokens 'min_experience': some classes belong to no experience"
    for bad in (0, True, "max"):
        with pytest.raises(ValueError) as e:
            label_token_counts(prompts, bad)
        assert str(e.value) == f"label_tokens must be 'min', 'min_experience', 'all' or a positive int, got {bad!r}"


def test_a_table_grows_freezes_and_keeps_k_of_each_class(tiny_clip):
    prompts = ClassPrompts(tiny_clip, NAMES, "a photo of a {}.")
    words = tiny_clip.model.token_embedding.weight
    with pytest.raises(ValueError) as e:
        LabelTable(words, prompts, "min", "zeros")
    assert str(e.value) == "label_init must be 'name' or 'random', got 'zeros'"
    table = LabelTable(words, prompts, "min_experience")
    assert table.k == [None, None, None] and table.classes == [] and table.trainable == []
    table.add_classes([2, 1])
    assert table.k == [None, 2, 2] and table.classes == [1, 2] and table.trainable == [1, 2]
    assert [tuple(table.vectors[c].shape) for c in ("1", "2")] == [(2, tiny_clip.token_width)] * 2
    assert torch.equal(table.original(2), words[torch.tensor(prompts.name_ids[2][:2])])
    table.add_classes([0, 2])  # 2 is there already: it stays, frozen
    assert table.k == [1, 2, 2] and table.classes == [1, 2, 0] and table.trainable == [0]
    assert [table.vectors[c].requires_grad for c in ("0", "1", "2")] == [True, False, False]
    assert table.as_mapping([0, 2]) == {0: table.vectors["0"], 2: table.vectors["2"]}
    assert table.originals([1]) == {1: table.original(1)}
    assert sorted(table.state_dict()) == ["m0_0", "m0_1", "m0_2", "vectors.0", "vectors.1", "vectors.2"]
    # evaluation on known classes changes nothing; a new class grows the table
    table.adaptation(SimpleNamespace(classes_in_this_experience=[1, 2]))
    assert table.trainable == [0] and table.vectors["0"].requires_grad
    with pytest.raises(TypeError) as e:
        table()
    assert str(e.value) == "LabelTable is read through as_mapping(); it has no forward"
    # the defaults are LAMM's: label_tokens "min" (k = the shortest name's length) and the name's embeddings
    plain = LabelTable(words, prompts)
    assert plain.label_tokens == "min" and plain.k == label_token_counts(prompts, "min")
    assert plain.label_init == "name"


def test_the_anchor_is_the_name_or_the_random_start(tiny_clip):
    prompts = ClassPrompts(tiny_clip, NAMES, "a photo of a {}.")
    words = tiny_clip.model.token_embedding.weight
    named = LabelTable(words, prompts, "all", "name")
    named.adaptation(SimpleNamespace(classes_in_this_experience=[0, 1]))
    assert named.anchor(1) is named.original(1) and named.trainable == [0, 1]
    torch.manual_seed(0)
    rand = LabelTable(words, prompts, "all", "random")
    rand.add_classes([1])
    start = rand.vectors["1"].detach().clone()
    assert torch.equal(rand.anchor(1), start) and not torch.equal(rand.anchor(1), rand.original(1))
    with torch.no_grad():
        rand.vectors["1"].add_(1.0)  # training moves the vectors, not their anchor
    assert torch.equal(rand.anchor(1), start)
    assert sorted(rand.state_dict()) == ["m0_1", "start_1", "vectors.1"]
