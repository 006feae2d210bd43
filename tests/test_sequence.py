"""Benchmarks made of a sequence of datasets (lamm_cl/sequence.py, runner/evaluation.py's evaluate_sequence,
metrics' ZSCL functions): the invariants issue 26 lists, every strategy end to end on a tiny offline sequence
(tinyworld shapes > tinyworld colours, lamm-tiny with its tinyworld weights), the bad inputs and the
dry runs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lamm_cl import config as config_mod
from lamm_cl import metrics
from lamm_cl.cli import main
from lamm_cl.registry import get_strategy

from builders import make_dtd, one_line, write_yaml

# shapes, then colours of the same kind of pictures: two label spaces, zero-shot CLIP far above chance on both
SEQUENCE = [{"dataset": "tinyworld_shapes"}, {"dataset": "tinyworld"}]
THREE = [*SEQUENCE, {"dataset": "digits"}]  # for what needs no training
SCORES_UNSEEN = ["zeroshot", "lamm", "coop", "coop_lamm", "maple", "maple_lamm", "finetune", "rapf"]
CANNOT = ["linear_probe", "simplecil", "ranpac"]
LAMM_PROMPT = "a photo of a {}."  # strategies/lamm.py's LAMM_TEMPLATE


def _config(out, strategies, cache, sequence=SEQUENCE, **benchmark) -> dict:
    return {"name": "tiny_sequence", "output": str(out), "seeds": [0], "device": "cpu",
            "benchmark": {"sequence": sequence, "shots": 2, **benchmark},
            "model": {"arch": "lamm-tiny", "pretrained": "tinyworld"},
            # cache None: the session's store (conftest), where test_quickstart.py and test_learning_signal.py
            # keep the same tinyworld features (a sequence's entries are its datasets' own)
            "features": {"cache": True, **({"cache_dir": str(cache)} if cache is not None else {})},
            "strategies": strategies}


def _run(data: dict):
    from lamm_cl import runner

    return {r.strategy: r for r in runner.run(config_mod.parse(data), data["output"], progress=False)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every built-in strategy once on the tiny sequence (2 shots, one short epoch), plus zero-shot CLIP
    with LAMM's prompt; the records by strategy label."""
    root = tmp_path_factory.mktemp("sequence")
    strategies = [
        {"name": "zeroshot"},
        {"name": "zeroshot", "label": "zeroshot_lamm_prompt", "templates": [LAMM_PROMPT]},
        {"name": "lamm", "epochs": 2, "batch_size": 8, "lr": 0.01, "label_init": "name"},
        {"name": "coop", "epochs": 1, "batch_size": 8},
        {"name": "coop_lamm", "epochs": 1, "batch_size": 8},
        {"name": "maple", "epochs": 1, "batch_size": 8, "n_ctx": 2, "prompt_depth": 1},
        {"name": "maple_lamm", "epochs": 1, "batch_size": 8, "n_ctx": 2, "prompt_depth": 1},
        {"name": "finetune", "epochs": 1, "batch_size": 8, "lr": 0.001},
        {"name": "rapf", "epochs": 1, "batch_size": 8},
        {"name": "linear_probe", "epochs": 1, "batch_size": 8},
        {"name": "simplecil"},
        {"name": "ranpac", "M": 64},
    ]
    data = _config(root / "out", strategies, None)
    return _run(data), root


@pytest.mark.integration
def test_every_strategy_runs_the_sequence_and_fills_what_it_can(runs):
    records, root = runs
    for name in SCORES_UNSEEN:
        assert get_strategy(name).scores_unseen, name
        A = records[name].matrix
        assert A.shape == (2, 2) and np.all(np.isfinite(A)), (name, A)  # the whole T x T
        s = json.loads((root / "out" / name / "seed0" / "summary.json").read_text())
        assert s["transfer"] == pytest.approx(A[0, 1]) and s["mtil_avg"] == pytest.approx(A.mean())
        assert s["sequence"]["datasets"] == [{"dataset": "tinyworld_shapes", "offset": 0, "n_classes": 10},
                                             {"dataset": "tinyworld", "offset": 10, "n_classes": 10}]
    for name in CANNOT:
        assert not get_strategy(name).scores_unseen, name
        A = records[name].matrix
        assert np.isnan(A[0, 1]) and np.all(np.isfinite(A[np.tril_indices(2)])), (name, A)
        s = json.loads((root / "out" / name / "seed0" / "summary.json").read_text())
        assert s["transfer"] is None and s["mtil_avg"] is None  # "not applicable", never a number
        assert s["last_accuracy"] == pytest.approx(A[1].mean())
    from lamm_cl.api import load_results

    table = load_results(root / "out").summary.set_index("strategy")
    assert table.loc["lamm", "transfer"] == pytest.approx(records["lamm"].matrix[0, 1])
    assert math.isnan(table.loc["simplecil", "transfer"])


@pytest.mark.integration
def test_the_report_names_zscls_metrics_and_draws_the_matrix(runs, tmp_path, monkeypatch):
    import shutil

    from matplotlib.figure import Figure

    from lamm_cl import plots
    from lamm_cl.report import build_report

    records, root = runs
    # the figures every report draws are test_report.py's and test_plots.py's: blank here, still written
    for name in ("plot_seen_accuracy", "plot_final_accuracy_forgetting", "plot_old_new_accuracy",
                 "plot_accuracy_matrices"):
        monkeypatch.setattr(plots, name, lambda *a, **k: Figure())
    # one strategy that scores unseen classes and one that cannot, copied as the run wrote them: the report of
    # all twelve draws a figure per strategy (seconds of matplotlib) for no further claim
    for name in ("lamm", "simplecil"):
        shutil.copytree(root / "out" / name, tmp_path / "out" / name)
    written = {p.name for p in build_report(tmp_path / "out")}
    assert "sequence_matrix_lamm.png" in written and "sequence_matrix_simplecil.png" in written
    md = (tmp_path / "out" / "report.md").read_text()
    lamm = records["lamm"].summary()
    assert "## Sequence of datasets" in md and "| Strategy | Seeds | Transfer | Avg | Last |" in md
    assert f"| `lamm` | 1 | {lamm['transfer']:.2f} | {lamm['mtil_avg']:.2f} | {lamm['last_accuracy']:.2f} |" in md
    assert "| `simplecil` | 1 | n/a | n/a |" in md and "Mean over datasets" in md
    header = (tmp_path / "out" / "summary.csv").read_text().splitlines()[0]
    assert header.endswith(",transfer,mtil_avg")


@pytest.mark.integration
def test_zeroshot_rows_are_identical_and_its_transfer_is_its_zero_shot_accuracy(runs):
    A = runs[0]["zeroshot"].matrix
    assert np.array_equal(A[0], A[1])  # nothing trains
    # Transfer = mean over d = 2..T of the mean over t < d of A[t][d]; identical rows make it the mean
    # zero-shot accuracy on datasets 2..T (here dataset 2 alone)
    assert runs[0]["zeroshot"].summary()["transfer"] == pytest.approx(A[1, 1])
    assert A[0, 1] > 30  # colours zero-shot: well above chance (10 %), so the finetune check below can fail


@pytest.mark.integration
def test_lamm_upper_triangle_is_zero_shot_clip_with_lamms_prompt_and_its_diagonal_moves(runs):
    records = runs[0]
    lamm, zs = records["lamm"].matrix, records["zeroshot_lamm_prompt"].matrix
    # CLIP and the untrained classes' words never change: exactly zero-shot CLIP with the same prompt
    assert lamm[0, 1] == zs[0, 1]
    assert records["lamm"].summary()["transfer"] == records["zeroshot_lamm_prompt"].summary()["transfer"]
    assert lamm[0, 0] != zs[0, 0] and lamm[1, 1] != zs[1, 1]  # what it trained moved


@pytest.mark.integration
def test_finetune_loses_zero_shot_accuracy_on_datasets_it_has_not_trained(runs):
    A = runs[0]["finetune"].matrix
    # colours, untrained until the end: training the image encoder on shapes costs CLIP's zero-shot accuracy
    zs = runs[0]["zeroshot"].matrix[0, 1]
    assert A[0, 1] < zs, (A, zs)


@pytest.mark.integration
def test_frozen_feature_strategies_evaluate_the_sequence_without_an_image_pass(runs, tmp_path, monkeypatch):
    """Once the datasets' features are in the store (the module fixture put them there), the T x T evaluations
    of a frozen-feature strategy are text encodings and matrix products: no image reaches the encoder."""
    from lamm_cl.model.clip import FrozenCLIP

    def no_images(self, images):
        raise AssertionError("an image pass during a frozen-feature sequence run")

    monkeypatch.setattr(FrozenCLIP, "encode_images", no_images)
    records = _run(_config(tmp_path / "out", [{"name": "zeroshot"}, {"name": "coop", "epochs": 1, "batch_size": 8}],
                           None))
    assert np.array_equal(records["zeroshot"].matrix, runs[0]["zeroshot"].matrix)
    assert np.array_equal(records["coop"].matrix, runs[0]["coop"].matrix)


@pytest.mark.integration
def test_a_killed_sequence_run_resumes_to_the_same_matrix(runs, tmp_path):
    """Killed after the first dataset, resumed: the same T x T (the cells above the diagonal come back from
    the checkpoint) as the uninterrupted run of the module fixture."""
    from builders import run_capturing

    lamm = {"name": "lamm", "epochs": 2, "batch_size": 8, "lr": 0.01, "label_init": "name"}
    data = _config(tmp_path / "out", [lamm], None)
    with pytest.raises(KeyboardInterrupt):
        run_capturing(data, tmp_path / "out", stop_at=1)
    assert (tmp_path / "out" / "lamm" / "seed0" / "checkpoint.pt").is_file()
    _, records = run_capturing(data, tmp_path / "out", resume=True)
    assert np.array_equal(records[0].matrix, runs[0]["lamm"].matrix)
    assert records[0].info["resumed"]


@pytest.mark.integration
def test_all_classes_over_one_dataset_is_the_class_incremental_evaluation(tmp_path):
    strategies = [{"name": "lamm", "epochs": 1, "batch_size": 8}]
    seq = _run(_config(tmp_path / "seq", strategies, None, sequence=[{"dataset": "tinyworld"}],
                       evaluation="all_classes"))
    split = _config(tmp_path / "split", strategies, None)
    split["benchmark"] = {"dataset": "tinyworld", "n_experiences": 1, "class_order": "identity", "shots": 2}
    one = _run(split)
    for name in ("lamm",):
        assert seq[name].matrix.shape == (1, 1)
        assert seq[name].matrix[0, 0] == one[name].matrix[0, 0], name
        assert seq[name].per_class_accuracy == one[name].per_class_accuracy


def test_transfer_avg_and_last_by_hand():
    A = np.array([[80.0, 30.0, 10.0],
                  [70.0, 90.0, 20.0],
                  [60.0, 85.0, 95.0]])
    # Transfer: dataset 2: A[0][1] = 30; dataset 3: (10 + 20) / 2 = 15; mean (30 + 15) / 2 = 22.5
    assert metrics.transfer(A) == pytest.approx(22.5)
    # Avg: column means (80+70+60)/3 = 70, (30+90+85)/3 = 68.333.., (10+20+95)/3 = 41.666..; mean 60
    assert metrics.mtil_average(A) == pytest.approx(60.0)
    # Last: (60 + 85 + 95) / 3 = 80
    assert metrics.dataset_last_accuracy(A) == pytest.approx(80.0)
    assert metrics.sequence_summary(A) == pytest.approx({"transfer": 22.5, "mtil_avg": 60.0, "last_accuracy": 80.0})
    B = A.copy()
    B[0, 2] = math.nan  # one cell above the diagonal not measured: Transfer and Avg are not applicable
    assert metrics.sequence_summary(B) == {"transfer": None, "mtil_avg": None, "last_accuracy": pytest.approx(80.0)}
    with pytest.raises(ValueError):
        metrics.transfer(B)


def test_sequence_plan_offsets_labels_and_draws_shots_per_dataset():
    from lamm_cl.benchmark import make_plan
    from lamm_cl.sequence import load_sequence, plan_for

    b = config_mod.parse(_config("x", [{"name": "zeroshot"}], "c", sequence=THREE, shots=4)).benchmark
    parts = load_sequence(b)
    plan = plan_for(parts, b, seed=3)
    assert plan.experiences == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert plan.class_names[0] == "circle" and plan.class_names[10] == "red shape" and plan.class_names[20] == "zero"
    assert plan.class_dataset()[15] == "tinyworld"  # names keep their dataset
    for t, idx in enumerate(plan.train_index):
        labels = parts.train.labels[idx]
        assert sorted(set(labels.tolist())) == plan.experiences[t]
        assert np.bincount(labels - 10 * t).tolist() == [4] * 10  # 4 shots of every class
    # each dataset's draw is the one-experience split of that dataset in its own label order, same seed
    split = config_mod.parse({"name": "d", "benchmark": {"dataset": "digits", "n_experiences": 1,
                                                         "class_order": "identity", "shots": 4},
                              "strategies": [{"name": "zeroshot"}]}).benchmark
    from lamm_cl.data import load_dataset

    own = make_plan(load_dataset("digits"), split, seed=3)
    start = len(parts.train.members[0]) + len(parts.train.members[1])
    assert np.array_equal(plan.train_index[2] - start, own.train_index[0])


def test_sequence_features_are_stored_under_each_datasets_own_key(tmp_path):
    """A sequence's features are the split benchmarks' store entries: nothing new is extracted."""
    from lamm_cl.features import FeatureExtractor
    from lamm_cl.model.clip import build_clip
    from lamm_cl.runner.inputs import Inputs
    from lamm_cl.sequence import load_sequence
    from lamm_cl.data import load_dataset
    import torch

    # shapes (200 test images, not the colours' 500), then digits
    b = config_mod.parse(_config("x", [{"name": "zeroshot"}], "c", sequence=[THREE[0], THREE[2]])).benchmark
    clip = build_clip("lamm-tiny", "none", torch.device("cpu"))
    cfg = config_mod.FeaturesConfig(cache=True, cache_dir=str(tmp_path))
    own = load_dataset("digits")
    alone = FeatureExtractor.from_config(clip, cfg).features(own.test)  # the split benchmark's entry
    before = sorted(p.name for p in tmp_path.glob("*.npy"))
    parts = load_sequence(b)
    feats = Inputs(parts, clip, FeatureExtractor.from_config(clip, cfg)).features("test")
    assert torch.equal(feats[len(parts.test.members[0]):], alone)
    after = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert len(after) == len(before) + 1  # the shapes' test set only: digits' entry was reused


# --------------------------------------------------------------------------- bad input and dry runs


BAD = [
    ("listed-twice", {"sequence": THREE + [{"dataset": "digits"}]}, [], "benchmark.sequence[3].dataset"),
    ("unknown-dataset", {"sequence": [{"dataset": "tinyworld"}, {"dataset": "mnsit"}]}, [],
     "benchmark.sequence[1].dataset"),
    ("missing-root", {"sequence": [{"dataset": "tinyworld"}, {"dataset": "dtd", "root": "ROOT/nowhere"}]}, [],
     "benchmark.sequence[1]"),
    ("all-classes-linear-probe", {"sequence": SEQUENCE, "evaluation": "all_classes"},
     [{"name": "linear_probe", "epochs": 1}], "strategies[1].name"),
    ("class-order-beside", {"sequence": SEQUENCE, "class_order": "seeded"}, [], "benchmark.class_order"),
    ("n-experiences-beside", {"sequence": SEQUENCE, "n_experiences": 3}, [], "benchmark.n_experiences"),
    ("evaluation-without-sequence", {"dataset": "digits", "n_experiences": 2, "evaluation": "all_classes"}, [],
     "benchmark.evaluation"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_sequences_are_one_line_status_2_and_write_nothing(case, tmp_path, capsys):
    _, benchmark, extra, culprit = case
    benchmark = json.loads(json.dumps(benchmark).replace("ROOT", str(tmp_path)))
    data = {"name": "bad", "output": str(tmp_path / "out"), "seeds": [0], "device": "cpu",
            "benchmark": benchmark, "model": {"arch": "lamm-tiny", "pretrained": "none"},
            "features": {"cache": False}, "strategies": [{"name": "zeroshot"}, *extra]}
    path = write_yaml(tmp_path / "bad.yaml", data)
    for args in (["run", str(path)], ["run", str(path), "--dry-run"]):
        assert main(args) == 2
        one_line(capsys.readouterr().err, culprit)
        assert not (tmp_path / "out").exists()


def test_dry_run_lists_each_dataset_of_a_coop_layout_sequence(tmp_path, capsys):
    make_dtd(tmp_path)
    data = _config(tmp_path / "out", [{"name": "zeroshot"}, {"name": "linear_probe", "epochs": 1}], tmp_path / "c",
                   sequence=[{"dataset": "dtd", "root": str(tmp_path)}, {"dataset": "digits"}], shots=None)
    data["model"]["pretrained"] = "none"
    assert main(["run", str(write_yaml(tmp_path / "s.yaml", data)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sequence of 2 datasets, evaluation task_aware; 12 classes in all" in out
    assert f"dtd ({tmp_path}): 2 classes, 6 train / 6 test images" in out
    assert "digits" in out and "labels 2..11" in out
    assert "strategy zeroshot: scores unseen classes: 4 dataset evaluations per seed" in out
    assert "strategy linear_probe: cannot score unseen classes: 3 dataset evaluations per seed, Transfer n/a" in out
    assert not (tmp_path / "out").exists()


def test_dry_run_of_a_sequence_with_missing_data_names_every_missing_dataset(tmp_path, capsys):
    data = _config(tmp_path / "out", [{"name": "zeroshot"}], tmp_path / "c",
                   sequence=[{"dataset": "dtd", "root": str(tmp_path / "a")}, {"dataset": "digits"},
                             {"dataset": "mnist", "root": str(tmp_path / "b"), "download": True}])
    assert main(["run", str(write_yaml(tmp_path / "s.yaml", data)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    one_line(err, "2 of 3 datasets of the sequence are missing")
    assert "benchmark.sequence[0] (dtd" in err and "benchmark.sequence[2] (mnist" in err
    assert "a dry run does not download" in err


@pytest.mark.parametrize("path", ["benchmarks/mtil/order1.yaml", "benchmarks/mtil/order2.yaml",
                                  "benchmarks/xtail/xtail.yaml"])
def test_the_benchmark_files_parse_and_dry_run_to_the_missing_data_line(path, tmp_path, capsys):
    roots = [f"benchmark.sequence.{i}.root={tmp_path}" for i in range(11 if "mtil" in path else 10)]
    cfg = config_mod.load(path, roots)
    names = [e.dataset for e in cfg.benchmark.sequence]
    if "xtail" in path:
        assert "cifar100" not in names and len(names) == 10 and cfg.benchmark.shots == 16
        assert cfg.benchmark.evaluation == "all_classes"
        assert all(get_strategy(e.name).scores_unseen for e in cfg.strategies)
    else:
        assert len(names) == 11 and cfg.benchmark.shots is None and cfg.benchmark.evaluation == "task_aware"
    assert main(["run", path, "--dry-run", *(a for r in roots for a in ("--set", r))]) == 2
    one_line(capsys.readouterr().err, "datasets of the sequence are missing")


def test_sweep_dry_run_counts_the_t_squared_evaluations_of_an_mtil_run(tmp_path, capsys):
    from pathlib import Path

    order1 = Path(__file__).resolve().parent.parent / "benchmarks" / "mtil" / "order1.yaml"
    sweep = write_yaml(tmp_path / "one.yaml", {"name": "one", "benchmarks": [str(order1)], "seeds": [1],
                                                "output": str(tmp_path / "sw"), "launcher": {"name": "local"}})
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the test images of order I's datasets (CoOp's test lists, CIFAR-100's and MNIST's own), written out here
    tests = [3_333, 2_465, 10_000, 1_692, 8_100, 2_463, 30_300, 10_000, 3_669, 8_041, 19_850]
    T = len(tests)
    every = T * sum(tests)  # every dataset after every step
    lower = sum(n * (T - d) for d, n in enumerate(tests))  # dataset d from step d on
    assert f"lamm                121 dataset evaluations, {every:>12,} test images scored" in out
    assert f"simplecil            66 dataset evaluations, {lower:>12,} test images scored" in out
    assert not (tmp_path / "sw").exists()
