"""lamm-cl's training follows the LAMM reference code term by term.

Each expected value is computed here by hand or by replaying the reference's own formula
(gaojingsheng/LAMM trainers/coop.py, helpers.py; Dassl.pytorch lr_scheduler.py, data_manager.py,
base_dataset.py), never by the function under test.
"""
from __future__ import annotations


import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import SupervisedPlugin

from lamm_cl import config
from lamm_cl.benchmark import Plan, make_plan, make_streams
from lamm_cl.data.base import ArraySamples, DatasetParts
from lamm_cl.errors import ConfigError
from lamm_cl.model.clip import normalize
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
from lamm_cl.registry import get_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.lamm import lamm_objective
from lamm_cl.strategy_kit.recipe import warmup_cosine

from builders import adapt

NAMES = ["abyssinian", "american bulldog", "great pyrenees", "sphynx"]
PETS = "a photo of a {}, a type of pet."  # a dataset template that is not LAMM's


def _ctx(clip, names=NAMES, template=PETS, plugins=()):
    return StrategyContext(clip=clip, class_names=list(names), template=template, device=torch.device("cpu"),
                           seed=0, plugins=list(plugins))


def _build(clip, name, options=None, **ctx_kw):
    opts = config.from_dict(get_strategy(name).options, options or {}, "strategies[0]")
    opts.validate("strategies[0]")
    return get_strategy(name).build(_ctx(clip, **ctx_kw), opts)


# --------------------------------------------------------------------------- 1. LAMM's prompt


def test_lamm_trains_on_a_photo_of_a_name_whatever_the_dataset_template(tiny_clip):
    model = _build(tiny_clip, "lamm").model
    assert model.encoder.prompts.template == "a photo of a {}."
    # the reference tokenises "a photo of a" + " " + name + "." as one string (PromptLearner, clip.tokenize)
    ref = open_clip.tokenize([f"a photo of a {n}." for n in NAMES])
    ids = model.encoder.prompts.ids
    for c in range(len(NAMES)):
        n = int(model.encoder.prompts.eot[c]) + 1
        assert ids[c, :n].tolist() == ref[c, :n].tolist()


def test_lamm_template_dataset_and_an_explicit_template(tiny_clip):
    assert _build(tiny_clip, "lamm", {"template": "dataset"}).model.encoder.prompts.template == PETS
    other = "itap of a {}."
    assert _build(tiny_clip, "lamm", {"template": other}).model.encoder.prompts.template == other


def test_zeroshot_keeps_the_dataset_template(tiny_clip):
    assert _build(tiny_clip, "zeroshot").model.encoder.prompts.template == PETS


def test_lamm_template_without_one_placeholder_is_a_config_error(tiny_clip):
    opts = config.from_dict(get_strategy("lamm").options, {"template": "a photo"}, "strategies[1]")
    with pytest.raises(ConfigError, match=r"strategies\[1\]\.template: expected a prompt with exactly one"):
        opts.validate("strategies[1]")


def test_label_tokens_min_counts_name_pieces_as_the_reference(tiny_clip):
    # reference: name_lens = [len(_tokenizer.encode(name))], k = min(name_lens), and the label vectors
    # take the k tokens right after "a photo of a" (token_classes = embedding of the name, 1:k+1)
    tok = open_clip.tokenizer.SimpleTokenizer()
    name_lens = [len(tok.encode(n)) for n in NAMES]
    k = min(name_lens)
    assert k == 2 and max(name_lens) > k  # "abyssinian" is 2 pieces; the others are longer
    model = _build(tiny_clip, "lamm").model
    adapt(model, range(len(NAMES)))
    assert model.labels.k == [k] * len(NAMES)
    words = tiny_clip.model.token_embedding.weight
    for c, name in enumerate(NAMES):
        first = torch.tensor(tok.encode(name)[:k])
        assert torch.equal(model.labels.original(c), words[first])
        start = 1 + len(tok.encode("a photo of a"))
        assert model.encoder.prompts.ids[c, start:start + k].tolist() == first.tolist()


# --------------------------------------------------------------------------- 2. the LR schedule


def test_schedule_is_dassls_constant_warmup_then_recounted_cosine():
    # E = 5, lr 0.002: epoch 0 at 1e-5; epoch e >= 1 at lr * (1 + cos(pi (e-1) / 5)) / 2
    # cos(0) = 1, cos(pi/5) = 0.809017, cos(2pi/5) = 0.309017, cos(3pi/5) = -0.309017
    f = warmup_cosine(5, 0.002)
    lrs = [0.002 * f(e) for e in range(5)]
    assert lrs == pytest.approx([1e-5, 0.002, 0.002 * 0.9045085, 0.002 * 0.6545085, 0.002 * 0.3454915], rel=1e-6)


def test_schedule_replays_dassls_schedulers():
    # Dassl: CosineAnnealingLR(T_max=E) wrapped in a constant warm-up of one epoch, WARMUP_RECOUNT on:
    # the successor steps only after the warm-up epoch (dassl/optim/lr_scheduler.py:21-39)
    E, lr = 7, 0.002
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(E))
    expected = []
    for epoch in range(E):
        if epoch == 0:
            expected.append(1e-5)
            continue
        expected.append(opt.param_groups[0]["lr"])
        cosine.step()
    f = warmup_cosine(E, lr)
    assert [lr * f(e) for e in range(E)] == pytest.approx(expected, rel=1e-6)


def test_one_epoch_keeps_the_full_rate():
    assert warmup_cosine(1, 0.002)(0) == 1.0  # documented deviation: Dassl would train at 1e-5 only


class _Recorder(SupervisedPlugin):
    """The LR of each training epoch and the number of iterations in it."""

    def __init__(self):
        super().__init__()
        self.lrs, self.iterations = [], []

    def before_training_epoch(self, strategy, **kwargs):
        self.iterations.append(0)

    def after_training_iteration(self, strategy, **kwargs):
        if self.iterations[-1] == 0:
            self.lrs.append(strategy.optimizer.param_groups[0]["lr"])
        self.iterations[-1] += 1


def _toy_scenario(clip, per_class: list[list[int]]):
    """Random features, ``per_class[t][i]`` training images of experience t's i-th class."""
    rng = np.random.default_rng(0)
    experiences, train_index, test_index, labels = [], [], [], []
    c0 = 0
    for counts in per_class:
        cls = list(range(c0, c0 + len(counts)))
        c0 += len(counts)
        start = len(labels)
        for c, n in zip(cls, counts):
            labels.extend([c] * n)
        experiences.append(cls)
        train_index.append(np.arange(start, len(labels)))
        test_index.append(np.arange(start, len(labels)))
    feats = torch.as_tensor(rng.standard_normal((len(labels), clip.embed_dim)), dtype=torch.float32)
    labels = np.asarray(labels)
    plan = Plan(dataset="toy", class_order=list(range(c0)), class_names=NAMES[:c0], experiences=experiences,
                train_index=train_index, test_index=test_index, template=PETS, order_name="explicit")

    def read(t, idx):
        return lambda i: feats[idx[i]]

    return make_streams(plan, read, read, labels, labels)


@pytest.mark.parametrize("strategy", ["lamm", "coop_lamm"])
def test_training_runs_the_schedule_and_drops_the_last_partial_batch(tiny_clip, strategy):
    torch.manual_seed(0)
    rec = _Recorder()
    template = _build(tiny_clip, strategy, {"epochs": 3, "batch_size": 4, "lr": 0.002},
                      names=NAMES[:3], plugins=[rec])
    scenario = _toy_scenario(tiny_clip, [[5, 5], [2]])  # 10 images, then 2
    template.train(scenario.train_stream[0])
    assert rec.lrs == pytest.approx([1e-5, 0.002, 0.002 * 0.75], rel=1e-6)  # (1 + cos(pi/3)) / 2 = 0.75
    assert rec.iterations == [2, 2, 2]  # 10 // 4: the partial batch of 2 is dropped (Dassl), not 3
    template.train(scenario.train_stream[1])
    assert rec.iterations[3:] == [1, 1, 1]  # fewer images than a batch: all of them, in one batch


def test_coop_drops_the_last_partial_batch_too(tiny_clip):
    rec = _Recorder()
    template = _build(tiny_clip, "coop", {"epochs": 1, "batch_size": 4}, names=NAMES[:2], plugins=[rec])
    template.train(_toy_scenario(tiny_clip, [[5, 4]]).train_stream[0])
    assert rec.iterations == [2]


# --------------------------------------------------------------------------- 3. t0 of CoOp+LAMM


def _batch(clip):
    torch.manual_seed(1)
    x = torch.randn(6, clip.embed_dim)
    y = torch.tensor([0, 1, 2, 0, 3, 1])
    return x, y


def _perturbed_coop_lamm(clip, loss):
    template = _build(clip, "coop_lamm", {"loss": loss})
    model = template.model
    adapt(model, [0, 1, 2, 3])
    torch.manual_seed(2)
    with torch.no_grad():
        model.context.add_(0.05 * torch.randn_like(model.context))
        for v in model.labels.vectors.values():
            v.add_(0.05 * torch.randn_like(v))
    model.train()
    return template, model


def test_coop_lamm_logits_term_sends_gradient_into_the_context_through_t0(tiny_clip):
    # only the logits term (lambda_l = 1, everything else weighted 0 except CE, which has no t0)
    loss = {"param": 0.0, "feature": 0.0, "logits": 1.0, "temperature": 2.0}
    template, model = _perturbed_coop_lamm(tiny_clip, loss)
    x, y = _batch(tiny_clip)
    total, _ = lamm_objective(model, x, model(x), y, template.weights)
    (ours,) = torch.autograd.grad(total, model.context)

    # by hand, as the reference's CustomCLIP.forward: t0 from the current context, no no_grad
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, "a photo of a {}."))
    classes = [0, 1, 2, 3]
    vectors = {c: model.labels.vectors[str(c)] for c in classes}
    originals = {c: model.labels.original(c) for c in classes}

    def reference(t0_grad: bool):
        t = normalize(encoder.encode(classes, context=model.context, labels=vectors))
        t0 = normalize(encoder.encode(classes, context=model.context, labels=originals))
        if not t0_grad:
            t0 = t0.detach()
        f = normalize(x)
        z, z0 = tiny_clip.logit_scale * f @ t.t(), tiny_clip.logit_scale * f @ t0.t()
        p = F.softmax(z / 2.0, dim=1)  # helpers.distillation(logits, fix_logits, T=2)
        ll = F.cross_entropy(z0 / 2.0, p) * 4.0
        return torch.autograd.grad(F.cross_entropy(z, y) + ll, model.context)[0]

    expected, detached = reference(True), reference(False)
    assert not torch.allclose(expected, detached, rtol=1e-3, atol=1e-9)  # the t0 path matters here
    # The model encodes the shared prompt prefix once (lamm_cl.model.shared_prefix), the reference every
    # prompt whole: float rounding apart, hence an error floor of 1e-5 of the largest entry (single
    # entries here cancel down to 0.5 % of the largest, where even the fp32 full path is 1.2e-4 off float64).
    scale = 1e-5 * float(expected.abs().max())
    assert torch.allclose(ours, expected, rtol=1e-4, atol=scale)
    assert not torch.allclose(ours, detached, rtol=1e-4, atol=scale)


def test_coop_lamm_feature_term_still_detaches_t0(tiny_clip):
    loss = {"param": 0.0, "feature": 1.0, "logits": 0.0}
    template, model = _perturbed_coop_lamm(tiny_clip, loss)
    x, y = _batch(tiny_clip)
    t0 = model.original_text_features([0, 1, 2, 3])
    assert t0.requires_grad  # it carries gradient ...
    total, _ = lamm_objective(model, x, model(x), y, template.weights)
    (ours,) = torch.autograd.grad(total, model.context)
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, "a photo of a {}."))
    classes = [0, 1, 2, 3]
    t = normalize(encoder.encode(classes, context=model.context, labels=model.labels.as_mapping(classes)))
    with torch.no_grad():
        t0 = normalize(encoder.encode(classes, context=model.context, labels=model.labels.originals(classes)))
    z = tiny_clip.logit_scale * normalize(x) @ t.t()
    feat = (1 - F.cosine_similarity(t[y], t0[y], dim=-1)).mean()  # ... that the feature term does not use
    expected = torch.autograd.grad(F.cross_entropy(z, y) + feat, model.context)[0]
    # the same error floor as above (shared prefix vs whole prompts: float rounding, which also moves with
    # the thread count: one torch thread under xdist puts single entries 1e-4 apart)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_t0_follows_the_context_after_a_step(tiny_clip):
    template, model = _perturbed_coop_lamm(tiny_clip, {})
    x, y = _batch(tiny_clip)
    opt = torch.optim.SGD([model.context], lr=10.0)
    lamm_objective(model, x, model(x), y, template.weights)[0].backward()
    opt.step()
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, "a photo of a {}."))
    with torch.no_grad():
        fresh = normalize(encoder.encode([0, 1, 2, 3], context=model.context,
                                         labels=model.labels.originals([0, 1, 2, 3])))
        assert torch.allclose(model.original_text_features([0, 1, 2, 3]), fresh, rtol=1e-5, atol=1e-6)


def test_a_frozen_context_caches_t0_but_never_serves_it_stale(tiny_clip):
    template, model = _perturbed_coop_lamm(tiny_clip, {})
    model.context.requires_grad_(False)  # freeze_after_first: nothing on the prompt trains
    calls = []
    real = model.encoder.encode
    model.encoder.encode = lambda classes, **kw: (calls.append(list(classes)), real(classes, **kw))[1]
    first = model.original_text_features([0, 1])
    assert not first.requires_grad
    model.original_text_features([1, 0])
    assert calls == [[0, 1]]  # a constant: encoded once
    # a checkpoint load (what --resume does) puts another context in place
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(4)
    state["context"] = torch.randn_like(state["context"])
    model.load_state_dict(state)
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, "a photo of a {}."))
    with torch.no_grad():
        fresh = normalize(encoder.encode([0, 1], context=model.context, labels=model.labels.originals([0, 1])))
    assert torch.allclose(model.original_text_features([0, 1]), fresh, rtol=1e-5, atol=1e-6)
    assert float((first - fresh).abs().max()) > 1e-4  # the stale features would have been wrong


def test_lamm_t0_is_a_cached_constant(tiny_clip):
    model = _build(tiny_clip, "lamm").model
    adapt(model, [0, 1])
    model.train()
    calls = []
    real = model.encoder.encode
    model.encoder.encode = lambda classes, **kw: (calls.append(list(classes)), real(classes, **kw))[1]
    a = model.original_text_features([0, 1])
    b = model.original_text_features([0, 1])
    assert not a.requires_grad and torch.equal(a, b) and calls == [[0, 1]]


# --------------------------------------------------------------------------- 5. label_init: random


def test_random_init_anchors_the_parameter_loss_to_the_random_start(tiny_clip):
    torch.manual_seed(3)
    template = _build(tiny_clip, "lamm", {"label_init": "random", "loss": {"param": 1.0}})
    model = template.model
    adapt(model, [0, 1, 2, 3])
    model.train()
    table = model.labels
    start = {c: table.vectors[str(c)].detach().clone() for c in range(4)}
    words = tiny_clip.model.token_embedding.weight
    names = [model.encoder.prompts.name_ids[c][: table.k[c]] for c in range(4)]
    assert all(not torch.allclose(start[c], words[torch.tensor(names[c])]) for c in range(4))
    x, y = _batch(tiny_clip)
    # reference: fix_token is a deep copy of token_classes after normal_, so L_param starts at 0
    assert lamm_objective(model, x, model(x), y, template.weights)[1]["param"] == 0.0
    delta = {c: 0.01 * (c + 1) * torch.ones_like(start[c]) for c in range(4)}
    with torch.no_grad():
        for c in range(4):
            table.vectors[str(c)].add_(delta[c])
    expected = sum(float((d ** 2).sum()) for d in delta.values())
    parts = lamm_objective(model, x, model(x), y, template.weights)[1]
    assert parts["param"] == pytest.approx(expected, rel=1e-4)
    # t0 still comes from the real name embeddings (forward_test's token_suffix_test)
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, "a photo of a {}."))
    with torch.no_grad():
        t0 = normalize(encoder.encode([0, 1, 2, 3], labels={c: words[torch.tensor(names[c])] for c in range(4)}))
    assert torch.allclose(model.original_text_features([0, 1, 2, 3]), t0, rtol=1e-5, atol=1e-6)


def test_name_init_keeps_its_state_dict(tiny_clip):
    model = _build(tiny_clip, "lamm").model
    adapt(model, [0, 1])
    assert not any(k.startswith("labels.start_") for k in model.state_dict())
    assert torch.equal(model.labels.anchor(0), model.labels.original(0))


# --------------------------------------------------------------------------- 7. fewer images than shots


def _parts(counts: list[int]) -> DatasetParts:
    labels = np.repeat(np.arange(len(counts)), counts)
    test = np.repeat(np.arange(len(counts)), 2)
    return DatasetParts(name="toy", classnames=NAMES[: len(counts)],
                        train=ArraySamples(np.zeros((len(labels), 4, 4), np.uint8), labels, "toy-train"),
                        test=ArraySamples(np.zeros((len(test), 4, 4), np.uint8), test, "toy-test"))


def test_a_class_with_fewer_images_than_shots_takes_them_all():
    parts = _parts([6, 2, 6, 3])
    b = config.parse({"name": "t", "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": 4,
                                                 "class_order": [0, 1, 2, 3]},
                      "strategies": [{"name": "zeroshot"}]}).benchmark
    plan = make_plan(parts, b, seed=1)
    tr = parts.train.labels
    per_class = [int((tr[np.concatenate(plan.train_index)] == c).sum()) for c in range(4)]
    assert per_class == [4, 2, 4, 3]  # Dassl's generate_fewshot_dataset: all items of a short class
    assert np.array_equal(np.sort(plan.train_index[0][tr[plan.train_index[0]] == 1]), np.flatnonzero(tr == 1))
    assert plan.short_classes == [("american bulldog", 2), ("sphynx", 3)]
    note = plan.shots_note(4)
    assert "\n" not in note and "'american bulldog' (2)" in note and "'sphynx' (3)" in note
    assert plan.shots_note(4) is not None and make_plan(_parts([6, 6, 6, 6]), b, seed=1).shots_note(4) is None


def test_dry_run_prints_one_line_for_short_classes(tmp_path, capsys):
    from lamm_cl import cli

    cfg = tmp_path / "short.yaml"
    cfg.write_text("name: short\ndevice: cpu\nseeds: [0]\n"
                   "benchmark: {dataset: digits, n_experiences: 2, shots: 100000}\n"
                   "model: {arch: lamm-tiny, pretrained: none}\nstrategies: [{name: zeroshot}]\n")
    assert cli.main(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "shots asked" in line]
    assert len(lines) == 1 and "10 of 10 classes have fewer" in lines[0] and "'zero' (" in lines[0]


# --------------------------------------------------------------------------- 8. views of few-shot images


def test_views_are_made_of_the_drawn_few_shot_images_only(tiny_clip, digits, tmp_path):
    from lamm_cl.features import FeatureExtractor
    from lamm_cl.runner.inputs import Inputs, few_shot_images

    cfg = config.parse({"name": "t", "seeds": [0, 1], "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": 3},
                        "features": {"train_views": 2}, "strategies": [{"name": "lamm", "epochs": 2}]})
    plans = {s: make_plan(digits, cfg.benchmark, s) for s in cfg.seeds}
    used = few_shot_images(cfg, plans)
    drawn = {int(i) for p in plans.values() for idx in p.train_index for i in idx}
    assert used.tolist() == sorted(drawn) and len(drawn) <= 2 * 10 * 3  # two seeds x 10 classes x 3 shots
    extractor = FeatureExtractor(tiny_clip, cache_dir=tmp_path)
    sizes = []
    real = extractor.features
    extractor.features = lambda samples, view=None, desc="": (sizes.append((view, len(samples))),
                                                               real(samples, view=view, desc=desc))[1]
    inputs = Inputs(digits, tiny_clip, extractor, train_views=2, views_of=used)
    idx = plans[1].train_index[1]
    got = inputs.reader("features", "train")(1, idx)(4)
    assert sizes == [(0, len(used))]  # not the 1,000-odd images of the whole split
    row = int(np.flatnonzero(used == idx[4])[0])
    assert torch.equal(got, real(digits.train.subset(used), view=0)[row].float())
    no_views = config.parse({"name": "t", "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": 3},
                             "strategies": [{"name": "lamm"}]})
    assert few_shot_images(no_views, plans) is None


# --------------------------------------------------------------------------- 8, 9. the benchmark files

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
# every shipped file read once for the module (PyYAML's pure-Python loader; two tests per file below)
SHIPPED = {p: __import__("yaml").safe_load(p.read_text()) for p in sorted((ROOT / "benchmarks").rglob("*.yaml"))}
FEW_SHOT_FILES = [p for p, data in SHIPPED.items() if (data.get("benchmark") or {}).get("shots")]
LAMM_FAMILY = ("lamm", "coop_lamm", "maple_lamm")


@__import__("functools").cache
def _parsed(path):
    """The file's data as read and its parsed config (config.parse copies the data; the tests only read)."""
    return SHIPPED[path], config.parse(SHIPPED[path])


def test_there_are_few_shot_benchmark_files():
    assert len(FEW_SHOT_FILES) >= 11  # one split_<dataset>.yaml per CoOp dataset at least


@pytest.mark.parametrize("path", FEW_SHOT_FILES, ids=lambda p: p.name)
def test_few_shot_files_cache_a_fresh_view_for_every_epoch(path):
    _, cfg = _parsed(path)
    # strategies that read the centre crop (simplecil, ranpac, rapf: augmented_views=False) need no views
    epochs = [e.options.epochs for e in cfg.strategies
              if get_strategy(e.name).inputs == "features" and get_strategy(e.name).augmented_views
              and e.options.epochs > 1]
    views = cfg.features.train_views
    assert epochs and views in epochs, path.name  # a fresh view every epoch for the longest such schedule ...
    # ... but a longer one (canonical CoOp's 200 epochs in lamm_paper/fewshot_*.yaml) reads each view the
    # same whole number of times, as its comment and the README say
    assert all(e <= views or e % views == 0 for e in epochs), path.name


@pytest.mark.parametrize("path", FEW_SHOT_FILES, ids=lambda p: p.name)
def test_few_shot_files_state_epochs_and_lambda_p(path):
    data, cfg = _parsed(path)
    shots = cfg.benchmark.shots
    b = cfg.benchmark
    n_exp = len(b.sequence or []) or len(b.classes_per_experience or []) or b.n_experiences  # sequence: per dataset
    # the reference: incremental (base-to-new) scripts pass --shots 16, so lambda_p = 1/shots; the main
    # few-shot scripts pass no --shots, so lambda_p = 1 (one experience of all classes)
    expected = 1.0 / shots if (n_exp or 1) > 1 else 1.0
    entries = [e for e in data["strategies"] if e["name"] in LAMM_FAMILY and e.get("label", e["name"]) == e["name"]]
    assert entries, path.name
    for e in entries:
        assert "epochs" in e, f"{path.name}: {e['name']} does not state its epochs"
        param = (e.get("loss") or {}).get("param")
        assert isinstance(param, (int, float)) and not isinstance(param, bool), f"{path.name}: {e['name']} loss.param"
        assert param == pytest.approx(expected), path.name


# --------------------------------------------------------------------------- 9, 10. the README says so


def test_readme_states_protocols_and_precision():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## LAMM as implemented"):]
    section = section[: section.index("\n## ", 3)]
    assert "1/16 = 0.0625" in section and "`--shots 16`" in section and "no `--shots`" in section
    assert "fp16" in section and "fp32" in section and "bf16 autocast" in section
    assert "lr·½(1 + cos(π(e−1)/E))" in section and "E = 1" in section
