"""Loading frozen CLIP: weights names, checkpoint files and their hashes, devices, sizes (lamm_cl.model.clip)."""
import hashlib
import logging
import math
import types
import warnings
from contextlib import contextmanager

import pytest
import torch

from lamm_cl.errors import ConfigError, DataNotFoundError
from lamm_cl.model import clip as clip_module
from lamm_cl.model.clip import (TINYWORLD_FILE, _looks_like_path, _QuietRandomInit, _resolved_file, build_clip,
                                file_sha256, normalize, resolve_device, resolve_weights, weights_identity)


def _checkpoint(path, shift=0.0):
    """A lamm-tiny state dict saved to ``path``; ``shift`` moves logit_scale, so the bytes differ."""
    state = {k: v.clone() for k, v in build_clip("lamm-tiny", "none").model.state_dict().items()}
    state["logit_scale"] = state["logit_scale"] + shift
    torch.save(state, path)


@pytest.mark.parametrize("name, path_like", [
    ("openai", False), ("laion2b_s34b_b88k", False), ("model.ckpt", False),
    ("weights.pt", True), ("weights.pth", True), ("weights.bin", True), ("weights.safetensors", True),
    ("dir/openai", True), ("/abs/file", True)])
def test_a_name_looks_like_a_path_by_its_separator_or_suffix(name, path_like):
    assert _looks_like_path(name) is path_like


def test_resolve_weights_names_each_kind_and_refuses_unknown_ones(tmp_path, monkeypatch):
    assert resolve_weights("lamm-tiny", "none") is None
    assert resolve_weights("ViT-B-16", "openai") == "openai"
    assert resolve_weights("lamm-tiny", "tinyworld") == str(TINYWORLD_FILE)
    with pytest.raises(ConfigError, match=r"model.arch: unknown architecture 'no-such-arch'; .*'lamm-tiny'"):
        resolve_weights("no-such-arch", "none")
    with pytest.raises(ConfigError, match=r"'tinyworld' weights exist for 'lamm-tiny' only, not 'ViT-B-32'"):
        resolve_weights("ViT-B-32", "tinyworld")
    with pytest.raises(ConfigError, match=r"'nope' is not a tag of ViT-B-16; known: openai, .*laion2b"):
        resolve_weights("ViT-B-16", "nope")
    with pytest.raises(ConfigError, match=r"is not a tag of lamm-tiny; known: \(none\), or a checkpoint"):
        resolve_weights("lamm-tiny", "openai")
    with pytest.raises(DataNotFoundError) as err:
        resolve_weights("lamm-tiny", str(tmp_path / "missing.pt"))
    assert str(err.value) == (f"model.pretrained: checkpoint file {tmp_path / 'missing.pt'} not found; give an "
                              "existing file, an open_clip tag such as 'openai', or 'none'")
    (tmp_path / "a_dir.pt").mkdir()
    with pytest.raises(DataNotFoundError, match="not found"):
        resolve_weights("lamm-tiny", str(tmp_path / "a_dir.pt"))
    # a file without a checkpoint suffix, named relative to the current folder: found because it exists
    (tmp_path / "weights").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("lamm-tiny", "weights") == "weights"
    # ~ is the user's home
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "home.pt").write_bytes(b"x")
    assert resolve_weights("lamm-tiny", "~/home.pt") == str(tmp_path / "home.pt")


def test_missing_tinyworld_file_is_a_data_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_module, "TINYWORLD_FILE", tmp_path / "gone.pt")
    with pytest.raises(DataNotFoundError) as err:
        resolve_weights("lamm-tiny", "tinyworld")
    assert str(err.value) == (f"model.pretrained: the packaged weights {tmp_path / 'gone.pt'} are missing; reinstall "
                              "lamm-cl or make them with `python -m lamm_cl.tiny pretrain --out FILE`")


def test_weights_identity_is_the_tag_or_the_files_hash(tmp_path):
    assert weights_identity("lamm-tiny", "none") == "lamm-tiny:none:seed0"
    assert weights_identity("ViT-B-16", "openai") == "ViT-B-16:openai"
    path = tmp_path / "w.pt"
    path.write_bytes(b"some weights")
    digest = hashlib.sha256(b"some weights").hexdigest()
    assert weights_identity("lamm-tiny", str(path)) == "lamm-tiny:file:" + digest[:20]
    assert weights_identity("lamm-tiny", str(path), sha256="ab" * 32) == "lamm-tiny:file:" + "ab" * 10  # not re-read
    tiny = hashlib.sha256(TINYWORLD_FILE.read_bytes()).hexdigest()
    assert weights_identity("lamm-tiny", "tinyworld") == "lamm-tiny:file:" + tiny[:20]


def test_file_sha256_is_of_the_bytes_across_block_boundaries(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 5000  # 1.2 MiB: more than one 1 MiB block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device: 'banana' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("banana")
    with pytest.raises(ConfigError, match=r"device: 'cuda:1' asked for, but CUDA is not available here"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_quiet_filter_drops_only_open_clips_own_weight_messages():
    quiet = _QuietRandomInit()

    def record(msg):
        return logging.LogRecord("open_clip", logging.WARNING, __file__, 1, msg, None, None)

    assert quiet.filter(record("No pretrained weights loaded for model 'lamm-tiny'")) is False
    assert quiet.filter(record("Failed to download file (x.bin)")) is False
    assert quiet.filter(record("Loaded ViT-B-16 model config.")) is True


def test_random_weights_warn_are_seeded_frozen_and_leave_no_log_filter():
    before = list(logging.getLogger().filters)
    with pytest.warns(UserWarning) as warned:
        first = build_clip("lamm-tiny", "none")
    assert str(warned[0].message) == ("model.pretrained: none -- lamm-tiny has random weights; its accuracies "
                                      "say nothing about pretrained CLIP")
    assert not warned[0].filename.endswith("clip.py")  # it points at the caller (the test, or mutmut's trampoline)
    torch.manual_seed(123)  # another global state: the build draws its own seed
    second = build_clip("lamm-tiny", "none")
    assert logging.getLogger().filters == before
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in first.model.parameters())
    assert not first.model.training
    assert (first.arch, first.pretrained, first.device) == ("lamm-tiny", "none", torch.device("cpu"))
    assert first.identity == "lamm-tiny:none:seed0"
    assert first.weights_record() == {"arch": "lamm-tiny", "pretrained": "none", "file": None, "sha256": None}


def test_a_checkpoint_file_is_loaded_recorded_and_hashed(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    _checkpoint(path, 0.25)
    # the factory's own load names the file: the fallback that asks open_clip again is not used
    monkeypatch.setattr(clip_module, "_resolved_file", lambda *a: pytest.fail("fallback used"))
    clip = build_clip("lamm-tiny", str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert clip.weights_record() == {"arch": "lamm-tiny", "pretrained": str(path), "file": str(path.resolve()),
                                     "sha256": digest}
    assert clip.identity == "lamm-tiny:file:" + digest[:20]
    assert float(clip.model.logit_scale) == pytest.approx(math.log(1 / 0.07) + 0.25, abs=1e-6)


def test_without_the_factory_record_the_file_is_asked_of_open_clip(tmp_path, monkeypatch):
    @contextmanager
    def records_nothing(into):
        yield

    path = tmp_path / "tiny.pt"
    _checkpoint(path)
    monkeypatch.setattr(clip_module, "_record_checkpoint_paths", records_nothing)
    asked, real = [], clip_module._resolved_file
    monkeypatch.setattr(clip_module, "_resolved_file", lambda *a: asked.append(a) or real(*a))
    clip = build_clip("lamm-tiny", str(path))
    import open_clip

    assert asked == [(open_clip, "lamm-tiny", str(path))]
    assert clip.weights_file == str(path.resolve())
    assert clip.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_broken_checkpoint_is_one_data_error_line(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataNotFoundError) as err:
        build_clip("lamm-tiny", str(path))
    msg = str(err.value)
    assert msg.startswith(f"model.pretrained: could not load lamm-tiny weights '{path}' (")
    assert msg.endswith("when offline, download once elsewhere and give the checkpoint file's path")
    assert "\n" not in msg


@pytest.mark.parametrize("error, shown", [(OSError("hub down\nretry later"), "(hub down)"),
                                          (RuntimeError("  "), "(RuntimeError)")])
def test_a_failed_load_shows_the_first_line_of_the_error_or_its_kind(error, shown, monkeypatch):
    import open_clip

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fails)
    with pytest.raises(DataNotFoundError) as err:
        build_clip("ViT-B-16", "openai")
    assert str(err.value) == (f"model.pretrained: could not load ViT-B-16 weights 'openai' {shown}; when offline, "
                              "download once elsewhere and give the checkpoint file's path")
    with pytest.raises(type(error)):  # random weights that fail to build: the error itself, not a weights message
        build_clip("lamm-tiny", "none")


def test_the_model_is_built_on_the_device_asked(monkeypatch):
    import open_clip

    devices, real = [], open_clip.create_model_and_transforms

    def recording(arch, **kwargs):
        devices.append(kwargs.get("device"))
        return real(arch, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", recording)
    assert build_clip("lamm-tiny", "none", "cpu").device == torch.device("cpu")
    assert devices == [torch.device("cpu")]


def test_resolved_file_asks_open_clip_and_never_fails(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    path.write_bytes(b"x")
    configs = {("ViT-B-16", "openai"): {"url": "b16.bin"}}
    fake = types.SimpleNamespace(get_pretrained_cfg=lambda arch, tag: configs.get((arch, tag), {}),
                                 download_pretrained=lambda cfg: "/cache/" + cfg.get("url", "anything"))
    assert _resolved_file(fake, "ViT-B-16", str(path)) == str(path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _resolved_file(fake, "ViT-B-16", "~/w.pt") == str(path)
    assert _resolved_file(fake, "ViT-B-16", "openai") == "/cache/b16.bin"
    assert _resolved_file(fake, "ViT-B-32", "openai") is None  # no config: nothing to ask
    assert _resolved_file(fake, "ViT-B-16", "other") is None

    def offline(cfg):
        raise OSError("offline")

    assert _resolved_file(types.SimpleNamespace(get_pretrained_cfg=fake.get_pretrained_cfg,
                                                download_pretrained=offline), "ViT-B-16", "openai") is None


def test_sizes_and_token_ids_of_the_tiny_model(tiny_clip):
    assert (tiny_clip.embed_dim, tiny_clip.token_width, tiny_clip.image_size) == (64, 64, 32)
    assert tiny_clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)  # open_clip's initial temperature
    assert (tiny_clip.sos_id, tiny_clip.eot_id) == (49406, 49407)  # CLIP's vocabulary
    ids = tiny_clip.tokenizer(["a red shape"])[0].tolist()
    assert tiny_clip.token_ids("a red shape") == ids[1:4] and len(set(ids[1:4])) == 3
    visual = tiny_clip.model.visual
    old = visual.image_size
    try:
        visual.image_size = (48, 48)  # open_clip keeps a pair on some towers
        assert tiny_clip.image_size == 48
    finally:
        visual.image_size = old


def test_tokenize_cuts_every_row_just_after_the_longest_eot(tiny_clip):
    tok = tiny_clip.tokenize(["a", "a red shape", "x y"])
    assert tok.eot.tolist() == [2, 4, 3]
    assert tok.ids.shape == (3, 5)
    assert tok.ids[torch.arange(3), tok.eot].tolist() == [tiny_clip.eot_id] * 3
    assert tok.ids[:, 0].tolist() == [tiny_clip.sos_id] * 3


def test_encode_text_in_batches_and_of_nothing(tiny_clip):
    texts = ["a red shape", "a photo of a blue shape.", "x"]
    whole = tiny_clip.encode_text(texts)
    assert whole.shape == (3, 64)
    assert torch.allclose(tiny_clip.encode_text(texts, batch_size=1), whole, rtol=1e-5, atol=1e-5)
    assert torch.allclose(tiny_clip.encode_text(texts, batch_size=2), whole, rtol=1e-5, atol=1e-5)
    assert tiny_clip.encode_text([]).shape == (0, 64)


def test_encode_images_is_open_clips_encode_image(tiny_clip):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(tiny_clip.encode_images(images), tiny_clip.model.encode_image(images))


def test_text_from_embeddings_of_a_linear_projection(tiny_clip):
    """Some open_clip towers project text with an nn.Linear instead of a matrix."""
    tok = tiny_clip.tokenize(["a red shape"])
    emb = tiny_clip.embed_tokens(tok.ids)
    want = tiny_clip.encode_text_embeddings(emb, tok.eot)
    matrix = tiny_clip.model.text_projection
    linear = torch.nn.Linear(64, 64, bias=False)
    linear.weight.data = matrix.data.t().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        del tiny_clip.model.text_projection
        tiny_clip.model.text_projection = linear
        try:
            got = tiny_clip.encode_text_embeddings(emb, tok.eot)
        finally:
            del tiny_clip.model.text_projection
            tiny_clip.model.text_projection = matrix
    assert torch.allclose(got, want, atol=1e-6)


def test_normalize_makes_rows_unit_length():
    out = normalize(torch.tensor([[[3.0, 4.0], [0.0, -2.0]]]))  # [1, 2, 2]: the last dimension, not the second
    assert torch.allclose(out, torch.tensor([[[0.6, 0.8], [0.0, -1.0]]]))


def test_frozen_clip_takes_the_hash_it_is_given(tmp_path, tiny_clip):
    """build_clip hashes the file once; FrozenCLIP must use that hash, not read the file again."""
    from lamm_cl.model.clip import FrozenCLIP

    path = tmp_path / "w.pt"
    path.write_bytes(b"bytes on disk")
    clip = FrozenCLIP(tiny_clip.model, tiny_clip.preprocess, tiny_clip.tokenizer, "lamm-tiny", str(path),
                      torch.device("cpu"), weights_file=str(path), weights_sha256="ab" * 32)
    assert clip.identity == "lamm-tiny:file:" + "ab" * 10
