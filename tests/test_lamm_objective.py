"""LAMM's objective as the `lamm` and `coop_lamm` strategies compute it, against the formulas written out
here (cross-entropy by log-sum-exp, cosines by dot products of normalised rows) -- nothing from
lamm_cl.losses: which logit columns the softmax reads, that t0 follows CoOp's context as it trains, and
that the gradient reaches the current classes' label vectors and no earlier ones.

The model: the tiny random CLIP, the digits' names, classes 0-2 in a first experience and 3-4 in the
current one; every label vector (and the context) moved off its start so that no term is zero.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from avalanche.models.dynamic_modules import avalanche_model_adaptation

from lamm_cl import config
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
from lamm_cl.registry import get_strategy
from lamm_cl.strategy_kit.context import StrategyContext

from formulas import cross_entropy, feature_term, logits_term, unit

LOSS = {"param": 0.5, "feature": 2.0, "logits": 0.3, "temperature": 1.5}
CURRENT = (3, 4)


def build(name: str, clip, names, **options):
    """The strategy's template after experiences [0, 1, 2] and [3, 4], parameters moved, in training mode."""
    ctx = StrategyContext(clip=clip, class_names=names, template="a photo of a {}.",
                          device=torch.device("cpu"), seed=0)
    opts = config.from_dict(get_strategy(name).options, {"loss": LOSS, **options}, "strategies[0]")
    template = get_strategy(name).build(ctx, opts)
    model = template.model
    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=[0, 1, 2]))
    avalanche_model_adaptation(model, SimpleNamespace(classes_in_this_experience=list(CURRENT)))
    torch.manual_seed(0)
    with torch.no_grad():
        for v in model.labels.vectors.values():
            v.add_(0.05 * torch.randn_like(v))
        if model.context is not None:
            model.context.add_(0.05 * torch.randn_like(model.context))
    model.train()
    return template


def criterion(template, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The template's training loss on one batch, as Avalanche's training step calls it."""
    template.mbatch = [x, y, torch.zeros(len(y), dtype=torch.long)]
    template.mb_output = template.model(x)
    template.is_training = True
    return template.criterion()


# ----------------------------------------------------------------------------- t and t0 afresh (formulas: formulas.py)


def text_features(clip, names, model, context=None):
    """t (label vectors) and t0 (CLIP's own name embeddings) of classes 0-4, encoded afresh."""
    # both strategies' prompts: "a photo of a" (CoOp: its context, initialised from those words), the name, "."
    encoder = PromptEncoder(clip, ClassPrompts(clip, names, "a photo of a {}."))
    classes = list(range(5))
    table = model.labels
    t = unit(encoder.encode(classes, context=context, labels={c: table.vectors[str(c)] for c in classes}))
    with torch.no_grad():
        t0 = unit(encoder.encode(classes, context=context, labels={c: table.original(c) for c in classes}))
    return t, t0


# ----------------------------------------------------------------------------- lamm


def test_lamm_loss_and_its_gradient_reach_only_the_current_label_vectors(tiny_clip, digits):
    names = digits.classnames
    template = build("lamm", tiny_clip, names)
    model, table = template.model, template.model.labels
    torch.manual_seed(1)
    x = torch.randn(6, tiny_clip.embed_dim)
    y = torch.tensor([3, 4, 0, 3, 1, 4])
    loss = criterion(template, x, y)

    t, t0 = text_features(tiny_clip, names, model)
    f = unit(x)
    alpha = tiny_clip.logit_scale
    z, z0 = alpha * f @ t.t(), alpha * f @ t0.t()
    l_param = sum(((table.vectors[str(c)] - table.original(c)) ** 2).sum() for c in CURRENT)
    expected = (cross_entropy(z, y) + 0.5 * l_param + 2.0 * feature_term(t[y], t0[y])
                + 0.3 * logits_term(z, z0, 1.5))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    parts = template.loss_parts
    assert parts["ce"] == pytest.approx(float(cross_entropy(z, y)), rel=1e-5)
    assert parts["param"] == pytest.approx(float(l_param), rel=1e-5)
    assert parts["feature"] == pytest.approx(float(feature_term(t[y], t0[y])), rel=1e-4)
    assert parts["logits"] == pytest.approx(float(logits_term(z, z0, 1.5)), rel=1e-5)

    # the gradient of every current class's vectors is the hand-built loss's; the old ones do not train
    current = [table.vectors[str(c)] for c in CURRENT]
    got = torch.autograd.grad(loss, current)
    want = torch.autograd.grad(expected, current)
    for g, w in zip(got, want):
        assert float(w.abs().sum()) > 0
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))
    assert all(not table.vectors[str(c)].requires_grad for c in (0, 1, 2))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [f"labels.vectors.{c}" for c in CURRENT]


@pytest.mark.parametrize("y, columns, targets", [
    # with a replayed class (0) in the batch: its column joins the current classes' 3 and 4
    ([3, 4, 0, 3], [0, 3, 4], [1, 2, 0, 1]),
    # without replay: the current classes only
    ([3, 4, 4, 3], [3, 4], [0, 1, 1, 0]),
])
def test_softmax_current_reads_the_current_and_replayed_columns(tiny_clip, digits, y, columns, targets):
    names = digits.classnames
    template = build("lamm", tiny_clip, names, softmax="current")
    torch.manual_seed(2)
    x = torch.randn(len(y), tiny_clip.embed_dim)
    criterion(template, x, torch.tensor(y))
    logits = template.mb_output.detach()  # columns = classes 0..4
    z = logits[:, columns]
    ce = cross_entropy(z, torch.tensor(targets))
    assert template.loss_parts["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert template.loss_parts["ce"] != pytest.approx(float(cross_entropy(logits, torch.tensor(y))), rel=1e-3)

    # the logits term runs over the same columns, with z0 from CLIP's own name embeddings
    t, t0 = text_features(tiny_clip, names, template.model)
    z0 = tiny_clip.logit_scale * unit(x) @ t0[columns].t()
    assert template.loss_parts["logits"] == pytest.approx(float(logits_term(z, z0, 1.5)), rel=1e-5)


def test_fp16_image_features_give_the_fp32_loss(tiny_clip, digits):
    # features may be stored as float16 (features.dtype): the objective casts them to the text features' dtype
    from lamm_cl.strategy_kit.lamm import lamm_objective

    template = build("lamm", tiny_clip, digits.classnames)
    torch.manual_seed(4)
    x = torch.randn(4, tiny_clip.embed_dim).half()
    y = torch.tensor([3, 4, 0, 3])
    model = template.model
    want, _ = lamm_objective(model, x.float(), model(x.float()), y, template.weights)
    got, _ = lamm_objective(model, x, model(x), y, template.weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_lamm_model_prompts_come_from_the_template_or_the_shared_context(tiny_clip, digits):
    from lamm_cl.strategy_kit.lamm import lamm_model

    ctx = StrategyContext(clip=tiny_clip, class_names=digits.classnames, template="the benchmark's {}",
                          device=torch.device("cpu"), seed=0)
    assert lamm_model(ctx, lamm_options(template="dataset")).encoder.prompts.template == "the benchmark's {}"
    assert lamm_model(ctx, lamm_options(template="mine: {}")).encoder.prompts.template == "mine: {}"
    prompts = ClassPrompts(tiny_clip, digits.classnames, "X X {}.")
    context = torch.nn.Parameter(torch.zeros(2, tiny_clip.token_width))
    model = lamm_model(ctx, lamm_options(), context=(prompts, context))
    assert model.encoder.prompts is prompts and model.context is context
    table = lamm_model(ctx, lamm_options(label_tokens="all", label_init="random")).labels
    assert (table.label_tokens, table.label_init) == ("all", "random")


# ----------------------------------------------------------------------------- coop_lamm


def test_coop_lamm_t0_follows_the_context_as_it_trains(tiny_clip, digits):
    names = digits.classnames
    template = build("coop_lamm", tiny_clip, names)
    model = template.model
    torch.manual_seed(3)
    x = torch.randn(6, tiny_clip.embed_dim)
    y = torch.tensor([3, 4, 0, 3, 1, 4])
    criterion(template, x, y)  # a first step: whatever t0 it would keep, it has it now
    _, t0_before = text_features(tiny_clip, names, model, context=model.context.detach().clone())

    # a step on the context (as SGD's, in place)
    loss = criterion(template, x, y)
    (grad,) = torch.autograd.grad(loss, [model.context])
    with torch.no_grad():
        model.context.sub_(2.0 * grad / grad.norm())
    criterion(template, x, y)

    t, t0_now = text_features(tiny_clip, names, model, context=model.context)
    assert float((t0_now - t0_before).abs().max()) > 1e-3  # the step did move t0
    feature_now, feature_stale = feature_term(t[y], t0_now[y]), feature_term(t[y], t0_before[y])
    assert template.loss_parts["feature"] == pytest.approx(float(feature_now), rel=1e-4)
    assert template.loss_parts["feature"] != pytest.approx(float(feature_stale), rel=1e-2)
    f = unit(x)
    z = tiny_clip.logit_scale * f @ t.t()
    logits_now = logits_term(z, tiny_clip.logit_scale * f @ t0_now.t(), 1.5)
    logits_stale = logits_term(z, tiny_clip.logit_scale * f @ t0_before.t(), 1.5)
    assert template.loss_parts["logits"] == pytest.approx(float(logits_now), rel=1e-5)
    assert template.loss_parts["logits"] != pytest.approx(float(logits_stale), rel=1e-3)


# ----------------------------------------------------------------------------- options


def lamm_options(**data):
    return config.from_dict(get_strategy("lamm").options, data, "strategies[0]")


def test_lamm_defaults_and_loss_weights():
    opts = lamm_options()
    assert (opts.label_tokens, opts.label_init, opts.softmax) == ("min", "name", "seen")
    loss = opts.loss
    assert (loss.param, loss.feature, loss.logits, loss.temperature, loss.logits_kind) == (
        "auto", 1.0, 0.05, 2.0, "reference")
    # auto: 1/shots few-shot and incremental (the reference's base-to-new scripts pass --shots 16), 1 for
    # one task of every class at any shot count (its few-shot scripts pass no --shots) and with every image
    w = opts.weights(16, 2)
    assert (w.param, w.feature, w.logits, w.temperature, w.logits_kind) == (1 / 16, 1.0, 0.05, 2.0, "reference")
    assert opts.weights(4, 10).param == 0.25 and opts.weights(16, 1).param == 1.0 and opts.weights(1, 1).param == 1.0
    assert opts.weights(None, 10).param == 1.0
    mine = lamm_options(loss={"param": 0.3, "feature": 0.7, "logits": 0.2, "temperature": 3.0, "logits_kind": "kl"})
    w = mine.weights(16)
    assert (w.param, w.feature, w.logits, w.temperature, w.logits_kind) == (0.3, 0.7, 0.2, 3.0, "kl")


@pytest.mark.parametrize("data, message", [
    ({"label_tokens": 0}, "strategies[0].label_tokens: expected min, * or a positive integer, got 0"),
    ({"loss": {"temperature": 0.0}}, "strategies[0].loss.temperature: expected a positive number, got 0.0"),
    ({"loss": {"param": -0.5}}, "strategies[0].loss.param: expected 0 or more, got -0.5"),
    ({"loss": {"feature": -1.0}}, "strategies[0].loss.feature: expected 0 or more, got -1.0"),
    ({"loss": {"logits": -0.01}}, "strategies[0].loss.logits: expected 0 or more, got -0.01"),
    ({"epochs": -1}, "strategies[0].epochs: expected 0 or more, got -1"),  # the base checks still run
])
def test_bad_lamm_options_are_refused_by_name(data, message):
    from lamm_cl.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        lamm_options(**data).validate("strategies[0]")
    head, _, tail = message.partition("*")  # `*`: the list of named choices may grow
    assert str(e.value).startswith(head) and str(e.value).endswith(tail), str(e.value)


def test_the_prompt_template_is_lamms_the_users_or_the_benchmarks():
    from lamm_cl.errors import ConfigError
    from lamm_cl.strategy_kit.lamm import LammOptions, lamm_template

    ctx = SimpleNamespace(template="the benchmark's {}")
    assert lamm_template(ctx, lamm_options()) == "a photo of a {}."
    assert lamm_template(ctx, lamm_options(template="mine: {}")) == "mine: {}"
    assert lamm_template(ctx, lamm_options(template="dataset")) == "the benchmark's {}"
    assert lamm_template(ctx, LammOptions()) == "a photo of a {}."  # options without the key (coop_lamm's)
    lamm_options(template="dataset").validate("strategies[0]")
    for bad in ("no slot", "{} and {}"):
        with pytest.raises(ConfigError) as e:
            lamm_options(template=bad).validate("strategies[0]")
        assert str(e.value) == ("strategies[0].template: expected a prompt with exactly one {} "
                                f"(e.g. 'a photo of a {{}}.') or dataset, got {bad!r}")


def test_edge_values_are_accepted():
    lamm_options(label_tokens=1, loss={"param": 0.0, "feature": 0.0, "logits": 0.0, "temperature": 0.01}).validate(
        "strategies[0]")


def test_the_built_template_carries_the_resolved_weights_and_plain_ce_in_eval(tiny_clip, digits):
    ctx = StrategyContext(clip=tiny_clip, class_names=digits.classnames, template="a photo of a {}.",
                          device=torch.device("cpu"), seed=0, shots=4, n_experiences=5)
    opts = lamm_options(softmax="current", loss={"feature": 0.7})
    template = get_strategy("lamm").build(ctx, opts)
    assert (template.weights.param, template.weights.feature, template.softmax) == (0.25, 0.7, "current")
    # one task of every class, as the reference's few-shot scripts: auto is 1 at any shot count
    assert get_strategy("lamm").build(dataclasses.replace(ctx, n_experiences=1), opts).weights.param == 1.0
    assert template.loss_parts == {}  # no step yet

    template = build("lamm", tiny_clip, digits.classnames)
    model = template.model
    model.eval()
    x = torch.randn(4, tiny_clip.embed_dim)
    y = torch.tensor([0, 3, 4, 1])
    template.mbatch = [x, y, torch.zeros(4, dtype=torch.long)]
    template.mb_output = model(x)
    template.is_training = False
    torch.testing.assert_close(template.criterion(), cross_entropy(template.mb_output, y))
