"""The baselines (coop, coop_lamm, finetune, linear_probe) and Avalanche plugins from the YAML,
trained through the runner on the tiny random-weight CLIP and the embedded digits."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from avalanche.training.plugins import ReplayPlugin

from lamm_cl import config
from lamm_cl.errors import ConfigError
from lamm_cl.model.clip import normalize
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
from lamm_cl.registry import get_strategy
from lamm_cl.regularization import EWCPlugin, LwFPlugin
from lamm_cl.strategy_kit.context import StrategyContext

from builders import digits_config, run_capturing
from formulas import cross_entropy, feature_term, logits_term  # the loss formulas, written out

MEM = 12
REPLAY = {"name": "replay", "mem_size": MEM}
LWF = {"name": "lwf", "alpha": 1.0}
EWC = {"name": "ewc", "ewc_lambda": 10.0}
STRATEGIES = [
    {"name": "zeroshot"},
    {"name": "lamm", "epochs": 2, "plugins": [REPLAY]},
    {"name": "coop", "epochs": 2, "plugins": [LWF, EWC]},
    {"name": "coop_lamm", "epochs": 2, "plugins": [REPLAY, LWF, EWC]},
    {"name": "finetune", "epochs": 2, "last_blocks": 1, "lr": 1e-3, "plugins": [REPLAY, LWF, EWC]},
    {"name": "linear_probe", "epochs": 4, "lr": 0.01, "plugins": [REPLAY, LWF, EWC]},
]


@pytest.fixture(scope="module")
def cache_dir(feature_store):
    return feature_store  # the session's: digits on the tiny random CLIP, encoded once per worker


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("results") / "baselines"
    captured, records = run_capturing(digits_config(STRATEGIES, cache_dir), out)
    return SimpleNamespace(out=out, captured=by_name(captured), records={r.strategy: r for r in records})


def by_name(captured: list) -> dict:
    return {c.name: c for c in captured}


def seen_after_first(records) -> list[int]:
    return records["zeroshot"].experiences[0]


# --------------------------------------------------------------------------- every strategy


@pytest.mark.integration
def test_every_strategy_trains_evaluates_and_writes(baselines):
    assert set(baselines.records) == {s["name"] for s in STRATEGIES}
    for name, rec in baselines.records.items():
        run = baselines.out / name / "seed0"
        A = pd.read_csv(run / "accuracy_matrix.csv", index_col=0).to_numpy()
        assert A.shape == (2, 2) and np.isnan(A[0, 1]) and not np.isnan(np.tril(A)).any(), name
        np.testing.assert_allclose(A, rec.matrix, equal_nan=True)
        assert ((0 <= np.tril(A)) & (np.tril(A) <= 100)).all()
        # each cell is a whole number of correct test images
        counts = np.array(json.loads((run / "class_order.json").read_text())["test_counts"])
        correct = np.tril(A) * counts[None, :] / 100
        assert np.allclose(correct, np.round(correct), atol=1e-6), name
        assert json.loads((run / "summary.json").read_text())["strategy"] == name
    # the standardised linear probe learns from 10 shots (chance is 20% on 5 classes)
    assert baselines.records["linear_probe"].matrix[0, 0] > 40


def test_lamm_cl_list_describes_the_baselines():
    for name, word in [("coop", "context"), ("coop_lamm", "label vectors"), ("finetune", "image encoder"),
                       ("linear_probe", "linear head")]:
        spec = get_strategy(name)
        assert word in spec.description and spec.description.endswith(".")
    assert get_strategy("finetune").inputs == "images" and get_strategy("linear_probe").inputs == "features"


# --------------------------------------------------------------------------- what trains and what does not


@pytest.mark.integration
def test_coop_context_drifts_while_lamm_old_label_vectors_stay(baselines, tiny_clip):
    coop = baselines.captured["coop"].snap.after
    init = tiny_clip.embed_tokens(torch.tensor(tiny_clip.token_ids("a photo of a")))
    assert not torch.equal(coop[0]["context"], init)  # trained on experience 0 ...
    assert not torch.equal(coop[1]["context"], coop[0]["context"])  # ... and kept training on experience 1

    lamm = baselines.captured["lamm"].snap.after  # with replay: old classes' samples return, their vectors stay
    old = seen_after_first(baselines.records)
    new = baselines.records["lamm"].experiences[1]
    for c in old:
        assert torch.equal(lamm[1][f"labels.vectors.{c}"], lamm[0][f"labels.vectors.{c}"])  # bit-identical
        assert not torch.equal(lamm[0][f"labels.vectors.{c}"], lamm[0][f"labels.m0_{c}"])  # they did train
    for c in new:
        assert not torch.equal(lamm[1][f"labels.vectors.{c}"], lamm[1][f"labels.m0_{c}"])


@pytest.mark.integration
def test_coop_freeze_after_first_keeps_the_context(tmp_path, cache_dir):
    strategies = [{"name": "coop", "epochs": 2, "freeze_after_first": True, "ctx_init": "random",
                   "plugins": [EWC]}]
    captured, records = run_capturing(digits_config(strategies, cache_dir), tmp_path / "out")
    captured = by_name(captured)
    after = captured["coop"].snap.after
    assert torch.equal(after[1]["context"], after[0]["context"])
    assert not captured["coop"].template.model.context.requires_grad
    assert not np.isnan(np.tril(records[0].matrix)).any()


@pytest.mark.integration
def test_coop_lamm_trains_context_and_label_vectors(baselines):
    after = baselines.captured["coop_lamm"].snap.after
    old = seen_after_first(baselines.records)
    assert not torch.equal(after[1]["context"], after[0]["context"])
    for c in old:
        assert torch.equal(after[1][f"labels.vectors.{c}"], after[0][f"labels.vectors.{c}"])
    model = baselines.captured["coop_lamm"].template.model
    assert model.context.shape == (4, model.clip.token_width)


@pytest.mark.integration
def test_finetune_last_blocks_trains_only_the_last_block_of_a_copy(baselines):
    cap = baselines.captured["finetune"]
    shared = cap.clip.model.visual
    encoder = cap.template.model.encoder
    assert encoder is not shared
    # the shared CLIP that every other strategy and seed uses is untouched
    now = cap.clip.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in cap.clip_before.items())
    assert not any(p.requires_grad for p in cap.clip.model.parameters())
    trained = ("transformer.resblocks.1.", "ln_post.", "proj")
    after = cap.snap.after[-1]
    for name, start in shared.state_dict().items():
        mine = after[f"encoder.{name}"]
        if name.startswith(trained):
            assert not torch.equal(mine, start), f"{name} did not train"
        else:
            assert torch.equal(mine, start), f"{name} changed"
    # the head grew by the second experience's classes
    assert after["head.weight"].shape == (10, encoder.proj.shape[1])


def test_finetune_head_starts_as_zero_shot_clip(tiny_clip, digits):
    names = digits.classnames
    ctx = StrategyContext(clip=tiny_clip, class_names=names, template="a photo of the number {}.",
                          device=torch.device("cpu"), seed=0)
    opts = config.from_dict(get_strategy("finetune").options, {}, "strategies[0]")
    model = get_strategy("finetune").build(ctx, opts).model
    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=[0, 1, 2]))
    images = torch.stack([tiny_clip.preprocess(digits.test.image(i)) for i in range(6)])
    with torch.no_grad():
        t = normalize(tiny_clip.encode_text([f"a photo of the number {n}." for n in names[:3]]))
        expect = tiny_clip.logit_scale * normalize(tiny_clip.encode_images(images)) @ t.t()
        got = model(images)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- Avalanche plugins from the YAML


@pytest.mark.integration
def test_replay_named_in_the_config_is_attached_and_filled(baselines):
    old = seen_after_first(baselines.records)
    for name in ("lamm", "coop_lamm", "finetune", "linear_probe"):
        cap = baselines.captured[name]
        replay = [p for p in cap.template.plugins if isinstance(p, ReplayPlugin)]
        assert len(replay) == 1 and replay[0].mem_size == MEM
        (size0, _), (size1, labels1) = cap.snap.buffer_before
        assert size0 == 0  # empty before the first experience ...
        assert size1 == MEM and set(labels1) <= set(old)  # ... full of its samples after it


@pytest.mark.integration
def test_lwf_and_ewc_work_on_every_kind_of_model(baselines):
    for name in ("coop", "coop_lamm", "finetune", "linear_probe"):
        cap = baselines.captured[name]
        lwf = next(p for p in cap.template.plugins if isinstance(p, LwFPlugin))
        ewc = next(p for p in cap.template.plugins if isinstance(p, EWCPlugin))
        teacher = lwf.lwf.prev_model
        assert teacher is not None and not teacher.training
        if name.startswith("coop"):
            assert teacher.clip is cap.clip  # the teacher shares the frozen CLIP instead of copying it
        imp = ewc.importances[0]
        trainable = [k for k, p in cap.template.model.named_parameters() if p.requires_grad and k in imp]
        assert trainable and any(float(imp[k].data.abs().sum()) > 0 for k in trainable), name
    coop_imp = next(p for p in baselines.captured["coop"].template.plugins if isinstance(p, EWCPlugin)).importances
    assert float(coop_imp[0]["context"].data.sum()) > 0
    ft_imp = next(p for p in baselines.captured["finetune"].template.plugins
                  if isinstance(p, EWCPlugin)).importances[0]
    assert float(ft_imp["encoder.transformer.resblocks.0.mlp.c_fc.weight"].data.abs().sum()) == 0  # frozen block


@pytest.mark.integration
def test_lwf_and_ewc_add_their_penalties_by_hand(baselines):
    # CoOp after both experiences, its context moved: LwF adds alpha * KL(teacher || student) at T = 2 over
    # every class seen, EWC adds lambda * sum_e sum_k F_e,k (theta_k - theta*_e,k)^2 over both experiences
    cap = baselines.captured["coop"]
    template, model = cap.template, cap.template.model
    lwf = next(p for p in template.plugins if isinstance(p, LwFPlugin))
    ewc = next(p for p in template.plugins if isinstance(p, EWCPlugin))
    trained = model.context.detach().clone()
    torch.manual_seed(0)
    x = torch.randn(8, model.clip.embed_dim)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]) % len(model.classes)
    model.train()
    with torch.no_grad():
        teacher = model(x)  # the teacher is the model as trained through the last experience
    try:
        with torch.no_grad():
            model.context.add_(0.05 * torch.randn_like(model.context))
        template.mbatch = [x, y, torch.zeros(8, dtype=torch.long)]
        template.mb_output = model(x)
        template.loss = torch.zeros(())
        lwf.before_backward(template)
        log_p = torch.log_softmax(template.mb_output.detach() / 2, dim=-1)
        q = torch.softmax(teacher / 2, dim=-1)
        kl = float((q * (q.log() - log_p)).sum(-1).mean())
        assert kl > 1e-6 and float(template.loss) == pytest.approx(1.0 * kl, rel=1e-4)

        template.loss = torch.zeros(())
        ewc.before_backward(template)
        moved = model.context.detach()
        penalty = sum(float((ewc.importances[e]["context"].data * (moved - snap["context"]) ** 2).sum())
                      for e, snap in enumerate(cap.snap.after))
        assert penalty > 0 and float(template.loss) == pytest.approx(10.0 * penalty, rel=1e-5)
    finally:
        with torch.no_grad():
            model.context.copy_(trained)


@pytest.mark.integration
def test_coop_lamm_with_plugins_resumes_bit_identically(baselines, tmp_path, cache_dir):
    data = digits_config([next(s for s in STRATEGIES if s["name"] == "coop_lamm")], cache_dir)
    with pytest.raises(KeyboardInterrupt):
        run_capturing(data, tmp_path / "out", stop_at=1)
    captured, (record,) = run_capturing(data, tmp_path / "out", resume=True)
    captured = by_name(captured)
    assert record.info["resumed"]
    np.testing.assert_array_equal(record.matrix, baselines.records["coop_lamm"].matrix)
    # the replay buffer, LwF's teacher, EWC's importances, the optimizer and the RNG all came back
    final, reference = captured["coop_lamm"].snap.after[-1], baselines.captured["coop_lamm"].snap.after[-1]
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


@pytest.mark.parametrize("plugins, where", [
    ([{"name": "replays"}], "strategies[1].plugins[0].name"),
    ([REPLAY, {"name": "replay", "mem_sise": 10}], "strategies[1].plugins[1].mem_sise"),
    ([{"name": "replay", "mem_size": -3}], "strategies[1].plugins[0].mem_size"),
    ([{"name": "ewc"}], "strategies[1].plugins[0].ewc_lambda"),
    ([{"name": "lwf", "temperature": "hot"}], "strategies[1].plugins[0].temperature"),
])
@pytest.mark.parametrize("strategy", ["lamm", "coop", "coop_lamm", "finetune", "linear_probe"])
def test_bad_plugin_is_a_config_error_naming_its_key(tmp_path, plugins, where, strategy):
    data = digits_config([{"name": "zeroshot"}, {"name": strategy, "plugins": plugins}], tmp_path)
    with pytest.raises(ConfigError) as e:
        config.parse(data)
    assert str(e.value).startswith(where + ":") and "\n" not in str(e.value)


def test_bad_baseline_options_are_config_errors(tmp_path, tiny_clip):
    def parse(entry):
        return config.parse(digits_config([entry], tmp_path))

    for entry, where in [({"name": "coop", "n_ctx": 0}, "strategies[0].n_ctx"),
                         ({"name": "finetune", "trainable": "last_blocks"}, "strategies[0].last_blocks"),
                         ({"name": "finetune", "last_blocks": 0}, "strategies[0].last_blocks"),
                         ({"name": "linear_probe", "optimizer": "lbfgs"}, "strategies[0].optimizer")]:
        with pytest.raises(ConfigError, match="^" + re.escape(where + ":")):
            parse(entry)
    ctx = StrategyContext(clip=tiny_clip, class_names=["zero", "one"], template="a photo of a {}.",
                          device=torch.device("cpu"), seed=0)
    opts = parse({"name": "coop", "n_ctx": 16}).strategies[0].options
    with pytest.raises(ConfigError, match="coop.ctx_init: 'a photo of a' is 4 tokens but n_ctx is 16"):
        get_strategy("coop").build(ctx, opts)
    opts = parse({"name": "finetune", "last_blocks": 3}).strategies[0].options
    with pytest.raises(ConfigError, match="finetune.last_blocks: 3 asked, the image encoder has 2 blocks"):
        get_strategy("finetune").build(ctx, opts)


# --------------------------------------------------------------------------- coop_lamm's loss by hand


def test_coop_lamm_loss_is_ce_plus_the_three_lamm_terms(tiny_clip, digits):
    torch.manual_seed(0)
    names = digits.classnames
    ctx = StrategyContext(clip=tiny_clip, class_names=names, template="a photo of the number {}.",
                          device=torch.device("cpu"), seed=0)
    loss_cfg = {"param": 0.5, "feature": 2.0, "logits": 0.3, "temperature": 1.5}
    opts = config.from_dict(get_strategy("coop_lamm").options, {"loss": loss_cfg}, "strategies[0]")
    template = get_strategy("coop_lamm").build(ctx, opts)
    model = template.model
    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=[0, 1, 2]))
    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=[3, 4]))
    table = model.labels
    with torch.no_grad():  # move everything off its initial value so that every term is non-zero
        model.context.add_(0.05 * torch.randn_like(model.context))
        for v in table.vectors.values():
            v.add_(0.05 * torch.randn_like(v))
    model.train()
    x = torch.randn(6, tiny_clip.embed_dim)
    y = torch.tensor([3, 4, 0, 3, 1, 4])
    template.mbatch = [x, y, torch.zeros(6, dtype=torch.long)]
    template.mb_output = model(x)
    template.is_training = True
    loss = template.criterion()

    # by hand: CoOp's prompts with the context and the label vectors spliced in
    classes = [0, 1, 2, 3, 4]
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, names, "a photo of a {}."))
    vectors = {c: table.vectors[str(c)] for c in classes}
    originals = {c: table.original(c) for c in classes}
    t = normalize(encoder.encode(classes, context=model.context, labels=vectors))
    # t0: the current context with CLIP's own name embeddings, keeping its gradient into the context
    # (the reference's _get_origin_feature runs without no_grad; feature_loss detaches t0 itself)
    t0 = normalize(encoder.encode(classes, context=model.context, labels=originals))
    alpha = tiny_clip.logit_scale
    f = normalize(x)
    z, z0 = alpha * f @ t.t(), alpha * f @ t0.t()
    ce = cross_entropy(z, y)
    l_param = sum(((table.vectors[str(c)] - table.original(c)) ** 2).sum() for c in (3, 4))  # trainable only
    expected = (ce + 0.5 * l_param + 2.0 * feature_term(t[y], t0[y]) + 0.3 * logits_term(z, z0, 1.5))
    assert float(l_param) > 0 and float(feature_term(t[y], t0[y])) > 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(template.loss_parts) == {"ce", "param", "feature", "logits"}
    assert template.loss_parts["ce"] == pytest.approx(float(ce), rel=1e-5)

    # same gradients: the context also gets gradient through t0 (logits term), old label vectors none at all
    params = [model.context, table.vectors["3"], table.vectors["4"]]
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        # the model encodes the shared prefix once (README, Speed) and the hand-run formula the whole prompt:
        # equal up to float32 rounding, so entries far below the largest one are compared at its scale
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
    assert not table.vectors["0"].requires_grad
