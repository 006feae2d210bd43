"""Keeping what was learned (issue 28, item 7): ``save_model: true`` writes a run's trained model after
its last experience (``<strategy>/seed<k>/model.pt``: the trained tensors and what rebuilds the rest,
never CLIP's weights), and ``lamm_cl.load_model`` turns it back into a classifier that scores new images
exactly as the run's last evaluation did -- or among class names the user gives, new ones included."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lamm_cl
from lamm_cl import config
from lamm_cl.errors import ConfigError, UserError
from lamm_cl.results import read_run
from lamm_cl.runner.record import run_config
from lamm_cl.saved_model import MODEL_FILE

# the strategies that train something, cheaply: LAMM's label vectors, CoOp's context, a linear head (all
# three on image features), and MaPLe's deep prompts (on the images themselves: the other input path)
TRAINED = ("lamm", "coop", "linear_probe", "maple")
OPTIONS = {"maple": {"prompt_depth": 2}}  # lamm-tiny has 2 blocks


def _data() -> dict:
    return {
        "name": "saved", "seeds": [0], "device": "cpu", "save_model": True,
        # tinyworld's shapes (200 test images; test_sequence.py keeps their features in the same session store)
        "benchmark": {"dataset": "tinyworld_shapes", "n_experiences": 2, "class_order": "seeded", "order_seed": 0,
                      "shots": 4},
        "model": {"arch": "lamm-tiny", "pretrained": "tinyworld"},
        "strategies": [{"name": "zeroshot", "save_model": False},
                       *({"name": n, "epochs": 1, "batch_size": 8, **OPTIONS.get(n, {})} for n in TRAINED)]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One run of :func:`_data` (its report skipped), the benchmark's test images, them preprocessed
    (once: as the run's feature extractor does, with CLIP's own transform), and the run's CLIP."""
    from lamm_cl.data import load_dataset
    from lamm_cl.runner import run

    out = tmp_path_factory.mktemp("saved") / "out"
    run(config.parse(_data()), out, progress=False)
    test = load_dataset("tinyworld_shapes").test
    clip = lamm_cl.load_model(out / "lamm" / "seed0").clip
    x = torch.stack([clip.preprocess(test.image(i)) for i in range(len(test))])
    return out, test, x, clip


def _last_row(model, rec, test, x) -> list[float]:
    """The accuracy (%) on each experience's test images, predicted among every class seen (as the run
    evaluates), counted here from ``model``'s predicted class names."""
    remap = {c: i for i, c in enumerate(rec.class_order)}
    labels = np.array([remap.get(int(y), -1) for y in test.labels])
    row = []
    for j, classes in enumerate(rec.experiences):
        idx = np.flatnonzero(np.isin(labels, classes))
        assert len(idx) == rec.test_counts[j]
        predicted = model.predict(x[torch.as_tensor(idx)])
        truth = [rec.class_names[k] for k in labels[idx]]
        row.append(100.0 * sum(p == t for p, t in zip(predicted, truth)) / len(idx))
    return row


@pytest.mark.integration
@pytest.mark.parametrize("strategy", TRAINED)
def test_load_model_reproduces_the_runs_last_evaluation(saved, strategy):
    out, test, x, clip = saved
    run_dir = out / strategy / "seed0"
    rec = read_run(run_dir)
    model = lamm_cl.load_model(run_dir, clip=clip)
    assert model.strategy == strategy and model.class_names == rec.class_names  # 2 experiences: all seen
    assert _last_row(model, rec, test, x) == rec.matrix[-1].tolist()
    # PIL images score as their preprocessed tensors; one image [3, H, W] is a batch of one
    images = [test.image(i) for i in range(5)]
    torch.testing.assert_close(model.scores(images), model.scores(x[:5]), rtol=0, atol=0)
    assert model.scores(x[0]).shape == (1, len(rec.class_names))


@pytest.mark.integration
def test_the_saved_model_is_small_and_refers_to_clip(saved):
    out, _, _, clip = saved
    model = lamm_cl.load_model(out / "lamm" / "seed0", clip=clip)
    clip_bytes = sum(t.numel() * t.element_size() for t in model.clip.model.state_dict().values())
    for strategy in TRAINED:
        assert (out / strategy / "seed0" / MODEL_FILE).stat().st_size < clip_bytes / 20, strategy
    # the CLIP the model encodes text with is the one given to load_model, not a copy that came with it
    held = [v for m in model.model.modules() for v in vars(m).values()]
    held += [x for v in held if isinstance(v, (list, tuple)) for x in v]
    assert any(v is clip for v in held)
    assert not (out / "zeroshot" / "seed0" / MODEL_FILE).exists()  # its entry says save_model: false


@pytest.mark.integration
def test_other_weights_or_no_model_are_refused(saved, tiny_clip):
    out = saved[0]
    with pytest.raises(UserError, match="SHA-256"):
        lamm_cl.load_model(out / "coop" / "seed0", clip=tiny_clip)  # random weights, not tinyworld's
    with pytest.raises(UserError, match="no saved model"):
        lamm_cl.load_model(out / "zeroshot" / "seed0")


def _plain() -> dict:
    """:func:`_data` with only the options every strategy has (parsed without the strategy registry)."""
    data = _data()
    for entry in data["strategies"]:
        for key in OPTIONS.get(entry["name"], {}):
            entry.pop(key)
    return data


def test_save_model_changes_no_run_config_and_is_checked():
    base = config.parse(_plain(), strategy_options=lambda name: lamm_cl.StrategyOptions)
    data = _plain()
    data["save_model"] = False
    data["strategies"][1]["save_model"] = True
    other = config.parse(data, strategy_options=lambda name: lamm_cl.StrategyOptions)
    assert [e.saves_model(base) for e in base.strategies] == [False, True, True, True, True]
    assert [e.saves_model(other) for e in other.strategies] == [False, True, False, False, False]
    # keeping the model changes no number: a --resume keeps the runs made without it
    for label in ("zeroshot", "lamm"):
        assert run_config(base.to_dict(), label) == run_config(other.to_dict(), label)
    assert other.to_dict()["strategies"][1]["save_model"] is True
    data["strategies"][2]["save_model"] = "yes"
    with pytest.raises(ConfigError, match=r"strategies\[2\]\.save_model"):
        config.parse(data, strategy_options=lambda name: lamm_cl.StrategyOptions)


class _WithStatistics(torch.nn.Module):
    """A model whose scoring reads ``W`` only; ``G`` is a statistic for further training (as RanPAC's)."""

    saved_model_skips = ("G",)

    def __init__(self):
        super().__init__()
        self.register_buffer("G", torch.ones(300, 300))
        self.register_buffer("W", torch.arange(6.0).reshape(3, 2))

    def forward(self, x):
        return x[:, :3] @ self.W


def test_statistics_a_model_marks_are_left_out_and_the_live_model_is_untouched(tmp_path, tiny_clip):
    from types import SimpleNamespace

    from lamm_cl import checkpoint, saved_model

    cfg = config.parse(_plain(), strategy_options=lambda name: lamm_cl.StrategyOptions)
    model = _WithStatistics()
    G = model.G
    path = saved_model.save(tmp_path / MODEL_FILE, template=SimpleNamespace(model=model),
                            refs=checkpoint.clip_references(tiny_clip), cfg=cfg, entry=cfg.strategies[1],
                            class_names=["a", "b"], prompt_template="a {}", inputs="features", clip=tiny_clip)
    assert model.G is G  # put back once saved
    assert path.stat().st_size < 300 * 300 * 4 / 10
    loaded = lamm_cl.load_model(tmp_path, clip=tiny_clip)
    assert loaded.model.G.numel() == 0 and torch.equal(loaded.model.W, model.W)
    assert loaded.class_names == ["a", "b"] and loaded.strategy == "lamm"


def _zero_shot(clip, model, x, prompt: str) -> torch.Tensor:
    """Zero-shot CLIP's logit of ``prompt`` for images ``x``, by hand: the image features as the run stored
    them (``features.dtype``) and the prompt's text, both normalised, times CLIP's logit scale."""
    with torch.no_grad():
        f = clip.encode_images(x).float()
        if model.config["features"]["dtype"] == "float16":
            f = f.half().float()
        t = clip.encode_text([prompt]).float()
    f, t = f / f.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    return clip.logit_scale * f @ t.t()


@pytest.mark.integration
def test_class_names_score_trained_classes_with_their_text_and_new_ones_by_name(saved):
    out, _, x, clip = saved
    x = x[:8]
    lamm = lamm_cl.load_model(out / "lamm" / "seed0", clip=clip)
    names, full = lamm.class_names, lamm.scores(x)
    # only trained names (any order, case and spacing aside): exactly the columns the run scores
    order = list(range(len(names)))[::-1]
    asked = [" " + names[i].upper() for i in order]
    torch.testing.assert_close(lamm.scores(x, class_names=asked), full[:, order], rtol=0, atol=0)
    # a new name: the trained classes keep their text (label vectors: the same scores), the new one is
    # zero-shot CLIP with LAMM's prompt
    mixed = lamm.scores(x, class_names=[*names, "purple star"])
    assert not torch.allclose(full[:, :1], _zero_shot(clip, lamm, x, f"a photo of a {names[0]}."), atol=1e-3)
    torch.testing.assert_close(mixed[:, :-1], full, rtol=0, atol=1e-4)
    torch.testing.assert_close(mixed[:, -1:], _zero_shot(clip, lamm, x, "a photo of a purple star."), rtol=0,
                               atol=1e-4)
    assert lamm.predict(x, class_names=[*names, "purple star"]) == [[*names, "purple star"][i]
                                                                     for i in mixed.argmax(dim=1).tolist()]
    # CoOp's trained context carries to the new name; MaPLe (on the images) keeps its trained columns too
    coop = lamm_cl.load_model(out / "coop" / "seed0", clip=clip)
    new = coop.scores(x, class_names=[*names, "purple star"])
    torch.testing.assert_close(new[:, :-1], coop.scores(x), rtol=0, atol=1e-4)
    assert not torch.allclose(new[:, -1], mixed[:, -1], atol=1e-3)
    maple = lamm_cl.load_model(out / "maple" / "seed0", clip=clip)
    torch.testing.assert_close(maple.scores(x, class_names=[*names, "purple star"])[:, :-1], maple.scores(x),
                               rtol=0, atol=1e-4)


@pytest.mark.integration
def test_a_strategy_without_open_vocabulary_refuses_new_names(saved):
    out, _, x, clip = saved
    probe = lamm_cl.load_model(out / "linear_probe" / "seed0", clip=clip)
    names = probe.class_names
    torch.testing.assert_close(probe.scores(x[:4], class_names=names[1::-1]), probe.scores(x[:4])[:, [1, 0]],
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"linear_probe cannot score classes it has not trained \('purple star'"):
        probe.predict(x[:4], class_names=[names[0], "purple star"])
    with pytest.raises(ValueError, match="class_names: expected a non-empty list"):
        probe.scores(x[:4], class_names=names[0])
