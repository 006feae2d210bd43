"""Every bad input answered with one line and status 2, writing nothing: malformed configs and
arguments (:data:`MALFORMED`), bad output folders, and the regression corpus (:data:`CORPUS`: bad images,
non-finite numbers, out-of-range seeds, ...), run on top of earlier results that must stay byte-identical.
The corpus is generated at test time (tiny PNGs, split files, configs, checkpoints; no binary fixtures).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

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


# --------------------------------------------------------------------------- strategies' options (issues 28.9, 29)


def test_bad_strategy_options_are_refused_without_importing_torch(tmp_path):
    """The options of the built-ins live in lamm_cl.strategy_kit.options (no torch): an unknown key, a wrong type or
    a bad value is refused in the second a config check takes, not after torch, Avalanche and open_clip load."""
    cases = [  # (strategy entry, what the one line names)
        ({"name": "lamm", "epoch": 1}, "strategies[1].epoch: unknown key; known keys here: batch_size, epochs, "),
        ({"name": "maple", "prompt_depth": "deep"}, "strategies[1].prompt_depth: expected an integer, got 'deep'"),
        ({"name": "coop_lamm", "loss": {"param": -1}}, "strategies[1].loss.param: expected 0 or more, got -1.0"),
        ({"name": "ranpac", "M": -5}, "strategies[1].M: expected 0 (no projection) or a positive width, got -5"),
        ({"name": "simplecil", "lr": 0.1}, "strategies[1].lr: simplecil trains nothing"),
        ({"name": "finetune", "trainable": "last_blocks"}, "strategies[1].last_blocks: trainable: last_blocks needs"),
    ]
    configs = []
    for i, (entry, _) in enumerate(cases):
        data = yaml.safe_load(BASE_TEXT)
        data["strategies"] = [{"name": "zeroshot"}, entry]
        configs.append(str(write_yaml(tmp_path / f"c{i}.yaml", data)))
    code = ("import json, sys\nfrom lamm_cl.cli import main\n"
            "codes = [main(['run', c, '--output', sys.argv[2]]) for c in json.loads(sys.argv[1])]\n"
            "print(json.dumps([codes, sorted(m for m in ('torch', 'avalanche', 'open_clip') if m in sys.modules)]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(configs), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    codes, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (codes, heavy) == ([2] * len(cases), []), proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(cases), proc.stderr
    for line, (_, culprit) in zip(errors, cases):
        assert line.startswith("lamm-cl: error: ") and culprit in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_report")
@pytest.mark.parametrize("entry, culprit", [
    ({"name": "maple", "prompt_depth": 3},
     "strategies[1].prompt_depth: 3 asked, lamm-tiny has 2 blocks in its smaller tower; set prompt_depth: 2 or less"),
    ({"name": "coop", "ctx_init": "a photo of a", "n_ctx": 3},
     "strategies[1].ctx_init: 'a photo of a' is 4 tokens but n_ctx is 3; set n_ctx: 4"),
    ({"name": "finetune", "last_blocks": 3}, "strategies[1].last_blocks: 3 asked, the image encoder of lamm-tiny has 2"),
    # lamm-tiny's features are 64 wide, digits has 10 classes: 4·(64·10¹⁰ + 10²⁰ + 2·10¹¹) bytes kept, 8·(2·10²⁰ +
    # 2·10¹¹) for the solve = 2.000000005e21 bytes = 1,776,356.8 PiB, more than any machine holds; the Gram
    # matrix alone is 4e20 bytes = 355,271.4 PiB. Refused before anything is allocated.
    ({"name": "ranpac", "M": 10**10},
     "strategies[1].M: 10000000000 needs about 1,776,356.8 PiB of memory on cpu (its 10000000000 x 10000000000 Gram "
     "matrix alone is 355,271.4 PiB), and "),
], ids=["maple-depth", "coop-ctx-init", "finetune-blocks", "ranpac-M"])
def test_every_strategy_is_checked_before_the_first_one_runs(tmp_path, capsys, entry, culprit):
    """simplecil first, then a strategy the model or the machine cannot hold: the run stops before simplecil
    writes a file, so that the corrected rerun does not find its folder "not empty"."""
    data = yaml.safe_load(BASE_TEXT)
    data["strategies"] = [{"name": "simplecil"}, entry]
    cfg = write_yaml(tmp_path / "c.yaml", data)
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, culprit)
    assert not (tmp_path / "out").exists()


def test_ranpac_memory_worked_by_hand():
    """RanPAC's estimate for M = 100,000 on ViT-B-16 features (512), 100 classes, 5,000 images in an experience.

    float32, kept: projection 512·10⁵ + G 10¹⁰ + Q and W 2·10⁵·100 entries -> 4.02848e10 bytes;
    the solve, float64: G + λI and its factor 2·10¹⁰ + Q and the solution 2·10⁷ -> 1.6016e11 bytes;
    the λ search, smaller: 4·5,000·512 + 12·5,000·10⁵ + 24·4,000² = 6.39424e9 bytes.
    Peak 4.02848e10 + 1.6016e11 = 2.004448e11 bytes = 186.7 GiB; the Gram matrix alone 4e10 = 37.3 GiB.
    """
    from lamm_cl.errors import ConfigError
    from lamm_cl.strategy_kit.options import RanPACOptions

    opts = RanPACOptions(M=100_000)
    assert opts.memory_needed(512, 100, 5000) == (200_444_800_000, 40_000_000_000)
    with pytest.raises(ConfigError) as e:
        opts.check_memory(512, 100, 5000, "cuda:0", 80 * 2**30, "strategies[2]")
    assert str(e.value) == ("strategies[2].M: 100000 needs about 186.7 GiB of memory on cuda:0 (its 100000 x 100000 "
                            "Gram matrix alone is 37.3 GiB), and 80.0 GiB is free there; lower M (RanPAC's is 10000)")
    opts.check_memory(512, 100, 5000, "cuda:0", 200_444_800_000, "strategies[2]")  # fits exactly: no refusal
    opts.check_memory(512, 100, 5000, "cpu", None, "strategies[2]")  # free memory unknown: no refusal
    # M: 0 solves on the features themselves (512 wide); a fixed ridge skips the search
    assert RanPACOptions(M=0, ridge=1.0).memory_needed(512, 10, 100) == (
        4 * (512 * 512 + 2 * 512 * 10) + 8 * (2 * 512 * 512 + 2 * 512 * 10), 4 * 512 * 512)


def test_free_memory_counts_the_cgroup_limit(tmp_path):
    """A SLURM job or a container may hold far less than the machine's free memory: the smallest room left under
    the limits of the process's cgroup and those above it (v2 and v1 layouts), none where nothing is limited."""
    from lamm_cl.strategy_kit.setup import cgroup_room

    v2, proc = tmp_path / "v2", tmp_path / "cgroup"
    for level, limit, used in (("job/step", "1000000", "400000"), ("job", "500000", "300000"), ("", "max", "9")):
        (v2 / level).mkdir(parents=True, exist_ok=True)
        (v2 / level / "memory.max").write_text(limit + "\n")
        (v2 / level / "memory.current").write_text(used + "\n")
    proc.write_text("0::/job/step\n")
    assert cgroup_room(v2, proc) == 200_000  # the job's 500,000 - 300,000, tighter than the step's 600,000
    (v2 / "job" / "memory.max").write_text("max\n")
    assert cgroup_room(v2, proc) == 600_000
    proc.write_text("0::/elsewhere\n")  # a path the mount does not show (a container): only the root is read
    assert cgroup_room(v2, proc) is None
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm").mkdir(parents=True)
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text("8000")
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text("3000")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("1")
    proc.write_text("12:cpu,cpuacct:/slurm\n4:memory:/slurm\n0::/\n")
    assert cgroup_room(v1, proc) == 5000
    assert cgroup_room(v1, tmp_path / "no-such-file") is None
