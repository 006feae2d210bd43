"""Tinyworld: the captioned shape world, its benchmark, the pretraining script and the shipped weights."""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lamm_cl.data import load_dataset
from lamm_cl.errors import ConfigError
from lamm_cl.model.clip import TINYWORLD_FILE, build_clip, resolve_weights, weights_identity
from lamm_cl.tiny import world
from lamm_cl.tiny.__main__ import main as tiny_main
from lamm_cl.tiny.pretrain import PretrainSettings, encode_text, pretrain, sha256

README = Path(__file__).resolve().parent.parent / "README.md"


def plain_scene(shape: str, radius: float = 10.0) -> world.Scene:
    """One white, unturned, plain-filled shape in the middle of a black picture."""
    return world.Scene(shape=world.SHAPES.index(shape), colour=world.COLOUR_NAMES.index("white"), size="big",
                       fill=world.FILLS.index("plain"), position="in the middle", angle=0.0, radius=radius,
                       cx=16.0, cy=16.0, background=(0, 0, 0))


@pytest.mark.parametrize("shape, area", [
    ("circle", math.pi * 10 ** 2),  # pi r^2
    ("ring", math.pi * (10 ** 2 - 5.5 ** 2)),  # outer radius r, inner 0.55 r
    ("square", (2 * 0.78 * 10) ** 2),  # half side 0.78 r
    ("diamond", 2 * 10 ** 2),  # |x| + |y| <= r: a square of diagonal 2r
    ("triangle", 0.5 * (2 * 10) * (1.6 * 10)),  # base at y = -0.6r is 2r wide; apex at y = r: height 1.6r
])
def test_shapes_cover_their_geometric_area(shape, area):
    img = world.render(plain_scene(shape), np.random.default_rng(0))
    covered = img[..., 0].astype(float).sum() / world.COLOURS["white"][0]  # anti-aliased pixels count in part
    assert covered == pytest.approx(area, rel=0.07)  # edges land on a half-pixel grid (2x supersampling)


def test_every_shape_is_its_own_picture():
    imgs = [world.render(plain_scene(s), np.random.default_rng(0))[..., 0] > 120 for s in world.SHAPES]
    for i in range(len(imgs)):
        assert imgs[i].sum() > 60, world.SHAPES[i]
        for j in range(i):
            iou = (imgs[i] & imgs[j]).sum() / (imgs[i] | imgs[j]).sum()
            assert iou < 0.85, (world.SHAPES[i], world.SHAPES[j], iou)


def test_pretraining_never_shows_a_held_out_pair_and_the_benchmark_does():
    rng = np.random.default_rng(3)
    pre = [world.sample_scene(rng) for _ in range(2000)]
    bench = [world.sample_scene(rng, shifted=True) for _ in range(2000)]
    assert not any(world.held_out(s.shape, s.colour) for s in pre)
    held = sum(world.held_out(s.shape, s.colour) for s in bench) / len(bench)
    assert held == pytest.approx(0.25, abs=0.04)  # a quarter of all pairs: (shape + colour) % 4 == 0
    assert max(abs(s.angle) for s in pre) <= 15 < max(abs(s.angle) for s in bench) <= 35


def test_captions_name_the_shape_and_only_true_attributes():
    rng = np.random.default_rng(5)
    vocab = set(world.COLOUR_NAMES) | set(world.SIZES) | set(world.FILLS) | set(world.SHAPES)
    generic = 0
    for _ in range(1000):
        scene = world.sample_scene(rng)
        text = world.caption(scene, rng)
        words = set(re.findall(r"[a-z]+", text))
        # the shape by its name, or one time in five the plain word "shape"
        assert (world.SHAPES[scene.shape] in words) != ("shape" in words), text
        generic += "shape" in words
        said = words & vocab
        truth = {world.SHAPES[scene.shape], world.COLOUR_NAMES[scene.colour], scene.size, world.FILLS[scene.fill]}
        assert said <= truth, (text, truth)
        # the article before the description is always "a", as lamm-cl's "a photo of a {}." says it
        assert re.fullmatch(r"(?:(?:a photo|a picture|an image|a drawing) of )?a [a-z ]+\.", text), text
    assert generic == pytest.approx(1000 * world.GENERIC, abs=40)


def test_pretraining_batches_are_seeded():
    a = world.pretraining_batch(np.random.default_rng(1), 8)
    b = world.pretraining_batch(np.random.default_rng(1), 8)
    c = world.pretraining_batch(np.random.default_rng(2), 8)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_tinyworld_benchmark_split():
    parts = load_dataset("tinyworld")
    # the classes are the colours, in plain words that pretraining's captions use ("a photo of a red shape.")
    assert parts.classnames == ["red shape", "orange shape", "yellow shape", "green shape", "blue shape",
                                "purple shape", "pink shape", "white shape", "brown shape", "grey shape"]
    assert parts.template == "a photo of a {}."
    assert len(parts.train) == 800 and len(parts.test) == 500
    assert np.bincount(parts.train.labels).tolist() == [80] * 10
    assert np.bincount(parts.test.labels).tolist() == [50] * 10
    # a fixed split: the same pixels on every load; train and test share no picture
    again = world.benchmark_images(50, 2002)[0]
    assert np.array_equal(parts.test.images, again)
    train = {img.tobytes() for img in parts.train.images}
    assert not any(img.tobytes() in train for img in parts.test.images)
    assert parts.train.identity != parts.test.identity
    assert parts.train.image(0).size == (32, 32)


def test_benchmark_pictures_have_their_class_colour_under_a_warm_lamp():
    images, labels = world.benchmark_images(3, seed=7)
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    rng = np.random.default_rng(7)
    for i, colour in enumerate(labels):  # the same draws, in the same order, as benchmark_images makes
        scene = world.sample_scene(rng, shifted=True, colour=int(colour))
        light = world.lamp(rng)
        assert scene.colour == colour
        again = world.render(scene, rng, shifted=True, noise=world.BENCHMARK_NOISE, light=tuple(light))
        assert np.array_equal(images[i], again)
        # a warm light: red passes at least as well as green, green at least as well as blue, never brighter
        assert 1.0 >= light[0] >= light[1] >= light[2] > 0
    lights = np.array([world.lamp(np.random.default_rng(s)) for s in range(200)])
    assert lights[:, 0].min() >= 0.7 and lights[:, 0].max() <= 1.0  # brightness 70-100 %
    # at full strength and brightness blue passes 0.42 of its value; at half strength (1 + 0.42) / 2
    assert lights[:, 2].min() >= 0.42 * 0.7 - 1e-9 and lights[:, 2].max() <= 0.71 + 1e-9


def test_the_lamp_multiplies_every_pixel_before_the_noise():
    scene = plain_scene("square")
    white = world.render(scene, np.random.default_rng(0))
    lit = world.render(scene, np.random.default_rng(0), light=(1.0, 0.5, 0.25))
    assert lit[16, 16].tolist() == [240, 120, 60]  # white (240, 240, 240) in the middle of the square
    assert np.array_equal(lit[..., 0], white[..., 0])


def test_cut_text_forward_equals_open_clip(tiny_clip):
    model = tiny_clip.model
    full = tiny_clip.tokenizer(["a photo of a big red striped star on the left.", "a ring."])
    eot = full.argmax(dim=-1)
    cut = full[:, : int(eot.max()) + 1]
    with torch.no_grad():
        assert torch.allclose(encode_text(model, cut, eot), model.encode_text(full), atol=1e-5)


def test_short_pretraining_is_deterministic_and_depends_on_the_seed():
    tiny = dict(scenes=32, epochs=2, batch_size=16, warmup_steps=2, val_scenes=4)  # two steps an epoch
    lines = []
    a = pretrain(PretrainSettings(**tiny), log=lines.append)
    b = pretrain(PretrainSettings(**tiny), log=lambda s: None)
    c = pretrain(PretrainSettings(seed=1, **tiny), log=lambda s: None)
    assert a == b and a != c
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one progress line per epoch
    assert torch.get_num_threads() >= 1 and not torch.are_deterministic_algorithms_enabled()  # restored


def test_pretrain_cli_rejects_bad_arguments(tmp_path, capsys):
    assert tiny_main(["pretrain", "--out", str(tmp_path / "w.pt"), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert tiny_main(["pretrain", "--out", str(tmp_path)]) == 2
    assert "folder" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


def test_shipped_weights_match_the_readme_and_load():
    data = TINYWORLD_FILE.read_bytes()
    assert len(data) <= 8 * 2 ** 20
    stated = re.findall(r"SHA-256: `([0-9a-f]{64})`", README.read_text())
    assert stated == [hashlib.sha256(data).hexdigest()]
    assert resolve_weights("lamm-tiny", "tinyworld") == str(TINYWORLD_FILE)
    assert weights_identity("lamm-tiny", "tinyworld") == weights_identity("lamm-tiny", str(TINYWORLD_FILE))
    clip = build_clip("lamm-tiny", "tinyworld")
    state = torch.load(TINYWORLD_FILE, weights_only=True)
    for name, value in clip.model.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name].float()), name
    assert all(not p.requires_grad for p in clip.model.parameters())


def test_tinyworld_weights_belong_to_lamm_tiny_only():
    with pytest.raises(ConfigError, match="lamm-tiny"):
        resolve_weights("ViT-B-32", "tinyworld")


@pytest.mark.slow
def test_pretraining_script_reproduces_the_shipped_weights(tmp_path):
    """Minutes: re-runs `python -m lamm_cl.tiny pretrain` with its defaults (run with -m slow)."""
    out = tmp_path / "again.pt"
    assert tiny_main(["pretrain", "--out", str(out)]) == 0
    assert sha256(out.read_bytes()) == sha256(TINYWORLD_FILE.read_bytes())


# --------------------------------------------------------------------------- pretrain --out (issue 29)


def _no_training(monkeypatch):
    """Training must not start: the --out checks come first."""
    import lamm_cl.tiny.__main__ as tiny_cli

    def fail(*a, **k):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(tiny_cli, "pretrain", fail)
    return tiny_cli


@pytest.mark.parametrize("case", ["no folder", "read-only", "full", "a folder"])
def test_pretrain_out_is_checked_before_training(tmp_path, monkeypatch, capsys, case):
    import os
    import shutil
    from collections import namedtuple

    tiny_cli = _no_training(monkeypatch)
    out = {"no folder": tmp_path / "missing" / "w.pt", "read-only": tmp_path / "ro" / "w.pt",
           "full": tmp_path / "w.pt", "a folder": tmp_path}[case]
    if case == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        out.parent.mkdir()
        out.parent.chmod(0o500)
    if case == "full":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 9 << 20, 1 << 20))
    assert tiny_cli.main(["pretrain", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--out: ") and err.count("\n") == 1, err
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_pretrain_that_cannot_write_keeps_the_weights_and_leaves_no_tmp(tmp_path, monkeypatch, capsys):
    import lamm_cl.tiny.__main__ as tiny_cli

    monkeypatch.setattr(tiny_cli, "pretrain", lambda settings: b"weights")
    monkeypatch.setattr(tiny_cli.tempfile, "gettempdir", lambda: str(tmp_path / "kept"))
    real = tiny_cli.atomic_write_bytes

    def disk_full_in_out(path, data):
        if path.parent.name == "out":  # the disk filled up while training
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(tiny_cli, "atomic_write_bytes", disk_full_in_out)
    (tmp_path / "out").mkdir()
    (tmp_path / "kept").mkdir()
    assert tiny_cli.main(["pretrain", "--out", str(tmp_path / "out" / "w.pt"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "written to" in err
    kept = list((tmp_path / "kept").iterdir())
    assert [p.read_bytes() for p in kept] == [b"weights"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
