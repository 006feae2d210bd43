"""Evaluation-only targets (``benchmark.evaluate_on``) and ImageNet's variants (V2, Sketch, A, R) in CoOp's layout.

The data is a miniature ImageNet the tests build (6 classes with fake wnids, noise images) and its variants,
whose images are copies of ImageNet's val images: the same pixels give the same features, so a variant's
score can be checked against the run's own evaluation of ImageNet (same classes, same images, same text).
"""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import make_dtd, one_line, write_png, write_yaml
from lamm_cl import api, config, runner
from lamm_cl.cli import main
from lamm_cl.data import load_dataset
from lamm_cl.errors import ConfigError, DataNotFoundError, UserError
from lamm_cl.results import TARGETS_COLUMNS, read_run

WNIDS = [f"n0100000{i}" for i in range(1, 7)]
NAMES = ["goldfish", "tabby cat", "golden retriever", "church", "airliner", "tractor"]
FOLDERS = {"imagenet_sketch": ("imagenet-sketch", "images"), "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
           "imagenet_r": ("imagenet-rendition", "imagenet-r"),
           "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val")}
A_CLASSES, R_CLASSES = [0, 1, 2], [3, 4, 5]  # the "200 of 1,000": A holds experience 0's classes, R experience 1's


def classnames_txt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a wnid of the full list that no folder holds: the variants use only the file's lines they need
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)) + "n09999999 unused class\n")


def make_imagenet(root: Path, train: int = 4, val: int = 2) -> None:
    """A CoOp-layout ImageNet (images/{train,val}/<wnid>/, classnames.txt) of 6 classes and its four variants,
    each variant's images copies of the val images of its classes."""
    folder = root / "imagenet"
    classnames_txt(folder / "classnames.txt")
    for k, w in enumerate(WNIDS):
        for i in range(train):
            write_png(folder / "images" / "train" / w / f"{w}_{i}.png", 1000 * k + i)
        for i in range(val):
            write_png(folder / "images" / "val" / w / f"val_{k}_{i}.png", 1000 * k + 500 + i)
    for name, (top, sub) in FOLDERS.items():
        classnames_txt(root / top / "classnames.txt")
        keep = {"imagenet_a": A_CLASSES, "imagenet_r": R_CLASSES}.get(name, range(6))
        for k in keep:
            dest = root / top / sub / (str(k) if name == "imagenetv2" else WNIDS[k])
            shutil.copytree(folder / "images" / "val" / WNIDS[k], dest)
    (root / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("not a class")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_tiny")
    make_imagenet(root)
    make_dtd(root)
    return root


# --------------------------------------------------------------------------- the loaders


@pytest.mark.parametrize("name,classes", [("imagenet_sketch", range(6)), ("imagenetv2", range(6)),
                                          ("imagenet_a", A_CLASSES), ("imagenet_r", R_CLASSES)])
def test_variant_loaders_read_coops_layout(data_root, name, classes):
    parts = load_dataset(name, data_root)
    assert parts.class_keys == [WNIDS[k] for k in classes]  # sorted wnid folders (V2: the file's order)
    assert parts.classnames == [NAMES[k] for k in classes]
    assert len(parts.train) == 0 and len(parts.test) == 2 * len(classes)
    assert parts.test.labels.tolist() == [i for i in range(len(classes)) for _ in range(2)]
    top, sub = FOLDERS[name]
    first = WNIDS[classes[0]] if name != "imagenetv2" else "0"
    assert parts.test.paths[0].startswith(str(data_root / top / sub / first))
    assert parts.template == "a photo of a {}."


def test_imagenetv2_folder_number_is_the_line_of_classnames(tmp_path):
    classnames_txt(tmp_path / "imagenetv2" / "classnames.txt")
    write_png(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "4" / "a.png", 1)
    write_png(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "10" / "a.png", 2)
    with pytest.raises(UserError, match="not a class number 0..6"):
        load_dataset("imagenetv2", tmp_path)
    shutil.rmtree(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "10")
    parts = load_dataset("imagenetv2", tmp_path)
    assert parts.classnames == ["airliner"] and parts.class_keys == [WNIDS[4]]


def test_variant_missing_pieces_are_named(tmp_path):
    with pytest.raises(DataNotFoundError, match="imagenet_r: dataset folder not found: .*imagenet-rendition"):
        load_dataset("imagenet_r", tmp_path)
    (tmp_path / "imagenet-sketch" / "images" / "n0").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="classnames.txt"):
        load_dataset("imagenet_sketch", tmp_path)
    classnames_txt(tmp_path / "imagenet-sketch" / "classnames.txt")
    with pytest.raises(UserError, match="no name for 1 class folders"):
        load_dataset("imagenet_sketch", tmp_path)


# --------------------------------------------------------------------------- config and dry run


def _cfg(root: Path, out: Path, strategies, targets, **bench) -> dict:
    return {"name": "dg_tiny", "output": str(out), "seeds": [0], "device": "cpu",
            "benchmark": {"dataset": "imagenet", "root": str(root), "n_experiences": 2, "class_order": "identity",
                          "evaluate_on": targets, **bench},
            "model": {"arch": "lamm-tiny", "pretrained": "none"},
            "features": {"cache": True, "cache_dir": str(root / "cache")},
            "strategies": strategies}


@pytest.mark.parametrize("targets,culprit", [
    ([{"dataset": "imagenet_z"}], "benchmark.evaluate_on[0].dataset: unknown dataset 'imagenet_z'"),
    ([{"dataset": "imagenet_a"}, {"dataset": "imagenet_a"}], "benchmark.evaluate_on[1]: imagenet_a in"),
    ([{"dataset": "imagenet"}], "benchmark.evaluate_on[0]: imagenet in"),
    ([{"dataset": "dtd", "template": "no slot"}], "benchmark.evaluate_on[0].template"),
])
def test_bad_targets_are_one_line_status_2_nothing_written(tmp_path, capsys, targets, culprit):
    path = write_yaml(tmp_path / "c.yaml", _cfg(tmp_path, tmp_path / "out", [{"name": "zeroshot"}], targets))
    assert main(["run", str(path)]) == 2
    one_line(capsys.readouterr().err, culprit)
    assert not (tmp_path / "out").exists()


def test_a_target_from_another_root_is_another_dataset(tmp_path):
    cfg = config.parse(_cfg(tmp_path, tmp_path / "o", [{"name": "zeroshot"}],
                            [{"dataset": "imagenet", "root": str(tmp_path / "elsewhere")}]))
    assert cfg.benchmark.evaluate_on[0].root == str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="listed twice"):
        config.parse(_cfg(tmp_path, tmp_path / "o", [{"name": "zeroshot"}],
                          [{"dataset": "dtd"}, {"dataset": "dtd", "root": str(tmp_path)}]))


def test_missing_target_is_one_line_status_2_nothing_written(data_root, tmp_path, capsys):
    data = _cfg(data_root, tmp_path / "out", [{"name": "zeroshot"}],
                [{"dataset": "imagenet_sketch"}, {"dataset": "eurosat"}])
    path = write_yaml(tmp_path / "c.yaml", data)
    for extra in (["--dry-run"], []):
        assert main(["run", str(path), *extra]) == 2
        one_line(capsys.readouterr().err, "benchmark.evaluate_on[1]: eurosat: dataset folder not found")
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_each_target(data_root, tmp_path, capsys):
    data = _cfg(data_root, tmp_path / "out", [{"name": "zeroshot"}],
                [{"dataset": "imagenet_a"}, {"dataset": "dtd", "template": "{} pattern."}])
    assert main(["run", str(write_yaml(tmp_path / "c.yaml", data)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("target imagenet_a: 3 classes, 6 test images (evaluated after every experience, among its own "
            "classes; all trained classes: scored with the trained text)") in out
    assert "target dtd: 2 classes, 6 test images" in out and "0 trained classes, 2 scored by name" in out
    assert "'{} pattern.'" in out


@pytest.mark.parametrize("path", ["benchmarks/lamm_paper/dg_imagenet.yaml", "benchmarks/lamm_paper/xd_imagenet.yaml"])
def test_paper_files_dry_run(path, data_root, tmp_path, capsys):
    assert main(["run", path, "--dry-run", "--set", f"benchmark.root={tmp_path}"]) == 2
    one_line(capsys.readouterr().err, "imagenet: dataset folder not found")
    cfg = config.load(path, [f"benchmark.root={data_root}"])
    assert cfg.seeds == [1, 2, 3] and cfg.benchmark.shots == 16 and cfg.benchmark.n_experiences == 1
    if "dg_" in path:
        assert [t.dataset for t in cfg.benchmark.evaluate_on] == ["imagenetv2", "imagenet_sketch", "imagenet_a",
                                                                 "imagenet_r"]
        assert main(["run", path, "--dry-run", "--set", f"benchmark.root={data_root}",
                     "--set", "model.arch=lamm-tiny", "--set", "model.pretrained=none",
                     # MaPLe's depth 3 is deeper than the tiny model's 2 blocks (refused by the dry run)
                     "--set", "strategies.maple.prompt_depth=2", "--set", "strategies.maple_lamm.prompt_depth=2"]) == 0
        out = capsys.readouterr().out
        assert "target imagenet_r: 3 classes, 6 test images" in out and "target imagenetv2: 6 classes" in out
    else:
        assert len(cfg.benchmark.evaluate_on) == 10 and "imagenet" not in {t.dataset for t in cfg.benchmark.evaluate_on}
        assert main(["run", path, "--dry-run", "--set", f"benchmark.root={data_root}"]) == 2
        one_line(capsys.readouterr().err, "benchmark.evaluate_on[0]: caltech101: dataset folder not found")


# --------------------------------------------------------------------------- end to end on the tiny model

TARGETS = [{"dataset": "imagenet_sketch"}, {"dataset": "imagenet_a"}, {"dataset": "imagenet_r"}, {"dataset": "dtd"}]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """zeroshot, lamm and linear_probe on the tiny ImageNet in 2 experiences of 3 classes, every target
    scored after each; and zeroshot run directly on DTD (its own prompt, and LAMM's)."""
    out = tmp_path_factory.mktemp("dg_run")
    strategies = [{"name": "zeroshot"}, {"name": "lamm", "epochs": 2, "batch_size": 4},
                  {"name": "linear_probe", "epochs": 1, "batch_size": 4}]
    records = {r.strategy: r for r in runner.run(config.parse(_cfg(data_root, out, strategies, TARGETS)), out,
                                                  progress=False)}
    direct = tmp_path_factory.mktemp("dtd_direct")
    dtd = {"name": "dtd_direct", "seeds": [0], "device": "cpu",
           "benchmark": {"dataset": "dtd", "root": str(data_root), "n_experiences": 1, "class_order": "identity"},
           "model": {"arch": "lamm-tiny", "pretrained": "none"},
           "features": {"cache": True, "cache_dir": str(data_root / "cache")},
           "strategies": [{"name": "zeroshot"},
                          {"name": "zeroshot", "label": "lamm_prompt", "templates": ["a photo of a {}."]}]}
    on_dtd = {r.strategy: r for r in runner.run(config.parse(dtd), direct, progress=False)}
    return out, records, on_dtd


def _acc(rec, target: str, t: int) -> float:
    (row,) = [r for r in rec.targets if r["target"] == target and r["experience"] == t]
    return row["accuracy"]


@pytest.mark.integration
def test_targets_csv_has_a_row_per_experience_and_target(trained):
    out, records, _ = trained
    with open(out / "lamm" / "seed0" / "targets.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == TARGETS_COLUMNS
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rows[1:]] == [
        (str(t), name, str(n), str(m), str(2 * n if name != "dtd" else 6)) for t in (0, 1)
        for name, n, m in (("imagenet_sketch", 6, 6), ("imagenet_a", 3, 3), ("imagenet_r", 3, 3), ("dtd", 2, 0))]
    assert all(r[6] != "" and r[7] == "" for r in rows[1:])
    summary = json.loads((out / "lamm" / "seed0" / "summary.json").read_text())
    assert summary["targets"] == {k: _acc(records["lamm"], k, 1) for k in ("imagenet_sketch", "imagenet_a",
                                                                          "imagenet_r", "dtd")}
    back = read_run(out / "lamm" / "seed0")
    assert back.targets == records["lamm"].targets  # read back as written (full precision)


@pytest.mark.integration
def test_a_strategy_without_a_text_side_is_not_applicable(trained):
    out, records, _ = trained
    rows = records["linear_probe"].targets
    assert len(rows) == 8 and all(np.isnan(r["accuracy"]) and r["note"].startswith("not applicable") for r in rows)
    assert json.loads((out / "linear_probe" / "seed0" / "summary.json").read_text())["targets"]["dtd"] is None


@pytest.mark.integration
def test_zeroshot_on_a_target_is_zeroshot_run_on_that_dataset(trained):
    _, records, on_dtd = trained
    zs = records["zeroshot"]
    assert _acc(zs, "dtd", 0) == _acc(zs, "dtd", 1) == on_dtd["zeroshot"].matrix[0, 0]
    # LAMM never trains a DTD class: on DTD it is CLIP with LAMM's prompt, after every experience
    assert _acc(records["lamm"], "dtd", 0) == _acc(records["lamm"], "dtd", 1) == on_dtd["lamm_prompt"].matrix[0, 0]


@pytest.mark.integration
def test_a_target_with_the_trained_classes_is_scored_with_the_trained_text(trained):
    _, records, _ = trained
    for name in ("zeroshot", "lamm"):
        rec = records[name]
        # Sketch: every class, the val images again -> the run's own accuracy over all seen classes at the end
        last = np.average(rec.matrix[1], weights=rec.test_counts)
        assert _acc(rec, "imagenet_sketch", 1) == pytest.approx(last, abs=1e-9)
        # A (experience 0's classes) and R (experience 1's), each among its own 3 classes: task-aware accuracy
        assert _acc(rec, "imagenet_a", 1) == pytest.approx(rec.matrix_task_aware[1, 0], abs=1e-9)
        assert _acc(rec, "imagenet_r", 1) == pytest.approx(rec.matrix_task_aware[1, 1], abs=1e-9)
        assert _acc(rec, "imagenet_a", 0) == pytest.approx(rec.matrix_task_aware[0, 0], abs=1e-9)
    # LAMM's trained label vectors move its score away from zero-shot CLIP's on the same classes
    assert _acc(records["lamm"], "imagenet_sketch", 1) != _acc(records["zeroshot"], "imagenet_sketch", 1)


@pytest.mark.integration
def test_report_summary_csv_and_load_results_carry_the_targets(trained):
    from lamm_cl.report import _group, _summary_csv, _targets_section, find_runs, summary_rows

    out, records, _ = trained
    # what build_report writes, without its seconds of plots: summary.csv, and report.md's targets section
    groups = _group(find_runs(out))
    summary = summary_rows(groups)
    rows = list(csv.DictReader(_summary_csv(summary).splitlines()))
    lamm = next(r for r in rows if r["strategy"] == "lamm" and r["seed"] == "0")
    assert float(lamm["target:imagenet_a"]) == _acc(records["lamm"], "imagenet_a", 1)
    assert next(r for r in rows if r["strategy"] == "linear_probe" and r["seed"] == "mean")["target:dtd"] == ""
    report = "\n".join(_targets_section(groups, summary))
    assert "## Cross-dataset transfer" in report  # DTD beside ImageNet's variants: not domain generalization alone
    (line,) = [x for x in report.splitlines() if x.startswith("| `zeroshot` (ours)")]
    zs = records["zeroshot"]
    cells = [_acc(zs, k, 1) for k in ("imagenet_sketch", "imagenet_a", "imagenet_r", "dtd")]
    assert line.split("|")[3:8] == [f" {v:.2f} " for v in cells] + [f" {sum(cells) / 4:.2f} "]
    assert "| `linear_probe` (ours) | 0 | n/a | n/a | n/a | n/a | n/a |" in report
    res = api.load_results(out)
    lamm_row = res.summary[res.summary.strategy == "lamm"].iloc[0]
    assert lamm_row["target:dtd"] == _acc(records["lamm"], "dtd", 1)
    m = res.metrics
    got = m[(m.strategy == "lamm") & (m.metric == "target:imagenet_r")].sort_values("experience")["value"].tolist()
    assert got == [_acc(records["lamm"], "imagenet_r", t) for t in (0, 1)]


def test_published_target_figures_match_protocol_shots_and_backbone():
    from lamm_cl.report import match_published, match_published_targets, target_protocol

    cfg = {"benchmark": {"dataset": "imagenet", "shots": 16}, "model": {"arch": "ViT-B-16", "pretrained": "openai"}}
    assert target_protocol("imagenet", ["imagenet_a", "imagenetv2"]) == "dg_from_imagenet"
    assert target_protocol("imagenet", ["imagenet_a", "dtd"]) == "xd_from_imagenet"
    dg = {(r["method"], r["dataset"]): r["value"] for r in match_published_targets(cfg, "dg_from_imagenet")}
    assert dg[("MaPLe", "imagenet_r")] == "76.98" and len(dg) == 16
    assert len(match_published_targets(cfg, "xd_from_imagenet")) == 30
    assert match_published_targets({**cfg, "benchmark": {"dataset": "imagenet", "shots": 4}}, "dg_from_imagenet") == []
    # a few-shot run on a cross-dataset target's own data is another protocol: these rows stay out of its table
    dtd = {"benchmark": {"dataset": "dtd", "shots": 16, "n_experiences": 1}, "model": cfg["model"]}
    assert all(r["metric"] != "target_accuracy" for r in match_published(dtd, 1))


def test_a_variant_cannot_be_trained_on(tmp_path):
    data = _cfg(tmp_path, tmp_path / "o", [{"name": "zeroshot"}], [])
    data["benchmark"]["dataset"] = "imagenet_r"
    with pytest.raises(ConfigError, match="benchmark.dataset: imagenet_r holds test images only"):
        config.parse(data)


@pytest.mark.integration
def test_a_resumed_run_keeps_the_target_rows_of_its_checkpoint(trained, data_root, tmp_path):
    _, records, _ = trained
    data = _cfg(data_root, tmp_path / "out", [{"name": "lamm", "epochs": 2, "batch_size": 4}], TARGETS)
    from lamm_cl.runner import execute

    def killed_at_1(template, entry, t, *args):  # Ctrl-C once experience 1 has trained: the checkpoint is 0's
        if t == 1:
            raise KeyboardInterrupt
        return score(template, entry, t, *args)

    score = execute.evaluate_targets
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(execute, "evaluate_targets", killed_at_1)
        runner.run(config.parse(data), tmp_path / "out", progress=False)
    (resumed,) = runner.run(config.parse(data), tmp_path / "out", progress=False, resume=True)
    assert resumed.info["resumed"] and resumed.targets == records["lamm"].targets


# --------------------------------------------------------------------------- every scorer, untrained


@pytest.fixture(scope="module")
def untrained(data_root, tiny_clip):
    """Each strategy built on the tiny ImageNet and grown by experience 0's classes, nothing trained; the
    targets DTD (no trained class) and ImageNet-A (experience 0's classes)."""
    from types import SimpleNamespace

    from builders import adapt
    from lamm_cl.benchmark import make_plan
    from lamm_cl.data.targets import load_targets
    from lamm_cl.features.extractor import FeatureExtractor
    from lamm_cl.registry import get_strategy
    from lamm_cl.runner.targets import TargetInputs
    from lamm_cl.strategy_kit.context import StrategyContext

    cfg = config.parse(_cfg(data_root, data_root / "unused", [{"name": "zeroshot"}],
                            [{"dataset": "dtd"}, {"dataset": "imagenet_a"}]))
    parts = load_dataset("imagenet", data_root)
    plan = make_plan(parts, cfg.benchmark, 0)
    ctx = StrategyContext(clip=tiny_clip, class_names=plan.class_names, template=plan.template,
                          device=torch.device("cpu"), seed=0)
    inputs = TargetInputs(FeatureExtractor(tiny_clip, cache_dir=data_root / "cache"), tiny_clip, torch.device("cpu"))
    built = {}
    for name, options in [("zeroshot", {}), ("zeroshot", {"templates": ["a photo of a {}."]}), ("lamm", {}),
                          ("coop", {}), ("coop_lamm", {}), ("maple", {"prompt_depth": 1}),
                          ("maple_lamm", {"prompt_depth": 1}), ("finetune", {}), ("rapf", {}), ("simplecil", {}),
                          ("ranpac", {})]:
        spec = get_strategy(name)
        torch.manual_seed(0)
        opts = config.from_dict(spec.options, options, name)
        template = spec.build(ctx, opts)
        adapt(template.model, plan.experiences[0])
        template.model.eval()
        built[name + ("_photo" if options.get("templates") else "")] = (template, SimpleNamespace(name=name,
                                                                                                  options=opts))
    return built, plan, parts, load_targets(cfg), inputs


def _scores(untrained, name):
    from lamm_cl.runner.targets import evaluate_targets

    built, plan, parts, targets, inputs = untrained
    template, entry = built[name]
    return {r["target"]: r["accuracy"] for r in evaluate_targets(template, entry, 0, plan, parts, targets, inputs)}


def test_what_carries_over_to_untrained_classes(untrained):
    from lamm_cl.runner.targets import _prompt_text

    built, plan, parts, (dtd, a), inputs = untrained
    from lamm_cl.data.targets import matched_labels

    unseen = matched_labels(parts, plan, dtd.parts)
    assert unseen == [None, None]
    text = {n: _prompt_text(built[n][0].model, built[n][1], dtd, unseen, {})
            for n in ("zeroshot", "zeroshot_photo", "lamm", "coop", "coop_lamm")}
    # CoOp's context started at "a photo of a": untrained, CoOp (and CoOp+LAMM, whose DTD classes have no
    # vectors) is CLIP with "a photo of a {}.", as LAMM is; zeroshot keeps DTD's own prompt
    for n in ("lamm", "coop", "coop_lamm"):
        assert torch.allclose(text[n], text["zeroshot_photo"], atol=1e-5), n
    assert not torch.allclose(text["zeroshot"], text["lamm"], atol=1e-3)
    # A's classes are experience 0's: their text is the model's own (the same rows it scores ImageNet with)
    own = built["lamm"][0].model.text_features()
    assert torch.equal(_prompt_text(built["lamm"][0].model, built["lamm"][1], a, matched_labels(parts, plan, a.parts),
                                    {}), own[[0, 1, 2]])


def test_every_open_vocabulary_strategy_scores_and_the_others_do_not(untrained):
    inputs, got, passes = untrained[-1], {}, []
    batches = inputs.image_batches
    try:  # which strategies read the targets' images (the others score their cached features)
        for name in ("zeroshot", "lamm", "coop", "coop_lamm", "maple", "maple_lamm", "finetune", "rapf", "simplecil",
                     "ranpac"):
            inputs.image_batches = lambda target, _n=name: (passes.append(_n), batches(target))[1]
            got[name] = _scores(untrained, name)
    finally:
        del inputs.image_batches
    assert sorted(set(passes)) == ["finetune", "maple", "maple_lamm"]
    for name in ("zeroshot", "lamm", "coop", "coop_lamm", "maple", "maple_lamm", "finetune", "rapf"):
        assert set(got[name]) == {"dtd", "imagenet_a"} and all(0 <= v <= 100 for v in got[name].values()), name
    for name in ("simplecil", "ranpac"):
        assert all(np.isnan(v) for v in got[name].values()), name
    # untrained, LAMM, CoOp and CoOp+LAMM score DTD's unseen classes with CLIP's "a photo of a {}." text
    # (test_what_carries_over_to_untrained_classes): the same accuracy as zeroshot with that prompt
    photo = _scores(untrained, "zeroshot_photo")["dtd"]
    for name in ("lamm", "coop", "coop_lamm"):
        assert got[name]["dtd"] == photo, name
    # finetune's head starts at CLIP's zero-shot rows and unseen classes get the target's prompt: untrained,
    # it scores DTD (images through its copy of the encoder) as zeroshot does (cached features)
    assert got["finetune"]["dtd"] == got["zeroshot"]["dtd"]
