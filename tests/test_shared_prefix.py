"""The shared prompt prefix (lamm_cl.model.shared_prefix) against today's full-prompt path.

Every comparison runs both paths on the same inputs in fp32 and asks for agreement within 1e-5 of
the largest entry (text features, losses, gradients): float rounding differs, nothing else may.
"""
from __future__ import annotations

import logging
import re

import open_clip
import pytest
import torch
import torch.nn.functional as F
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from torch import nn

from lamm_cl.losses import LammWeights, lamm_loss
from lamm_cl.model import shared_prefix
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.clip import FrozenCLIP, normalize
from lamm_cl.model.deep_prompts import MapleClassifier, MultiModalPrompts
from lamm_cl.model.labels import LabelTable
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder

# names of 1 to 4 BPE pieces: prompts of different lengths in one batch
NAMES = ["cat", "sea turtle", "maple tree leaf", "dog", "rock beauty fish x", "airplane"]
TEMPLATE = "a photo of a {}."


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    """``a`` equals ``b`` within ``rel`` of ``b``'s largest entry."""
    return a.shape == b.shape and float((a - b).abs().max()) <= rel * float(b.abs().max())


@pytest.fixture(scope="module")
def vit_b16_text():
    """A FrozenCLIP around ViT-B-16's text tower alone, random weights (the image tower is not needed)."""
    cfg = open_clip.get_model_config("ViT-B-16")
    torch.manual_seed(0)
    tower = open_clip.model._build_text_tower(cfg["embed_dim"], open_clip.model.CLIPTextCfg(**cfg["text_cfg"]))
    return FrozenCLIP(tower, None, open_clip.get_tokenizer("ViT-B-16"), "ViT-B-16", "none", torch.device("cpu"))


def test_the_towers_of_clip_fit_and_others_say_why_not(tiny_clip, vit_b16_text):
    assert shared_prefix.unfit_reason(tiny_clip.model) is None
    assert shared_prefix.unfit_reason(vit_b16_text.model) is None

    class NoMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer, self.token_embedding = tiny_clip.model.transformer, tiny_clip.model.token_embedding
            self.positional_embedding, self.ln_final = tiny_clip.model.positional_embedding, tiny_clip.model.ln_final
            self.attn_mask = None

    tower = NoMask()
    assert shared_prefix.unfit_reason(tower) == "the text tower has no causal mask"
    tower.attn_mask = torch.zeros(8, 8)
    assert shared_prefix.unfit_reason(tower) == "the text tower's mask is not causal"
    assert "no open_clip CLIP text tower" in shared_prefix.unfit_reason(nn.Linear(2, 2))
    custom = open_clip.transformer.Transformer(64, 1, 4, qk_norm=True)  # CustomResidualAttentionBlock
    tower.attn_mask, tower.transformer = tiny_clip.model.attn_mask, custom
    assert "CustomResidualAttentionBlock" in shared_prefix.unfit_reason(tower)


@pytest.mark.parametrize("which", ["tiny", "vit_b16"])
def test_prefix_then_rest_equals_the_whole_prompts_features_and_gradients(which, tiny_clip, vit_b16_text):
    clip = tiny_clip if which == "tiny" else vit_b16_text
    encoder = PromptEncoder(clip, ClassPrompts(clip, NAMES, TEMPLATE))
    torch.manual_seed(1)
    context = nn.Parameter(encoder.word_embeddings([0])[0, 1:5].clone() + 0.05 * torch.randn(4, clip.token_width))
    k = [len(n) for n in encoder.prompts.name_ids]  # label vectors of 1..4 pieces, right after the prefix
    labels = {c: nn.Parameter(torch.randn(k[c], clip.token_width) * 0.02) for c in range(len(NAMES)) if c != 3}
    classes = [5, 0, 1, 2, 3, 4]  # any order; class 3 keeps its words
    params = [context, *labels.values()]
    full = encoder.encode(classes, context=context, labels=labels)
    shared = encoder.encode(classes, context=context, labels=labels, prefix=encoder.prefix_state(context))
    assert close(shared, full)
    weights = torch.randn_like(full)
    g_full = torch.autograd.grad((normalize(full) * weights).sum(), params)
    g_shared = torch.autograd.grad((normalize(shared) * weights).sum(), params)
    for a, b in zip(g_shared, g_full):
        assert close(a, b)
    assert float(g_full[0].abs().max()) > 0  # the prefix's gradient reaches the context


def test_prefix_rows_never_carry_the_class_tokens(tiny_clip):
    # the rest runs on the tokens after SOS + prefix only, EOT positions shifted by the prefix
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, TEMPLATE))
    state = encoder.prefix_state()
    assert state.length == 1 + len(tiny_clip.token_ids("a photo of a")) == encoder.prefix_length == 5
    assert len(state.keys) == len(tiny_clip.model.transformer.resblocks)
    heads = tiny_clip.model.transformer.resblocks[0].attn.num_heads
    assert state.keys[0].shape == (heads, 5, tiny_clip.token_width // heads)
    # a prefix of SOS alone (a template with nothing before the name) works too
    bare = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, NAMES, "{}."))
    with torch.no_grad():
        assert close(bare.encode(range(6), prefix=bare.prefix_state()), bare.encode(range(6)))


def _classifier(clip, kind: str) -> PromptClassifier:
    prompts = ClassPrompts(clip, NAMES, TEMPLATE)
    context = None
    if kind in ("coop", "coop_lamm"):
        context = nn.Parameter(clip.embed_tokens(torch.tensor(prompts.prefix_ids)).detach().clone())
    table = None
    if kind in ("lamm", "coop_lamm"):
        table = LabelTable(clip.model.token_embedding.weight, prompts, "all", "name")
    return PromptClassifier(clip, prompts, labels=table, context=context)


def _adapt(model, classes):
    exp = type("Exp", (), {"classes_in_this_experience": classes})()
    avalanche_model_adaptation(model, exp)


def _step(model, x, y):
    """The LAMM objective (CE alone without label vectors) of one training step, and its gradients."""
    logits = model(x)
    if model.labels is None:
        loss = F.cross_entropy(logits, y)
    else:
        t0 = model.original_text_features(model.classes)
        z0 = model.logit_scale * normalize(x) @ t0.t()
        pairs = [(model.labels.vectors[str(c)], model.labels.anchor(c)) for c in model.labels.trainable]
        loss, _ = lamm_loss(logits, z0, y, model.last_text[y], t0[y], pairs, LammWeights(param=1.0))
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, model.last_text, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("kind", ["lamm", "coop", "coop_lamm"])
def test_the_classifiers_step_is_the_same_on_both_paths(kind, tiny_clip):
    runs = []
    for shared in (True, False):
        torch.manual_seed(3)
        model = _classifier(tiny_clip, kind)
        assert model.shared_prefix  # the tiny tower fits
        model.shared_prefix = shared
        _adapt(model, [0, 1, 2])
        _adapt(model, [3, 4, 5])  # old classes frozen, new ones train (LAMM), or the context trains (CoOp)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # away from the words, so t and t0 differ
        model.train()
        x = torch.randn(8, tiny_clip.embed_dim)
        y = torch.tensor([3, 4, 5, 0, 3, 1, 5, 2])
        runs.append(_step(model, x, y))
        model.eval()
        runs[-1] += (model(x),)
    (loss_s, t_s, g_s, ev_s), (loss_f, t_f, g_f, ev_f) = runs
    assert abs(float(loss_s) - float(loss_f)) <= 1e-5 * abs(float(loss_f))
    assert close(t_s, t_f) and close(ev_s, ev_f)
    assert len(g_s) == len(g_f) > 0
    for a, b in zip(g_s, g_f):
        assert close(a, b)


def _count_prefixes(model) -> list:
    calls = []
    real = model.encoder.prefix_state
    model.encoder.prefix_state = lambda *a, **kw: (calls.append(1), real(*a, **kw))[1]
    return calls


def test_coop_encodes_its_prefix_once_per_step_with_gradient(tiny_clip):
    model = _classifier(tiny_clip, "coop_lamm")
    _adapt(model, [0, 1, 2, 3])
    model.train()
    calls = _count_prefixes(model)
    x, y = torch.randn(4, tiny_clip.embed_dim), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        loss, _, grads = _step(model, x, y)  # t and t0: one prefix
        assert len(calls) == step + 1
        for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
            p.grad = g
        opt.step()


def test_lamm_encodes_its_frozen_prefix_once_per_experience(tiny_clip):
    model = _classifier(tiny_clip, "lamm")
    _adapt(model, [0, 1, 2])
    model.train()
    calls = _count_prefixes(model)
    x, y = torch.randn(4, tiny_clip.embed_dim), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        _step(model, x, y)
    assert len(calls) == 1
    state = model.prefix_state()
    assert not state.keys[0].requires_grad  # frozen words in a frozen CLIP: no graph kept
    _adapt(model, [3, 4])  # the next experience starts afresh
    _step(model, x, y)
    assert len(calls) == 2


def test_a_tower_that_does_not_fit_runs_the_full_path_and_says_so(tiny_clip, caplog):
    prompts = ClassPrompts(tiny_clip, NAMES, TEMPLATE)
    with caplog.at_level(logging.INFO, logger="lamm_cl.model.classifier"):
        fits = PromptClassifier(tiny_clip, prompts)
    assert fits.shared_prefix and "text encoder: shared prefix" in caplog.text
    caplog.clear()
    saved = tiny_clip.model.transformer.grad_checkpointing
    tiny_clip.model.transformer.grad_checkpointing = True
    try:
        with caplog.at_level(logging.INFO, logger="lamm_cl.model.classifier"):
            model = PromptClassifier(tiny_clip, prompts)
        _adapt(model, [0, 1])
        model.eval()
        assert not model.shared_prefix and model.prefix_state() is None
        assert "full prompt per class (the shared prefix does not fit: gradient checkpointing is on)" in caplog.text
        assert model(torch.randn(2, tiny_clip.embed_dim)).shape == (2, 2)
    finally:
        tiny_clip.model.transformer.grad_checkpointing = saved


def test_the_run_log_names_the_text_path_once(tiny_clip):
    prompts = ClassPrompts(tiny_clip, NAMES, TEMPLATE)
    lines: list[str] = []
    with shared_prefix.text_path_log(lines.append):
        for _ in range(3):  # strategies x seeds of one run
            PromptClassifier(tiny_clip, prompts)
    PromptClassifier(tiny_clip, prompts)  # after the run: not forwarded
    assert lines == ["  text encoder: shared prefix (the prompt tokens before the class name are encoded once "
                     "and every class's own tokens attend to them)"]
    assert not logging.getLogger("lamm_cl.model").handlers


def _maple(clip, slot: str, depth: int, labels: bool) -> MapleClassifier:
    prompts = ClassPrompts(clip, NAMES, TEMPLATE)  # context "a photo", then "of a" stay words
    torch.manual_seed(4)
    context = clip.embed_tokens(torch.tensor(prompts.prefix_ids[:2])).detach()
    learner = MultiModalPrompts(context, depth, vision_width=48)
    table = None
    if labels:
        table = LabelTable(clip.model.token_embedding.weight, prompts, 1 if slot == "reference" else "all", "name")
        table.add_classes(range(len(NAMES)))
    model = MapleClassifier(clip, prompts, learner, labels=table, label_slot=slot)
    model.keep_original = labels
    model.classes = list(range(len(NAMES)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind, which, depth", [("maple", "tiny", 2), ("maple_lamm name", "tiny", 2),
                                               ("maple_lamm reference", "tiny", 2),
                                               ("maple_lamm reference", "vit_b16", 9)])
def test_maples_text_side_shares_its_prefix_layer_by_layer(kind, which, depth, tiny_clip, vit_b16_text):
    clip = tiny_clip if which == "tiny" else vit_b16_text
    slot = kind.split()[-1] if " " in kind else "name"
    runs = []
    for shared in (True, False):
        model = _maple(clip, slot, depth, labels=kind != "maple")
        assert model.shared_prefix
        model.shared_prefix = shared
        model.train()
        t, t0 = model.text_features()
        w = torch.randn(t.shape, generator=torch.Generator().manual_seed(5))
        loss = (t * w).sum() + ((t0 * w.flip(0)).sum() if t0 is not None else 0.0)
        size = float((t * w).abs().sum())  # the loss cancels down from this: its rounding scale
        text_params = [p for n, p in model.named_parameters() if not n.startswith("learner.couplings")]
        runs.append((t, t0, loss, torch.autograd.grad(loss, text_params)))
        model.eval()
        runs[-1] += (model.text_features()[0],)
    (t_s, t0_s, loss_s, g_s, ev_s), (t_f, t0_f, loss_f, g_f, ev_f) = runs
    assert close(t_s, t_f) and close(ev_s, ev_f)
    assert (t0_s is None) == (t0_f is None) == (kind == "maple")
    if t0_s is not None:
        assert close(t0_s, t0_f)
    assert abs(float(loss_s) - float(loss_f)) <= 1e-5 * size
    assert len(g_s) == len(g_f) == (depth + (len(NAMES) if kind != "maple" else 0))
    for a, b in zip(g_s, g_f):
        assert close(a, b) and float(b.abs().max()) > 0


def test_length_groups_pad_short_names_apart_from_a_long_one_only_where_it_pays():
    # costs by hand: rows x bucket's longest + a per-bucket overhead of 2**20 / width**2 tokens
    many_short = [3] * 100 + [14]
    assert shared_prefix.length_groups(many_short, 512) == [(3, 3), (14, 14)]  # 300+4 + 14+4 < 101*14+4
    assert shared_prefix.length_groups([3, 3, 4], 512) == [(3, 4)]  # 3*4+4 = 16 < 2*3+4 + 4+4 = 18
    assert shared_prefix.length_groups([3, 3, 4, 4, 4], 512) == [(3, 4)]  # 5*4+4 = 24 < 6+4 + 12+4 = 26
    assert shared_prefix.length_groups([4, 3, 3, 3, 3, 3], 512) == [(3, 3), (4, 4)]  # 15+4 + 4+4 = 27 < 6*4+4 = 28
    assert shared_prefix.length_groups(many_short, 64) == [(3, 3), (14, 14)]  # overhead 256: 300+256 + 14+256 < 1414+256
    assert shared_prefix.length_groups([3] * 10 + [14], 64) == [(3, 14)]  # 11*14+256 = 410 < 30+256 + 14+256 = 556


def test_rows_in_several_length_buckets_come_back_in_their_order(tiny_clip):
    names = ["cat"] * 20 + ["a very long winding name of many many pieces"] + ["dog"] * 20
    encoder = PromptEncoder(tiny_clip, ClassPrompts(tiny_clip, names, TEMPLATE))
    lengths = (encoder.prompts.eot - encoder.prefix_length + 1).tolist()
    assert len(shared_prefix.length_groups(lengths, tiny_clip.token_width)) == 2
    classes = torch.randperm(len(names), generator=torch.Generator().manual_seed(0)).tolist()
    labels = {c: torch.randn(1, tiny_clip.token_width) * 0.02 for c in classes}  # every row differs
    with torch.no_grad():
        full = encoder.encode(classes, labels=labels)
        shared = encoder.encode(classes, labels=labels, prefix=encoder.prefix_state())
    assert close(shared, full)


def test_coop_bench_runs_both_paths_and_reports_their_ratio_and_memory():
    # a smoke test of `python -m lamm_cl.speed speed`'s CoOp part on the tiny model; timings are not checked
    from lamm_cl.speed import coop_speed

    lines: list[str] = []
    ratio = coop_speed("lamm-tiny", n_classes=30, batch=4, steps=1, log=lines.append)
    assert lines[-1] == f"coop 30-class step: {ratio:.2f}x"
    (agree,) = [x for x in lines if x.startswith("coop loss on the same batch")]
    assert "shared prefix" in agree
    (memory,) = [x for x in lines if x.startswith("coop step peak tensor memory")]
    full, shared = (int(v) for v in re.findall(r"(\d+) MiB", memory))
    assert full >= shared  # never more than the full path; both measured (0 MiB rounds small steps down)


def test_device_check_steps_every_strategy_and_prints_a_cost_line():
    # the CUDA check's code, run on the CPU with the tiny model (the CLI refuses without CUDA)
    from lamm_cl.speed import device_check, main

    lines: list[str] = []
    depth = {"prompt_depth": 2}  # lamm-tiny has 2 blocks
    ok = device_check("lamm-tiny", "cpu", coop_classes=12, classes=4, warmup=1, repeats=1,
                      strategies=["zeroshot", "lamm", "maple", "rapf"], options={"maple": depth}, log=lines.append)
    assert ok, lines
    assert lines[-1].startswith("cost: {encode_image_s: ") and "feature_step_s" in lines[-1]
    stepped = {x.split(":")[0] for x in lines if " ms per step " in x}
    assert stepped == {"lamm", "maple", "rapf"}
    assert any(x.startswith("zeroshot: no training step") for x in lines)
    if not torch.cuda.is_available():
        assert main(["device"]) == 2
