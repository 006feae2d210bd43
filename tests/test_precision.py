"""model.precision: fp16 (the reference's arithmetic), bf16-autocast (the default), fp32.

fp16 builds CLIP as OpenAI's convert_weights does (linear, convolution, attention and projections in
fp16, LayerNorm computing in fp32), holds the token and positional embeddings, the trainable vectors and
the features in fp16, and trains with plain SGD; it runs on the CPU (tests on the tiny model, end to end).
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from builders import dtd_config_data, make_dtd, run_capturing
from lamm_cl import config
from lamm_cl.data.base import Samples
from lamm_cl.errors import ConfigError
from lamm_cl.features import FeatureExtractor
from lamm_cl.features.precision import arithmetic, autocast
from lamm_cl.model.clip import build_clip


@pytest.fixture(scope="module")
def fp16_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return build_clip("lamm-tiny", "none", "cpu", precision="fp16")


def test_fp16_model_holds_the_weights_as_the_reference(fp16_clip, tiny_clip):
    m = fp16_clip.model
    assert fp16_clip.dtype == torch.float16 and tiny_clip.dtype == torch.float32
    # convert_weights' layers in fp16; LayerNorm's own parameters stay fp32 and it computes in fp32
    assert m.visual.conv1.weight.dtype == torch.float16
    assert m.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert m.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float16
    assert m.text_projection.dtype == torch.float16
    assert m.ln_final.weight.dtype == torch.float32 and type(m.ln_final).__name__ == "LayerNormFp32"
    # the reference casts both embeddings with .type(dtype) before use: held in fp16 here
    assert m.token_embedding.weight.dtype == torch.float16 and m.positional_embedding.dtype == torch.float16
    # the same random weights (one init seed), rounded to fp16
    torch.testing.assert_close(m.token_embedding.weight, tiny_clip.model.token_embedding.weight.half())
    torch.testing.assert_close(m.visual.conv1.weight, tiny_clip.model.visual.conv1.weight.half())
    assert all(not p.requires_grad for p in m.parameters())


def test_fp16_towers_compute_in_fp16_and_agree_with_fp32(fp16_clip, tiny_clip):
    prompts = ["a photo of a banded texture.", "a photo of a dotted texture."]
    t16, t32 = fp16_clip.encode_text(prompts), tiny_clip.encode_text(prompts)
    assert t16.dtype == torch.float16 and t32.dtype == torch.float32
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    f16, f32 = fp16_clip.encode_images(images), tiny_clip.encode_images(images)
    assert f16.dtype == torch.float16
    # fp16 has ~3 significant digits: close to the fp32 towers, and not equal to them
    for a, b in ((t16, t32), (f16, f32)):
        rel = (a.float() - b).norm() / b.norm()
        assert 0 < rel < 2e-2


def test_arithmetic_names_what_the_encoder_computes_in():
    cpu = torch.device("cpu")
    assert arithmetic(cpu, "fp16") == "fp16"
    assert arithmetic(cpu, "fp32") == "fp32"
    assert arithmetic(cpu, "bf16-autocast") == "fp32"  # no autocast on the CPU: plain fp32
    assert not torch.is_autocast_enabled("cuda")
    with autocast(torch.device("cuda"), training=True, precision="fp16"):  # fp16 weights: nothing to cast
        assert not torch.is_autocast_enabled("cuda")
    with autocast(torch.device("cuda"), training=True, precision="fp32"):
        assert not torch.is_autocast_enabled("cuda")
    # a CPU build turns a CUDA autocast off by itself, so the checks above cannot tell a no-op from an
    # autocast: the context objects can
    for precision in ("fp16", "fp32"):
        assert isinstance(autocast(torch.device("cuda"), precision=precision), contextlib.nullcontext)
    assert isinstance(autocast(torch.device("cuda"), precision="bf16-autocast"), torch.autocast)
    assert isinstance(autocast(torch.device("cpu"), precision="bf16-autocast"), contextlib.nullcontext)


def test_store_keys_separate_precisions_whose_features_differ(fp16_clip, tiny_clip, tmp_path, digits):
    samples: Samples = digits.test.subset(list(range(6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32_clip = build_clip("lamm-tiny", "none", "cpu", precision="fp32")
    default = FeatureExtractor(tiny_clip, cache_dir=tmp_path)
    half = FeatureExtractor(fp16_clip, cache_dir=tmp_path)
    full = FeatureExtractor(fp32_clip, cache_dir=tmp_path)
    assert half.key(samples) != default.key(samples) and "encoder: fp16" in half.key(samples)
    # on the CPU bf16-autocast is plain fp32: the same features, so the same entry
    assert full.key(samples) == default.key(samples)
    f16, f32 = half.features(samples), default.features(samples)
    assert not torch.equal(f16, f32)
    # the fp16 encoder's own output, stored exactly (fp16 values fit in the float32 store)
    x = torch.stack([fp16_clip.preprocess(samples.image(i)) for i in range(len(samples))])
    torch.testing.assert_close(f16, fp16_clip.encode_images(x).float(), rtol=0, atol=0)
    assert torch.equal(FeatureExtractor(fp16_clip, cache_dir=tmp_path).features(samples), f16)  # read back


def test_finetune_with_fp16_is_refused_naming_the_key():
    data = {"name": "x", "benchmark": {"dataset": "digits", "n_experiences": 2},
            "model": {"arch": "lamm-tiny", "pretrained": "none", "precision": "fp16"},
            "strategies": [{"name": "lamm"}, {"name": "finetune"}]}
    with pytest.raises(ConfigError, match=r"model.precision: fp16 .*finetune.*\(strategies\[1\]\)"):
        config.parse(data)
    with pytest.raises(ConfigError, match=r"model.precision: expected 'bf16-autocast' or 'fp16' or 'fp32', got 'half'"):
        config.parse({**data, "model": {**data["model"], "precision": "half"}})
    assert config.parse({**data, "strategies": [{"name": "lamm"}]}).model.precision == "fp16"
    assert config.parse({k: v for k, v in data.items() if k != "model"} | {"strategies": [{"name": "lamm"}]}
                        ).model.precision == "bf16-autocast"


@pytest.mark.integration
def test_fp16_runs_end_to_end_on_cpu_with_fp16_vectors_and_plain_sgd(tmp_path):
    """LAMM, CoOp+LAMM and MaPLe+LAMM (images) on a 2-class DTD, one experience, in fp16 on the CPU."""
    root = tmp_path / "data"
    make_dtd(root, per_class=3)
    strategies = [{"name": "lamm", "epochs": 2, "batch_size": 2, "lr": 0.5},
                  {"name": "coop_lamm", "epochs": 2, "batch_size": 2, "lr": 0.5},
                  {"name": "maple_lamm", "epochs": 1, "batch_size": 2, "prompt_depth": 2}]
    data = dtd_config_data(root, tmp_path / "out", **{"benchmark.n_experiences": 1, "model.precision": "fp16",
                                                       "strategies": strategies})
    captured, records = run_capturing(data, tmp_path / "out")
    assert [r.strategy for r in records] == ["lamm", "coop_lamm", "maple_lamm"]
    for c, r in zip(captured, records):
        assert r.config["model"]["precision"] == "fp16"
        assert 0 <= r.summary()["last_accuracy"] <= 100
        opt = c.template.optimizer
        assert type(opt) is torch.optim.SGD and getattr(c.template, "scaler", None) is None  # no loss scaling
        trained = [p for g in opt.param_groups for p in g["params"] if p.numel()]
        assert trained
        if c.name != "maple_lamm":
            assert {p.dtype for p in trained} == {torch.float16}, c.name
        else:  # MaPLe's context and first coupling fp16 (self.proj.half()); the deeper prompts fp32
            assert c.template.model.learner.context.dtype == torch.float16
            assert c.template.model.learner.couplings[0].weight.dtype == torch.float16
        # the vectors moved: training happened in fp16 and stayed finite
        after = c.template.model.state_dict()
        assert all(torch.isfinite(v.float()).all() for v in after.values() if v.is_floating_point())
    lamm = captured[0].template.model.labels
    moved = [not torch.equal(lamm.vectors[str(k)], lamm.anchor(k)) for k in lamm.classes]
    assert any(moved) and all(v.dtype == torch.float16 for v in lamm.vectors.values())


def test_a_run_from_before_the_key_counts_as_the_default_precision():
    """Finished runs whose config.yaml has no model.precision ran bf16-autocast: resume and sweeps keep them."""
    from lamm_cl.runner.record import run_config

    base = {"name": "x", "benchmark": {"dataset": "digits"}, "strategies": [{"name": "lamm"}],
            "model": {"arch": "lamm-tiny", "pretrained": "none"}}
    with_key = {**base, "model": {**base["model"], "precision": "bf16-autocast"}}
    assert run_config(base, "lamm") == run_config(with_key, "lamm")
    assert run_config(base, "lamm") != run_config({**base, "model": {**base["model"], "precision": "fp16"}}, "lamm")
