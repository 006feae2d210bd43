"""Every bad input answered with one line and status 2, writing nothing: malformed configs and
arguments (:data:`MALFORMED`), bad output folders, and the regression corpus (:data:`CORPUS`: bad images,
non-finite numbers, out-of-range seeds, ...), run on top of earlier results that must stay byte-identical.
The corpus is generated at test time (tiny PNGs, split files, configs, checkpoints; no binary fixtures).
"""
from __future__ import annotations

import os

import pytest
import torch
import yaml

from lamm_cl import checkpoint, runner, safe_io
from lamm_cl.cli import main
from lamm_cl.runner.record import run_config

from builders import (child, dtd_config_data, earlier_results, files_under, make_dtd, one_line,
                      snapshot, write_png, write_yaml)


BASE = {
    "name": "bad",
    "seeds": [0],
    "device": "cpu",
    "benchmark": {"dataset": "digits", "n_experiences": 5},
    "model": {"arch": "lamm-tiny", "pretrained": "none"},
    "features": {"cache": False},
    "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}],
}


def _with(path: str, value):
    """BASE with the value at dotted ``path`` set (``...`` deletes it)."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    *head, last = path.split(".")
    node = data
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return yaml.safe_dump(data)


BASE_TEXT = yaml.safe_dump(BASE)


# (id, config text, extra arguments)
MALFORMED = [
    ("broken-yaml", "name: [unclosed\nseeds: [0\n", []),
    ("broken-yaml-indent", "name: x\n  seeds: - [\n", []),
    ("tab-indent", "name: x\n\tseeds: [0]\n", []),
    ("not-a-mapping", "- just\n- a list\n", []),
    ("empty-file", "", []),
    ("unknown-top-key", _with("nmae", "x"), []),
    ("unknown-benchmark-key", _with("benchmark.n_experiment", 5), []),
    ("unknown-strategy-key", _with("strategies.1.epoch", 1), []),
    ("unknown-loss-key", _with("strategies.1.loss", {"feture": 1.0}), []),
    ("seeds-wrong-type", _with("seeds", "zero"), []),
    ("seed-item-wrong-type", _with("seeds", [0, "a"]), []),
    ("seeds-repeated", _with("seeds", [1, 1]), []),
    ("device-wrong-type", _with("device", 5), []),
    ("device-unknown", _with("device", "gpu9"), []),
    ("n-experiences-wrong-type", _with("benchmark.n_experiences", "five"), []),
    ("shots-float", _with("benchmark.shots", 1.5), []),
    ("epochs-wrong-type", _with("strategies.1.epochs", "many"), []),
    ("epochs-negative", _with("strategies.1.epochs", -1), []),
    ("lr-wrong-type", _with("strategies.1.lr", "fast"), []),
    ("label-tokens-wrong", _with("strategies.1.label_tokens", "some"), []),
    ("cache-wrong-type", _with("features.cache", "yes"), []),
    ("model-not-mapping", _with("model", "ViT-B-16"), []),
    ("strategies-not-list", _with("strategies", {"name": "lamm"}), []),
    ("strategies-empty", _with("strategies", []), []),
    ("template-without-braces", _with("benchmark.template", "a photo"), []),
    ("missing-name", _with("name", ...), []),
    ("missing-benchmark", _with("benchmark", ...), []),
    ("missing-dataset", _with("benchmark.dataset", ...), []),
    ("missing-strategies", _with("strategies", ...), []),
    ("strategy-without-name", _with("strategies.1.name", ...), []),
    ("more-experiences-than-classes", _with("benchmark.n_experiences", 11), []),
    ("shots-below-one", _with("benchmark.shots", 0), []),  # more shots than a class has is fine (issue 11.7)
    ("split-does-not-add-up", _with("benchmark", {"dataset": "digits", "classes_per_experience": [5, 4]}), []),
    ("class-order-out-of-range", _with("benchmark.class_order", [0, 1, 99]), []),
    ("unknown-strategy", _with("strategies.1.name", "lamz"), []),
    ("unknown-avalanche-plugin", _with("strategies.1.plugins", [{"name": "replya"}]), []),
    ("plugin-file-missing", _with("plugins", ["no_such_plugin.py"]), []),
    ("unknown-dataset", _with("benchmark.dataset", "mnistt"), []),
    ("missing-data", _with("benchmark", {"dataset": "imagefolder", "root": "/nonexistent/data",
                                         "n_experiences": 2}), []),
    ("missing-weights", _with("model.pretrained", "/nonexistent/weights.pt"), []),
    ("unknown-arch", _with("model.arch", "ViT-Q-99"), []),
    ("unknown-precision", _with("model.precision", "half"), []),
    ("set-without-equals", BASE_TEXT, ["--set", "seeds"]),
    ("set-bad-index", BASE_TEXT, ["--set", "strategies.7.epochs=1"]),
    ("set-wrong-type", BASE_TEXT, ["--set", "benchmark.n_experiences=abc"]),
    ("set-unknown-key", BASE_TEXT, ["--set", "benchmark.foo=1"]),
    ("resume-and-overwrite", BASE_TEXT, ["--resume", "--overwrite"]),
    ("unknown-flag", BASE_TEXT, ["--frobnicate"]),
]


def _case(name, text, extra):
    return pytest.param(text, extra, id=name)


@pytest.mark.usefixtures("no_report")
@pytest.mark.parametrize("text,extra", [_case(*c) for c in MALFORMED])
def test_bad_input_is_one_line_status_2_and_writes_nothing(tmp_path, capsys, text, extra):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamm-cl: error: "), err
    assert "Traceback" not in err
    assert not out.exists()
    assert files_under(tmp_path) == ["config.yaml"]


@pytest.mark.usefixtures("no_report")
def test_unknown_avalanche_plugin_is_refused_before_any_work(tmp_path):
    from lamm_cl import config
    from lamm_cl.errors import ConfigError

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(BASE_TEXT)
    cfg = config.load(cfg_path)
    cfg.strategies[1].options.plugins = [{"name": "replya"}]  # what `plugins: [{name: replya}]` should parse to
    with pytest.raises(ConfigError, match=r"strategies\[1\]\.plugins\[0\]\.name: unknown plugin 'replya'"):
        runner.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_report")
def test_bad_output_folders(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE_TEXT)
    (tmp_path / "a_file").write_text("x")
    missing = tmp_path / "nope.yaml"
    for args in (["--output", str(tmp_path / "a_file")], ["--output", str(tmp_path / "a_file" / "sub")]):
        assert main(["run", str(cfg), "--no-progress", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "a_file" in lines[0]
    assert main(["run", str(missing), "--output", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "x" and files_under(tmp_path) == ["a_file", "config.yaml"]


@pytest.mark.usefixtures("no_report")
def test_unwritable_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; permissions cannot be tested")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(BASE_TEXT)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", str(cfg), "--output", str(locked / "out")]) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def _run(root, out, *extra, **changes):
    cfg = write_yaml(root / "config.yaml", dtd_config_data(root, out, **changes))
    return ["run", str(cfg), "--no-progress", "--overwrite", *extra]


def truncated_image(root, out):
    victim = sorted((root / "dtd" / "images").rglob("*_test_1.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    return _run(root, out), victim.name


def garbage_image(root, out):
    victim = sorted((root / "dtd" / "images").rglob("*_train_2.png"))[-1]
    victim.write_bytes(b"this is not a png at all" * 3)
    return _run(root, out), victim.name


def missing_later_image(root, out):
    victim = sorted((root / "dtd" / "images").rglob("*_test_2.png"))[-1]  # the very last one listed
    victim.unlink()
    return _run(root, out), victim.name


def nan_lr(root, out):
    data = dtd_config_data(root, out, strategies=[{"name": "lamm", "epochs": 1}])
    text = yaml.safe_dump(data, sort_keys=False).replace("epochs: 1", "epochs: 1\n  lr: .nan")
    (root / "config.yaml").write_text(text)
    return ["run", str(root / "config.yaml"), "--overwrite"], "strategies[0].lr"


def inf_temperature(root, out):
    return _run(root, out, "--set", "strategies.0.name=lamm", "--set", "strategies.0.loss.temperature=.inf"), \
        "strategies[0].loss.temperature"


def nan_in_plugin_entry(root, out):
    return _run(root, out, "--set", "strategies.0.name=lamm",
                "--set", "strategies.0.plugins=[{name: replay, mem_size: .nan}]"), "strategies[0].plugins[0].mem_size"


def seed_too_large(root, out):
    return _run(root, out, seeds=[2**32]), "seeds[0]"


def seed_negative(root, out):
    return _run(root, out, seeds=[-1]), "seeds[0]"


def order_seed_too_large(root, out):
    return _run(root, out, **{"benchmark.class_order": "seeded", "benchmark.order_seed": 2**40}), \
        "benchmark.order_seed"


def template_too_long(root, out):
    return _run(root, out, **{"benchmark.template": "a photo " * 40 + "of a {}."}), "benchmark.template"


def empty_name(root, out):
    return _run(root, out, name=""), "name"


def key_twice(root, out):
    text = yaml.safe_dump(dtd_config_data(root, out), sort_keys=False)
    (root / "config.yaml").write_text(text.replace("device: cpu\n", "device: cpu\ndevice: cuda\n"))
    return ["run", str(root / "config.yaml"), "--overwrite"], "'device' is written twice"


def cache_dir_is_a_file(root, out):
    (root / "a_file").write_text("not a folder")
    return _run(root, out, **{"features.cache_dir": str(root / "a_file" / "features")}), "a_file"


def output_name_too_long(root, out):
    return _run(root, out, "--output", str(root / ("r" * 300))), "rrrrrrrr"


def empty_class_name(root, out):
    for split in ("train", "test"):
        for name in ("___", "cat"):
            write_png(root / "folder" / split / name / "a.png", 1)
    return _run(root, out, **{"benchmark.dataset": "imagefolder", "benchmark.root": str(root / "folder")}), "___"


def malformed_checkpoint(root, out):
    cfg = write_yaml(root / "config.yaml", dtd_config_data(root, out, strategies=[{"name": "lamm"}]))
    from lamm_cl import config

    loaded = config.load(cfg)
    run_dir = out / "lamm" / "seed0"
    run_dir.mkdir(parents=True)
    meta = {"strategy": "lamm", "seed": 0, "config": run_config(loaded.to_dict(), "lamm")}

    torch.save({"format": checkpoint.FORMAT, "meta": meta, "experience": "one", "matrix": [[1.0]]},
               run_dir / checkpoint.CHECKPOINT_FILE)
    return ["run", str(cfg), "--no-progress", "--resume"], "experience"


def report_with_plots_a_file(root, out):
    for p in (out / "plots").iterdir():
        p.unlink()
    (out / "plots").rmdir()
    (out / "plots").write_text("a file where the plots folder goes")
    return ["report", str(out)], "plots"


CORPUS = [truncated_image, garbage_image, missing_later_image, nan_lr, inf_temperature, nan_in_plugin_entry,
          seed_too_large, seed_negative, order_seed_too_large, template_too_long, empty_name, key_twice,
          cache_dir_is_a_file, output_name_too_long, empty_class_name, malformed_checkpoint,
          report_with_plots_a_file]


@pytest.mark.parametrize("case", CORPUS, ids=[c.__name__ for c in CORPUS])
def test_corpus_one_line_status_2_earlier_results_intact(tmp_path, capsys, case):
    root, out = tmp_path / "data", tmp_path / "out"
    make_dtd(root)
    earlier_results(out)
    argv, culprit = case(root, out)
    before = snapshot(out)
    capsys.readouterr()
    assert main(argv) == 2
    one_line(capsys.readouterr().err, culprit)
    assert snapshot(out) == before
    assert not (out / safe_io.LOCK_FILE).exists()


def test_no_third_party_warning_before_the_error_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(dtd_config_data(tmp_path, tmp_path / "out", **{"strategies.0.name": "lamz"})))
    proc = child("run", str(cfg))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert len(err.splitlines()) == 1 and err.startswith("lamm-cl: error: strategies[0].name"), err
