"""MaPLe and MaPLe+LAMM: where the deep prompts enter open_clip's towers, what trains, the reference
layout, and both strategies end to end through the runner on the tiny random-weight CLIP."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch

from lamm_cl import config
from lamm_cl.benchmark import dry_run
from lamm_cl.errors import ConfigError
from lamm_cl.features import AugmentedView
from lamm_cl.model.clip import FrozenCLIP
from lamm_cl.model.deep_prompts import MapleClassifier, encode_image_deep
from lamm_cl.registry import get_strategy
from lamm_cl.strategies.maple_lamm import MapleLammOptions, maple_lamm_model
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.prompt_learning import MapleOptions, maple_prompts

from builders import run_capturing

NAMES = ["cat", "golden retriever", "car"]


def context_of(clip, names=NAMES) -> StrategyContext:
    return StrategyContext(clip=clip, class_names=list(names), template="a photo of a {}.",
                           device=torch.device("cpu"), seed=0)


def maple_model(clip, **opts) -> MapleClassifier:
    torch.manual_seed(0)
    prompts, learner = maple_prompts(context_of(clip), MapleOptions(**opts))
    model = MapleClassifier(clip, prompts, learner)
    model.classes = list(range(len(NAMES)))
    return model


@pytest.fixture(scope="module")
def deep_clip():
    """A 3-block CLIP whose towers differ in width (text 32, vision 48), so that couplings change width
    and a depth-2 prompt stops before the last block."""
    torch.manual_seed(1)
    model = open_clip.model.CLIP(
        embed_dim=24,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=3, width=48, head_width=16, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=3))
    return FrozenCLIP(model, None, open_clip.get_tokenizer("ViT-B-32"), "test-3-blocks", "none", torch.device("cpu"))


def images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the towers


def test_text_tower_at_depth_1_is_clip_on_the_prompt_words(tiny_clip):
    # the context starts as the embeddings of "a photo": with no deeper prompt, the text tower must give
    # exactly CLIP's own features of the written prompt
    model = maple_model(tiny_clip, prompt_depth=1)
    model.shared_prefix = False  # every prompt whole, as CLIP runs it
    with torch.no_grad():
        t = model.encode_text([0, 1, 2])
    expect = tiny_clip.encode_text([f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(t, expect, rtol=0, atol=1e-6)
    model.shared_prefix = True  # the prefix once (lamm_cl.model.shared_prefix): float rounding apart
    with torch.no_grad():
        t = model.encode_text([0, 1, 2])
    torch.testing.assert_close(t, expect, rtol=0, atol=1e-5 * float(expect.abs().max()))


def test_image_tower_without_prompts_is_clip(tiny_clip, deep_clip):
    for clip in (tiny_clip, deep_clip):
        x = images()
        with torch.no_grad():
            torch.testing.assert_close(encode_image_deep(clip, x, []), clip.encode_images(x), rtol=0, atol=1e-6)


class BlockInputs:
    """Records the input and output of every block of a transformer."""

    def __init__(self, transformer):
        self.inputs, self.outputs = {}, {}
        self.handles = []
        for i, block in enumerate(transformer.resblocks):
            self.handles.append(block.register_forward_pre_hook(
                lambda m, args, kw, i=i: self.inputs.__setitem__(i, (args[0] if args else kw["q_x"]).detach()),
                with_kwargs=True))
            self.handles.append(block.register_forward_hook(
                lambda m, args, out, i=i: self.outputs.__setitem__(i, out.detach())))

    def remove(self):
        for h in self.handles:
            h.remove()


def test_deep_prompts_take_their_positions_at_their_layers(deep_clip):
    model = maple_model(deep_clip, prompt_depth=2)
    model.shared_prefix = False  # the blocks' hooks see whole prompts (the shared path: test_shared_prefix.py)
    learner = model.learner
    n = 2
    text = BlockInputs(deep_clip.model.transformer)
    vision = BlockInputs(deep_clip.model.visual.transformer)
    try:
        with torch.no_grad():
            model.encode_text([0, 1, 2])
            model.image_features(images())
    finally:
        text.remove()
        vision.remove()
    with torch.no_grad():
        pos = deep_clip.model.positional_embedding
        ctx = learner.context
        # text: the context (plus positions) at 1..n going into block 0, layer 1's prompt replacing them before block 1
        torch.testing.assert_close(text.inputs[0][:, 1:1 + n], (ctx + pos[1:1 + n]).expand(3, -1, -1))
        torch.testing.assert_close(text.inputs[1][:, 1:1 + n], learner.text_deep[0].expand(3, -1, -1))
        # the rest of the stream is the previous block's output, untouched
        torch.testing.assert_close(text.inputs[1][:, 1 + n:], text.outputs[0][:, 1 + n:])
        torch.testing.assert_close(text.inputs[1][:, :1], text.outputs[0][:, :1])
        # beyond the depth nothing is replaced
        torch.testing.assert_close(text.inputs[2], text.outputs[1])
        # vision: n tokens appended after class token + 16 patches, coupled from the text prompt of each layer
        v = deep_clip.model.visual
        assert vision.inputs[0].shape == (3, 1 + 16 + n, 48)
        torch.testing.assert_close(vision.inputs[0][:, -n:], v.ln_pre(learner.couplings[0](ctx)).expand(3, -1, -1))
        torch.testing.assert_close(vision.inputs[1][:, -n:], learner.couplings[1](learner.text_deep[0]).expand(3, -1, -1))
        torch.testing.assert_close(vision.inputs[1][:, :-n], vision.outputs[0][:, :-n])
        torch.testing.assert_close(vision.inputs[2], vision.outputs[1])


def test_a_depth_j_prompt_changes_the_output_and_none_exists_beyond_the_depth(deep_clip):
    model = maple_model(deep_clip, prompt_depth=2)
    learner = model.learner
    assert len(learner.text_deep) == 1 and len(learner.couplings) == 2
    x = images()
    with torch.no_grad():
        t, f = model.encode_text([0, 1, 2]), model.image_features(x)
        # a random change: a constant one would vanish in the LayerNorms
        learner.text_deep[0].add_(torch.randn(2, 32, generator=torch.Generator().manual_seed(3)))
        t2, f2 = model.encode_text([0, 1, 2]), model.image_features(x)
    assert (t2 - t).abs().max() > 1e-3 and (f2 - f).abs().max() > 1e-3
    # depth 3 uses every block; depth 4 would need a fourth
    assert len(maple_model(deep_clip, prompt_depth=3).learner.text_deep) == 2
    with pytest.raises(ConfigError, match="prompt_depth: 4 asked.*3 blocks"):
        maple_model(deep_clip, prompt_depth=4)


def test_depth_1_has_only_the_input_context_and_the_first_coupling(tiny_clip):
    model = maple_model(tiny_clip, prompt_depth=1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"learner.context", "learner.couplings.0.weight", "learner.couplings.0.bias"}
    assert model.learner.couplings[0].weight.shape == (64, 64)


def test_couplings_map_text_width_to_vision_width(deep_clip):
    learner = maple_model(deep_clip, prompt_depth=3).learner
    assert [c.weight.shape for c in learner.couplings] == [(48, 32)] * 3
    assert learner.context.shape == (2, 32)
    # MaPLe clones one Linear for the deeper layers; the input's coupling is its own draw
    assert torch.equal(learner.couplings[1].weight, learner.couplings[2].weight)
    assert not torch.equal(learner.couplings[0].weight, learner.couplings[1].weight)


# --------------------------------------------------------------------------- gradients


def test_gradients_reach_every_prompt_coupling_and_label_vector_and_no_clip_weight(deep_clip):
    torch.manual_seed(0)
    model = maple_lamm_model(context_of(deep_clip), MapleLammOptions(prompt_depth=3))
    model.labels.add_classes([0, 1, 2])
    model.classes = [0, 1, 2]
    model.train()
    logits = model(images(4))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"
    assert all(p.grad is None for p in deep_clip.model.parameters())
    # t0 (no label vectors) carries gradient into every text prompt, not into the label vectors
    model.zero_grad()
    model(images(4))
    model.last_original.sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in model.learner.text_prompts())
    assert all(v.grad is None or v.grad.abs().sum() == 0 for v in model.labels.vectors.values())


def test_maple_lamm_encodes_all_prompts_in_one_text_pass_per_step(tiny_clip, monkeypatch):
    import lamm_cl.model.deep_prompts as dp

    calls = []
    real = dp.encode_text_deep
    monkeypatch.setattr(dp, "encode_text_deep", lambda clip, emb, *a, **k: calls.append(emb.shape[0]) or real(clip, emb, *a, **k))
    rest = dp.encode_rest  # the shared-prefix path: the prefix once, then every class's own tokens
    monkeypatch.setattr(dp, "encode_rest", lambda m, state, emb, eot: calls.append(emb.shape[0]) or rest(m, state, emb, eot))
    model = maple_lamm_model(context_of(tiny_clip), MapleLammOptions(prompt_depth=2))
    model.labels.add_classes([0, 1, 2])
    model.classes = [0, 1, 2]
    model.train()
    model(images())
    assert calls == [6]  # t and t0 of the three classes, together
    calls.clear()
    model.eval()
    model(images())
    model(images(seed=1))
    assert calls == [3]  # evaluation: every class once, then from the cache


# --------------------------------------------------------------------------- layouts


def test_prompt_layouts_for_a_known_class_name(tiny_clip):
    emb = tiny_clip.model.token_embedding.weight
    tok = tiny_clip.token_ids
    assert tok("cat") == [2368] and tok("a photo of a") == [320, 1125, 539, 320] and tok(".") == [269]
    sos, a, of, cat, dot, eot = (emb[i] for i in (tiny_clip.sos_id, 320, 539, 2368, 269, tiny_clip.eot_id))
    m = torch.full((1, 64), 0.5)
    for layout, expected_words in [
        # reference: [SOS] ctx ctx [M] "a" "cat" "." [EOT] -- the vector where "of" was, the whole name kept
        ("reference", lambda c: [sos, c[0], c[1], m[0], a, cat, dot, eot]),
        # name (lamm's layout): [SOS] ctx ctx "of" "a" [M] "." [EOT]
        ("name", lambda c: [sos, c[0], c[1], of, a, m[0], dot, eot]),
    ]:
        model = maple_lamm_model(context_of(tiny_clip), MapleLammOptions(prompt_depth=2, layout=layout))
        ctx = model.learner.context
        with torch.no_grad():
            got, eot_pos = model.prompt_embeddings([0], {0: m})
            torch.testing.assert_close(got[0], torch.stack(expected_words(ctx)), rtol=0, atol=0)
            assert eot_pos.tolist() == [7]
            # t0: the words back in the slot -- "a photo of a cat." with the context in front
            plain, _ = model.prompt_embeddings([0])
            torch.testing.assert_close(plain[0], torch.stack([sos, ctx[0], ctx[1], of, a, cat, dot, eot]))
        # the label vector starts from (and L_param anchors to) the name's first piece in both layouts
        model.labels.add_classes([0, 1])
        assert torch.equal(model.labels.original(0), emb[[2368]])
        assert model.labels.original(1).shape[0] == 1  # "golden retriever": k = min = 1 here, 1 by force in reference


def test_reference_layout_allows_one_label_vector_only():
    with pytest.raises(ConfigError, match="label_tokens.*reference"):
        MapleLammOptions(layout="reference", label_tokens=2).validate("strategies[0]")
    MapleLammOptions(layout="reference", label_tokens=1).validate("strategies[0]")
    assert MapleLammOptions().weights(16).param == 1.0  # lambda_p = 1, as the reference script runs it
    assert (MapleOptions().epochs, MapleOptions().batch_size, MapleOptions().lr) == (5, 4, 0.0035)


def test_ctx_init_shorter_than_n_ctx_is_a_config_error(tiny_clip):
    with pytest.raises(ConfigError, match="n_ctx"):
        maple_prompts(context_of(tiny_clip), MapleOptions(n_ctx=5, prompt_depth=1))


# --------------------------------------------------------------------------- end to end


STRATEGIES = [
    {"name": "maple", "epochs": 1, "prompt_depth": 2},
    {"name": "maple_lamm", "epochs": 1, "prompt_depth": 2},
]


def quickstart_config(cache_dir, strategies=STRATEGIES, n_experiences=5) -> dict:
    """The quickstart's benchmark (digits, 5 experiences of 2 classes, tiny random CLIP), fewer images."""
    return {"name": "maple", "seeds": [0], "device": "cpu",
            "benchmark": {"dataset": "digits", "n_experiences": n_experiences, "shots": 12, "class_order": "seeded",
                          "order_seed": 0},
            "model": {"arch": "lamm-tiny", "pretrained": "none"},
            "features": {"cache": True, "cache_dir": str(cache_dir)},
            "strategies": strategies}


E2E_EXPERIENCES = 3  # digits in 4 + 3 + 3 classes: a first, a middle and a last experience


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """Both strategies through the runner on augmented training views, as the lamm_paper files set
    features.train_views (test_freeze_after_first_... runs one on the centre crops); the view seeds read."""
    out = tmp_path_factory.mktemp("maple") / "out"
    data = quickstart_config(tmp_path_factory.mktemp("features"), n_experiences=E2E_EXPERIENCES)
    data["features"]["train_views"] = 2
    reads = []
    real = AugmentedView.__call__

    def spy(self, image, seed):
        reads.append(seed)
        return real(self, image, seed)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AugmentedView, "__call__", spy)
        captured, records = run_capturing(data, out)
    return SimpleNamespace(out=out, captured=captured, records=records, reads=reads)


@pytest.mark.integration
def test_both_run_end_to_end(e2e):
    assert [r.strategy for r in e2e.records] == ["maple", "maple_lamm"]
    for rec in e2e.records:
        run = e2e.out / rec.strategy / "seed0"
        A = rec.matrix
        assert A.shape == (E2E_EXPERIENCES,) * 2 and np.isnan(A[0, 1]) and not np.isnan(np.tril(A)).any()
        counts = np.array(json.loads((run / "class_order.json").read_text())["test_counts"])
        correct = np.tril(A) * counts[None, :] / 100
        assert np.allclose(correct, np.round(correct), atol=1e-6)
    assert get_strategy("maple").inputs == "images" and get_strategy("maple_lamm").inputs == "images"


@pytest.mark.integration
def test_clip_is_bit_identical_after_training_and_the_prompts_keep_training(e2e):
    for cap in e2e.captured:
        now = cap.clip.model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in cap.clip_before.items())
        assert not any(p.requires_grad for p in cap.clip.model.parameters())
    maple, lamm = e2e.captured
    for cap in (maple, lamm):
        after = cap.snap.after
        for t in range(1, E2E_EXPERIENCES):  # the shared prompts and couplings move on every experience
            for key in ("learner.context", "learner.text_deep.0", "learner.couplings.1.weight"):
                assert not torch.equal(after[t][key], after[t - 1][key]), (key, t)
    # maple_lamm: a class's label vector trains in its own experience, then stays bit-identical
    order = e2e.records[1].experiences
    after = lamm.snap.after
    for t, classes in enumerate(order):
        for c in classes:
            assert not torch.equal(after[t][f"labels.vectors.{c}"], after[t][f"labels.m0_{c}"])
            for later in range(t + 1, E2E_EXPERIENCES):
                assert torch.equal(after[later][f"labels.vectors.{c}"], after[t][f"labels.vectors.{c}"])


@pytest.mark.integration
def test_freeze_after_first_stops_the_shared_prompts_not_the_label_vectors(tmp_path):
    strategies = [{"name": "maple_lamm", "epochs": 1, "prompt_depth": 2, "layout": "reference",
                   "freeze_after_first": True, "batch_size": 8}]
    captured, records = run_capturing(quickstart_config(tmp_path / "f", strategies, n_experiences=3), tmp_path / "o")
    (cap,) = captured
    after = cap.snap.after
    start = dict(cap.template.model.learner.named_parameters())
    words = cap.clip.embed_tokens(torch.tensor([320, 1125]))  # "a photo": where the context started
    assert not torch.equal(after[0]["learner.context"], words)  # it trained on experience 0 ...
    for key in ("context", "text_deep.0", "couplings.0.weight", "couplings.1.weight"):
        # ... and nothing shared moved after it
        assert all(torch.equal(after[t][f"learner.{key}"], after[0][f"learner.{key}"]) for t in (1, 2)), key
        assert not start[key].requires_grad
    for t, classes in enumerate(records[0].experiences):
        for c in classes:
            assert not torch.equal(after[t][f"labels.vectors.{c}"], after[t][f"labels.m0_{c}"])
    assert not np.isnan(np.tril(records[0].matrix)).any()


def test_dry_run_says_they_read_images(digits):
    cfg = config.parse(quickstart_config("/tmp/unused", [{"name": "maple", "prompt_depth": 2},
                                                         {"name": "maple_lamm", "prompt_depth": 2},
                                                         {"name": "lamm"}]))
    lines = [line for line in dry_run(cfg) if line.startswith("strategy ")]
    assert "reads images every step (no feature cache)" in lines[0] and "no feature cache" in lines[1]
    assert "cached image features" in lines[2] and "no feature cache" not in lines[2]


@pytest.mark.parametrize("n_images, drop", [(10, True), (4, True), (3, False)])
def test_maple_drops_the_last_partial_batch_as_dassl(monkeypatch, n_images, drop):
    # MaPLe trains on Dassl as CoOp and LAMM do: drop_last when the experience holds a full batch of 4
    from types import SimpleNamespace

    from avalanche.training.templates import SupervisedTemplate

    from lamm_cl.strategy_kit.prompt_learning import MapleTemplate

    seen = {}
    monkeypatch.setattr(SupervisedTemplate, "_before_training_exp", lambda self, **kw: seen.update(kw))
    template = object.__new__(MapleTemplate)  # only the loader decision is under test
    template.experience = SimpleNamespace(dataset=list(range(n_images)))
    template.train_mb_size = 4
    template._before_training_exp()
    assert seen["drop_last"] is drop


def test_image_strategies_train_on_the_epochs_augmented_view_not_the_centre_crop(tiny_clip, digits, tmp_path):
    # The reference trains MaPLe on a random resized crop + flip drawn at every step (Dassl's
    # TRANSFORMS in MaPLe's vit_b16_c2_ep5_batch4_2ctx.yaml); with train_views > 0 the image reader
    # must hand training the epoch's view of each image, and the test reader the centre crop.
    from lamm_cl.data import DatasetParts
    from lamm_cl.features import AugmentedView, FeatureExtractor, draw_view, view_seed
    from lamm_cl.runner.inputs import Inputs

    parts = DatasetParts("digits", digits.classnames, digits.train.subset(range(20)), digits.test.subset(range(10)))
    inputs = Inputs(parts, tiny_clip, FeatureExtractor(tiny_clip, cache_dir=tmp_path), train_views=3)
    (plugin,) = inputs.plugins(seed=5)
    read = inputs.reader("images", "train")(0, np.arange(20))
    test = inputs.reader("images", "test")(0, np.arange(10))
    augment = AugmentedView.for_clip(tiny_clip)  # the crop + flip the feature strategies' views use
    seen = []
    for epoch in range(3):
        plugin.before_training_epoch(SimpleNamespace(experience=SimpleNamespace(current_experience=0),
                                                     clock=SimpleNamespace(train_exp_epochs=epoch)))
        view = draw_view(5, 0, epoch, 3)
        torch.testing.assert_close(read(4), augment(parts.train.image(4), view_seed(view, 4)), rtol=0, atol=0)
        torch.testing.assert_close(test(4), tiny_clip.preprocess(parts.test.image(4)), rtol=0, atol=0)
        seen.append(read(4))
    centre = tiny_clip.preprocess(parts.train.image(4))
    assert all(not torch.allclose(v, centre) for v in seen)
    assert not torch.allclose(seen[0], seen[1]) and not torch.allclose(seen[1], seen[2])
    # train_views: 0 keeps the centre crop
    plain = Inputs(parts, tiny_clip, FeatureExtractor(tiny_clip, cache_dir=tmp_path)).reader("images", "train")
    torch.testing.assert_close(plain(0, np.arange(20))(4), centre, rtol=0, atol=0)


def test_logits_are_exp_logit_scale_times_cosine(tiny_clip):
    # MaPLe's CustomCLIP.forward: logit_scale.exp() * normalised image @ normalised text (trainers/maple.py:191-199);
    # at depth 1 with the context still "a photo", the text side is CLIP's own "a photo of a <name>."
    model = maple_model(tiny_clip, prompt_depth=1)
    model.eval()
    x = images(2)
    with torch.no_grad():
        logits = model(x)
        f = model.image_features(x)
        t = tiny_clip.encode_text([f"a photo of a {n}." for n in NAMES])
        t = t / t.norm(dim=-1, keepdim=True)
        scale = float(tiny_clip.model.logit_scale.exp())
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # exp of a fresh CLIP's log(1 / 0.07), not the raw value
    torch.testing.assert_close(logits, scale * f @ t.t(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_maple_schedule_is_one_warmup_epoch_then_cosine_over_five(tiny_clip):
    # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: LR 0.0035, MAX_EPOCH 5, WARMUP_EPOCH 1 constant 1e-5,
    # cosine. Dassl's ConstantWarmupScheduler + CosineAnnealingLR(T_max=5) with WARMUP_RECOUNT, worked by hand:
    # epoch e >= 1 at 0.0035 * (1 + cos(pi * (e - 1) / 5)) / 2 -> 1, 0.9045085, 0.6545085, 0.3454915
    from lamm_cl.strategy_kit.prompt_learning import prompt_plugins

    opts = MapleOptions()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=opts.lr)
    (plugin,) = prompt_plugins(opts, optimizer, "learner")
    lrs = []
    for epoch in range(5):
        plugin.before_training_epoch(SimpleNamespace(optimizer=optimizer, clock=SimpleNamespace(train_exp_epochs=epoch)))
        lrs.append(optimizer.param_groups[0]["lr"])
    expected = [1e-5, 0.0035, 0.0035 * 0.9045085, 0.0035 * 0.6545085, 0.0035 * 0.3454915]
    assert lrs == pytest.approx(expected, rel=1e-6)
    from lamm_cl.strategy_kit.recipe import sgd

    ref = sgd([torch.nn.Parameter(torch.zeros(1))], opts)  # Dassl's SGD: momentum 0.9, weight decay 5e-4
    assert (ref.defaults["momentum"], ref.defaults["weight_decay"], ref.defaults["nesterov"],
            ref.defaults["dampening"]) == (0.9, 5e-4, False, 0)


def test_maple_lamm_objective_is_the_references_sum(tiny_clip):
    # LAMM trainers/maple.py:323-337 with --triplet-loss and no --shots:
    # CE(z) + 1 * sum (M - M0)^2 + mean(1 - cos(t_y, t0_y)) + 0.05 * 4 * CE(z0 / 2, softmax(z / 2)),
    # z0 = exp(logit_scale) f t0^T with t0 the plain MaPLe prompt. At depth 1 with the context still
    # "a photo", t0 is CLIP's own "a photo of a <name>." -- computed here without the model's text path.
    from lamm_cl.strategy_kit.lamm import lamm_objective

    torch.manual_seed(0)
    model = maple_lamm_model(context_of(tiny_clip), MapleLammOptions(prompt_depth=1, layout="reference"))
    model.labels.add_classes([0, 1, 2])
    model.classes = [0, 1, 2]
    model.train()
    with torch.no_grad():
        for c in range(3):  # M_c = M0_c + 0.1 (c + 1) in each of its 64 entries
            model.labels.vectors[str(c)].add_(0.1 * (c + 1))
    y = torch.tensor([0, 1, 1, 2])
    x = images(4)
    logits = model(x)
    loss, parts = lamm_objective(model, x, logits, y, MapleLammOptions().weights(None))
    with torch.no_grad():
        f, t = model.last_image, model.last_text
        t0 = tiny_clip.encode_text([f"a photo of a {n}." for n in NAMES])
        t0 = t0 / t0.norm(dim=-1, keepdim=True)
        z0 = float(tiny_clip.model.logit_scale.exp()) * f @ t0.t()
        ce = torch.nn.functional.cross_entropy(logits, y)
        l_param = 64 * (0.1 ** 2 + 0.2 ** 2 + 0.3 ** 2)  # = 8.96
        l_feat = (1 - torch.nn.functional.cosine_similarity(t[y], t0[y], dim=-1)).mean()  # every sample has company
        l_logits = -(torch.softmax(logits / 2, -1) * torch.log_softmax(z0 / 2, -1)).sum(-1).mean() * 4
    assert parts["param"] == pytest.approx(8.96, rel=1e-4)
    assert parts["feature"] == pytest.approx(float(l_feat), rel=1e-4, abs=1e-6)
    assert parts["logits"] == pytest.approx(float(l_logits), rel=1e-4)
    assert float(loss) == pytest.approx(float(ce + l_param + l_feat + 0.05 * l_logits), rel=1e-4)
    # a batch of one class: no feature term (FeatureLoss, trainers/maple.py:67-86)
    x = images(2)
    _, parts = lamm_objective(model, x, model(x), torch.tensor([1, 1]), MapleLammOptions().weights(None))
    assert parts["feature"] == 0.0


def test_maple_lamm_param_loss_anchors_random_label_vectors_to_their_start(tiny_clip):
    # LAMM trainers/maple.py:198-202: with --random-init, fix_token is deep-copied after normal_, so
    # L_param pulls M_c towards its random start, not towards the name's embeddings.
    from lamm_cl.strategy_kit.lamm import lamm_objective

    torch.manual_seed(0)
    opts = MapleLammOptions(prompt_depth=1, label_init="random")
    model = maple_lamm_model(context_of(tiny_clip), opts)
    model.labels.add_classes([0, 1])
    model.classes = [0, 1]
    model.train()
    y = torch.tensor([0, 1])
    x = images(2)
    _, parts = lamm_objective(model, x, model(x), y, opts.weights(None))
    assert parts["param"] == 0.0  # untrained: every vector still sits at its anchor
    with torch.no_grad():
        model.labels.vectors["1"].add_(0.5)  # one class moved by 0.5 in each of its k x 64 entries
    x = images(2)
    _, parts = lamm_objective(model, x, model(x), y, opts.weights(None))
    assert parts["param"] == pytest.approx(0.25 * model.labels.vectors["1"].numel(), rel=1e-4)


@pytest.mark.integration
def test_maple_runs_end_to_end_on_augmented_views(e2e):
    # the lamm_paper files set features.train_views; an image strategy must run on them through the runner
    assert e2e.reads  # training read augmented views ...
    assert not np.isnan(np.tril(e2e.records[0].matrix)).any()
    after = e2e.captured[0].snap.after
    assert not torch.equal(after[1]["learner.context"], after[0]["learner.context"])  # ... and trained on them


def test_maple_lamm_text_features_carry_the_label_vectors_in_evaluation_and_training(tiny_clip):
    """Outside the shared t-and-t0 pass (evaluation; training with the shared prompts frozen) t is still
    made with each class's label vectors, t0 without them."""
    from lamm_cl.model.deep_prompts import encode_text_deep

    model = maple_lamm_model(context_of(tiny_clip), MapleLammOptions(prompt_depth=2))
    model.labels.add_classes([0, 1, 2])
    model.classes = [0, 1, 2]
    words = tiny_clip.model.token_embedding.weight
    with torch.no_grad():
        model.labels.vectors["0"].copy_(words[tiny_clip.token_ids("car")])  # "cat" now carries "car"'s vector
        emb, eot = model.prompt_embeddings([0, 1, 2], model.labels.as_mapping([0, 1, 2]))
        want = torch.nn.functional.normalize(encode_text_deep(tiny_clip, emb, eot, list(model.learner.text_deep)), dim=-1)
        plain = torch.nn.functional.normalize(model.encode_text([0], original=True), dim=-1)
    assert not torch.allclose(want[0], plain[0], atol=1e-3)
    model.eval()
    t, t0 = model.text_features()
    assert t0 is None and torch.allclose(t, want, atol=1e-5)
    model.train()
    model.learner.requires_grad_(False)  # only the label vectors train: they take the per-class path
    t, t0 = model.text_features()
    assert torch.allclose(t.detach(), want, atol=1e-5) and torch.allclose(t0[0], plain[0], atol=1e-5)
    t[0].sum().backward()
    assert model.labels.vectors["0"].grad.abs().sum() > 0


def test_t0_without_label_vectors_is_t_and_a_model_without_classes_has_no_columns(tiny_clip):
    model = maple_model(tiny_clip, prompt_depth=2)
    model.keep_original = True  # plain MaPLe never asks for t0; if asked, it is t
    model.train()
    t, t0 = model.text_features()
    assert torch.allclose(t0, t, atol=1e-6)
    model.classes = []
    assert model(images(2)).shape == (2, 0)
    model.eval()  # evaluation too (it used to stack an empty list)
    assert model(images(2)).shape == (2, 0)


def test_maple_lamm_t_and_t0_of_a_long_prompt_in_one_pass(tiny_clip):
    """A 43-token prompt: the shared pass pads t and t0 to their common length, never beyond CLIP's 77."""
    names = ["big " * 36, "cat"]
    model = maple_lamm_model(context_of(tiny_clip, names), MapleLammOptions(prompt_depth=2))
    model.labels.add_classes([0, 1])
    model.classes = [0, 1]
    model.train()
    t, t0 = model.text_features()
    assert model.prompts.eot.tolist()[0] == 42
    with torch.no_grad():
        alone = torch.nn.functional.normalize(model.encode_text([0, 1], original=True), dim=-1)
    assert torch.allclose(t0.detach(), alone, atol=1e-5)


def test_each_deep_text_prompt_enters_before_its_own_block(deep_clip):
    """Layer j's prompt replaces the context positions before block j, in order (depth 3: two deep prompts)."""
    from lamm_cl.model.deep_prompts import _replace, encode_text_deep

    m = deep_clip.model
    tok = deep_clip.tokenize(["a photo of a cat."])
    emb = deep_clip.embed_tokens(tok.ids)
    g = torch.Generator().manual_seed(3)
    deep = [torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g)]
    length = emb.shape[1]
    x = emb + m.positional_embedding[:length]
    mask = m.attn_mask[:length, :length]
    blocks = m.transformer.resblocks
    x = blocks[0](x, attn_mask=mask)
    x = blocks[1](_replace(x, 1, deep[0]), attn_mask=mask)
    x = blocks[2](_replace(x, 1, deep[1]), attn_mask=mask)
    want = m.ln_final(x)[0, tok.eot[0]] @ m.text_projection
    got = encode_text_deep(deep_clip, emb, tok.eot, deep)
    assert torch.allclose(got[0], want, atol=1e-5)
    swapped = encode_text_deep(deep_clip, emb, tok.eot, deep[::-1])
    assert not torch.allclose(swapped, got, atol=1e-4)


def test_deep_text_tower_with_a_linear_projection(tiny_clip):
    """Some open_clip towers project text with an nn.Linear instead of a matrix."""
    from lamm_cl.model.deep_prompts import encode_text_deep

    tok = tiny_clip.tokenize(["a red shape"])
    emb = tiny_clip.embed_tokens(tok.ids)
    want = encode_text_deep(tiny_clip, emb, tok.eot, [])
    matrix = tiny_clip.model.text_projection
    linear = torch.nn.Linear(64, 64, bias=False)
    linear.weight.data = matrix.data.t().clone()
    del tiny_clip.model.text_projection
    tiny_clip.model.text_projection = linear
    try:
        got = encode_text_deep(tiny_clip, emb, tok.eot, [])
    finally:
        del tiny_clip.model.text_projection
        tiny_clip.model.text_projection = matrix
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("flag, fed", [(True, "batch"), (False, "sequence"), (None, "batch")])
def test_run_blocks_feeds_each_block_the_layout_its_transformer_declares(flag, fed):
    """open_clip's Transformer says batch_first; one that does not say is taken as batch first."""
    from lamm_cl.model.deep_prompts import run_blocks

    seen = []

    class Block(torch.nn.Module):
        def forward(self, x, attn_mask=None):
            seen.append(tuple(x.shape))
            return x + 1

    transformer = torch.nn.Module()
    transformer.resblocks = torch.nn.ModuleList([Block(), Block()])
    if flag is not None:
        transformer.batch_first = flag
    x = torch.zeros(2, 5, 4)  # [N, L, W]
    out = run_blocks(transformer, x, None, lambda i, x: x)
    assert seen == ([(2, 5, 4)] * 2 if fed == "batch" else [(5, 2, 4)] * 2)
    assert out.shape == (2, 5, 4) and torch.equal(out, torch.full((2, 5, 4), 2.0))


def test_no_classes_give_empty_t_on_the_clips_device_and_t0_only_when_asked_in_training(tiny_clip):
    import copy

    model = maple_model(tiny_clip, prompt_depth=2)
    model.classes = []
    elsewhere = copy.copy(tiny_clip)
    elsewhere.device = torch.device("meta")  # the empty result is made on the CLIP's device, never touching it
    model._clip = [elsewhere]
    for training, keep, want_t0 in [(True, True, True), (True, False, False), (False, True, False)]:
        model.train(training)
        model.keep_original = keep
        t, t0 = model.text_features()
        assert t.shape == (0, tiny_clip.embed_dim) and t.device.type == "meta"
        if want_t0:
            assert t0.shape == (0, tiny_clip.embed_dim) and t0.device.type == "meta"
        else:
            assert t0 is None


def test_with_the_shared_prompts_frozen_a_step_encodes_only_the_live_classes_t(tiny_clip, monkeypatch):
    """Label vectors of classes 1 and 2 train, class 0's are frozen and nothing shared trains: t0 of all
    three and t of class 0 are encoded once and kept; each step then encodes t of the two live classes only."""
    import lamm_cl.model.deep_prompts as dp

    calls = []
    real = dp.encode_text_deep
    monkeypatch.setattr(dp, "encode_text_deep", lambda clip, emb, *a, **k: calls.append(emb.shape[0]) or real(clip, emb, *a, **k))
    rest = dp.encode_rest  # the shared-prefix path: the prefix once, then every class's own tokens
    monkeypatch.setattr(dp, "encode_rest", lambda m, state, emb, eot: calls.append(emb.shape[0]) or rest(m, state, emb, eot))
    model = maple_lamm_model(context_of(tiny_clip), MapleLammOptions(prompt_depth=2))
    model.labels.add_classes([0, 1, 2])
    model.labels.vectors["0"].requires_grad_(False)
    model.learner.requires_grad_(False)
    model.classes = [0, 1, 2]
    model.keep_original = True
    model.train()
    model(images())
    assert calls == [2, 2, 2]  # t and t0 of class 0 together, t0 of 1 and 2, t of 1 and 2
    calls.clear()
    model(images(seed=1))
    assert calls == [2]


def test_label_vectors_of_another_dtype_enter_the_prompt_in_the_embeddings_dtype(tiny_clip):
    model = maple_lamm_model(context_of(tiny_clip), MapleLammOptions(prompt_depth=2))
    model.labels.add_classes([0, 1, 2])
    want, _ = model.prompt_embeddings([0, 1, 2], model.labels.as_mapping([0, 1, 2]))
    model.labels.double()
    got, _ = model.prompt_embeddings([0, 1, 2], model.labels.as_mapping([0, 1, 2]))
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_multimodal_prompts_draw_deep_text_prompts_from_n0_002_on_the_contexts_device():
    from lamm_cl.model.deep_prompts import MultiModalPrompts

    with pytest.raises(ValueError, match=r"^prompt depth must be 1 or more, got 0$"):
        MultiModalPrompts(torch.zeros(2, 32), 0, 48)
    torch.manual_seed(5)
    want = [torch.randn(2, 32) * 0.02, torch.randn(2, 32) * 0.02]  # trainers/maple.py:111-114, drawn first
    torch.manual_seed(5)
    learner = MultiModalPrompts(torch.ones(2, 32), 3, 48)
    assert [torch.equal(p, w) for p, w in zip(learner.text_deep, want)] == [True, True]
    assert torch.equal(learner.context, torch.ones(2, 32))
    first, one, two = learner.couplings  # the deeper ones: clones of one draw (trainers/maple.py:116-117), not shared
    assert torch.equal(one.weight, two.weight) and not torch.equal(first.weight, one.weight)
    assert len(list(learner.parameters())) == 1 + 2 + 3 * 2
    with torch.no_grad():
        one.weight.add_(1.0)
    assert not torch.equal(one.weight, two.weight)
    on_meta = MultiModalPrompts(torch.zeros(2, 32, device="meta"), 3, 48)
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
