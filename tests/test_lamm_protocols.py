"""LAMM's own protocols runnable: label order, task-aware accuracy, per-experience k, the paper's
benchmark files, and the weights file (with its SHA-256) behind every number."""
import csv
import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lamm_cl import config
from lamm_cl.benchmark import dry_run, make_plan
from lamm_cl.cli import main
from lamm_cl.errors import ConfigError, DataNotFoundError
from lamm_cl.model import clip as clip_module
from lamm_cl.model.labels import LabelTable, label_token_counts
from lamm_cl.report import build_report, match_published, protocol_of
from lamm_cl.results import RunRecord, read_run, write_run
from lamm_cl.runner.evaluation import AccuracyPlugin, evaluate

nan = float("nan")
PAPER = Path("benchmarks/lamm_paper")
# Class counts of the 11 CoOp datasets (CoOp's DATASETS.md), written out here independently of the files.
N_CLASSES = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102,
             "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101}


# --------------------------------------------------------------------------- class_order: identity


def test_identity_order_is_label_order_and_splits_base_then_new(digits):
    cfg = config.parse({"name": "b2n",
                        "benchmark": {"dataset": "digits", "n_experiences": 2, "class_order": "identity"},
                        "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": [{"name": "zeroshot"}]})
    plan = make_plan(digits, cfg.benchmark, seed=3)
    assert plan.order_name == "identity"
    assert plan.class_order == list(range(10))
    assert plan.experiences == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert plan.class_names == list(digits.classnames)
    # an odd count puts the extra class in the base half: ceil(n/2) first
    odd = config.parse({"name": "b2n", "benchmark": {"dataset": "digits", "classes_per_experience": [5, 4],
                                                      "class_order": [0, 1, 2, 3, 4, 5, 6, 7, 8]},
                        "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": [{"name": "zeroshot"}]})
    assert protocol_of(odd.to_dict(), 2) == "class_incremental"  # an explicit list is not label order
    odd.benchmark.class_order = "identity"
    assert protocol_of(odd.to_dict(), 2) == "base_to_new"
    odd.benchmark.classes_per_experience = [4, 5]
    assert protocol_of(odd.to_dict(), 2) == "class_incremental"


def test_unknown_named_order_is_a_config_error():
    with pytest.raises(ConfigError, match="benchmark.class_order"):
        config.parse({"name": "x", "benchmark": {"dataset": "digits", "n_experiences": 2, "class_order": "labels"},
                      "strategies": [{"name": "zeroshot"}]})


# --------------------------------------------------------------------------- label_tokens: min_experience


NAME_IDS = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15, 16]]  # name lengths 3, 1, 2, 4, 2


def test_min_experience_takes_each_experience_own_shortest_name():
    prompts = SimpleNamespace(name_ids=NAME_IDS)
    assert label_token_counts(prompts, "min") == [1, 1, 1, 1, 1]
    assert label_token_counts(prompts, "min_experience", [[0, 1], [2, 3, 4]]) == [1, 1, 2, 2, 2]
    assert label_token_counts(prompts, "min_experience", [[0, 3], [1, 2, 4]]) == [3, 1, 1, 3, 1]
    with pytest.raises(ValueError, match="min_experience"):
        label_token_counts(prompts, "min_experience")


def test_label_table_fixes_k_when_the_experience_adds_its_classes():
    words = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    table = LabelTable(words, SimpleNamespace(name_ids=NAME_IDS), "min_experience", "name")
    table.add_classes([0, 1])
    table.add_classes([4, 2, 3])
    assert [tuple(table.vectors[str(c)].shape) for c in range(5)] == [(1, 4), (1, 4), (2, 4), (2, 4), (2, 4)]
    torch.testing.assert_close(table.original(3), words[[11, 12]])  # the first 2 pieces of "11 12 13 14"
    torch.testing.assert_close(table.original(0), words[[5]])
    assert not table.vectors["0"].requires_grad and table.vectors["3"].requires_grad


def test_lamm_options_accept_min_experience():
    cfg = config.parse({"name": "x", "benchmark": {"dataset": "digits", "n_experiences": 2},
                        "strategies": [{"name": "lamm", "label_tokens": "min_experience"}]})
    assert cfg.strategies[0].options.label_tokens == "min_experience"
    with pytest.raises(ConfigError, match="label_tokens"):
        config.parse({"name": "x", "benchmark": {"dataset": "digits", "n_experiences": 2},
                      "strategies": [{"name": "lamm", "label_tokens": "min_task"}]})


# --------------------------------------------------------------------------- task-aware accuracy


def _batch(logits, y):
    return SimpleNamespace(mb_output=torch.tensor(logits, dtype=torch.float32), mb_y=torch.tensor(y))


def test_accuracy_plugin_counts_task_aware_from_the_same_logits():
    acc = AccuracyPlugin()
    acc.reset(4)
    acc.task_classes = [2, 3]
    acc.after_eval_iteration(_batch([[5, 0, 1, 0],    # y=2: all classes -> 0 (wrong); among {2, 3} -> 2 (right)
                                     [0, 0, 2, 1],    # y=3: -> 2 both ways (wrong, wrong)
                                     [9, 0, 0, 3],    # y=3: -> 0 (wrong); among {2, 3} -> 3 (right)
                                     [0, 0, 4, 1]],   # y=2: -> 2 both ways (right, right)
                                    [2, 3, 3, 2]))
    assert acc.correct == {2: 1, 3: 0} and acc.correct_task_aware == {2: 2, 3: 1} and acc.total == {2: 2, 3: 2}


def test_evaluate_gives_class_incremental_and_task_aware_rows():
    streams = [
        _batch([[1, 0, 5, 0], [0, 2, 0, 0]], [0, 1]),                      # CI 1/2, task-aware 2/2
        _batch([[9, 0, 1, 0], [0, 0, 3, 1], [0, 0, 0, 2]], [2, 3, 3]),     # CI 1/3, task-aware 2/3
    ]
    acc = AccuracyPlugin()

    class Template:
        def eval(self, exp):
            acc.after_eval_iteration(exp)

    plan = SimpleNamespace(experiences=[[0, 1], [2, 3]])
    row, per_class, row_ta = evaluate(Template(), streams, 1, plan, acc)
    assert row == pytest.approx([50.0, 100 / 3])
    assert row_ta == pytest.approx([100.0, 200 / 3])
    assert per_class == pytest.approx({0: 0.0, 1: 100.0, 2: 0.0, 3: 50.0})
    assert acc.task_classes is None  # not left set for a later evaluation


COUNTS = [10, 30]
CONFIG = {"name": "toy", "seeds": [0], "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": None},
          "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": [{"name": "lamm"}, {"name": "coop"}]}


def _record(strategy):
    return RunRecord(
        benchmark="toy", strategy=strategy, seed=0, matrix=np.array([[90, nan], [60, 50]]), test_counts=COUNTS,
        experiences=[[0], [1]], class_names=["a", "b"], class_order=[0, 1], per_class_accuracy=[60, 50],
        config=CONFIG, info={"weights": {"arch": "lamm-tiny", "pretrained": "none", "file": None, "sha256": None}},
        matrix_task_aware=np.array([[90, nan], [80, 70]]))


def test_task_aware_matrix_summary_and_report(tmp_path, no_plots):
    write_run(tmp_path / "lamm" / "seed0", _record("lamm"))
    write_run(tmp_path / "coop" / "seed0", _record("coop"))
    run = tmp_path / "lamm" / "seed0"
    assert (run / "accuracy_matrix_task_aware.csv").read_text() == (
        "after_experience,exp0,exp1\n0,90.0,\n1,80.0,70.0\n")
    # by hand, counts [10, 30]: a = [90, (800 + 2100) / 40 = 72.5]; forgetting 90 - 80 = 10
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task_aware"] == pytest.approx({"avg_incremental_accuracy": 81.25, "last_accuracy": 72.5,
                                                   "forgetting": 10.0, "bwt": -10.0})
    assert summary["last_accuracy"] == pytest.approx((600 + 1500) / 40)  # the headline stays class-incremental
    np.testing.assert_array_equal(read_run(run).matrix_task_aware, [[90, nan], [80, 70]])

    build_report(tmp_path)
    rows = {r["strategy"] + "/" + r["seed"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert float(rows["lamm/0"]["task_aware_avg_incremental_accuracy"]) == pytest.approx(81.25)
    assert float(rows["lamm/mean"]["task_aware_last_accuracy"]) == pytest.approx(72.5)
    assert float(rows["lamm/0"]["task_aware_forgetting"]) == pytest.approx(10.0)
    md = (tmp_path / "report.md").read_text()
    assert "### Task-aware accuracy" in md
    assert "| `lamm` | 0 | 81.25 | 72.50 | 10.00 |" in md
    assert "- Weights: `lamm-tiny` + `none`: random initial weights, no weights file loaded" in md


def test_task_aware_matrix_of_the_wrong_shape_is_refused(tmp_path):
    rec = _record("lamm")
    rec.matrix_task_aware = np.array([[90.0]])
    with pytest.raises(ValueError, match="task-aware"):
        write_run(tmp_path / "r", rec)


# --------------------------------------------------------------------------- weights identity


def _tiny_checkpoint(path: Path, shift: float) -> None:
    model = clip_module.build_clip("lamm-tiny", "none", "cpu").model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logit_scale"] = state["logit_scale"] + shift  # a "retrained" model: same shapes, other bytes
    torch.save(state, path)


def test_weights_file_and_sha256_are_of_the_bytes_loaded(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    _tiny_checkpoint(path, 0.0)
    # the factory's own load must name the file: the fallback that asks open_clip again is not used
    monkeypatch.setattr(clip_module, "_resolved_file", lambda *a: pytest.fail("fallback used"))
    first = clip_module.build_clip("lamm-tiny", str(path), "cpu")
    assert first.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.weights_record() == {"arch": "lamm-tiny", "pretrained": str(path), "file": str(path.resolve()),
                                      "sha256": first.weights_sha256}
    _tiny_checkpoint(path, 0.5)  # retrained, saved to the same path
    second = clip_module.build_clip("lamm-tiny", str(path), "cpu")
    assert second.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != first.weights_sha256
    assert second.identity != first.identity
    assert float(second.model.logit_scale) == pytest.approx(float(first.model.logit_scale) + 0.5)


def test_random_weights_record_no_file(tiny_clip):
    assert tiny_clip.weights_record() == {"arch": "lamm-tiny", "pretrained": "none", "file": None, "sha256": None}


def test_a_run_hashes_once_and_every_summary_names_the_weights(tmp_path, monkeypatch, digits):
    from lamm_cl.runner import run

    path = tmp_path / "tiny.pt"
    _tiny_checkpoint(path, 0.0)
    calls = []
    real = clip_module.file_sha256
    monkeypatch.setattr(clip_module, "file_sha256", lambda p: calls.append(p) or real(p))
    cfg = config.parse({"name": "w", "seeds": [0], "device": "cpu",
                        "benchmark": {"dataset": "digits", "n_experiences": 2, "class_order": "identity"},
                        "model": {"arch": "lamm-tiny", "pretrained": str(path)},
                        "features": {"cache": False},
                        "strategies": [{"name": "zeroshot"},
                                       {"name": "lamm", "epochs": 1, "lr": 0.5, "batch_size": 512, "softmax": "current",
                                        "label_tokens": "min_experience"}]})
    records = run(cfg, tmp_path / "out", progress=False)
    assert len(records) == 2 and len(calls) == 1  # one hash per run, not per strategy
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    for rec in records:
        run_dir = tmp_path / "out" / rec.strategy / f"seed{rec.seed}"
        weights = json.loads((run_dir / "summary.json").read_text())["info"]["weights"]
        assert weights == {"arch": "lamm-tiny", "pretrained": str(path), "file": str(path.resolve()),
                           "sha256": expected}
        A, TA = read_run(run_dir).matrix, read_run(run_dir).matrix_task_aware
        # after the first experience every seen class is that experience's: both readings agree;
        # restricting the argmax to a set that holds the true class never turns a hit into a miss
        assert TA[0, 0] == A[0, 0]
        assert np.all(np.tril(TA) >= np.tril(A))
        # LAMM freezes the base half's vectors and CLIP: its task-aware accuracy cannot move (README)
        assert TA[1, 0] == TA[0, 0]
    lamm = next(r for r in records if r.strategy == "lamm")
    assert lamm.task_aware_summary()["forgetting"] == 0.0


# --------------------------------------------------------------------------- the paper's benchmark files


def test_there_are_both_files_for_each_coop_dataset():
    assert {p.stem for p in PAPER.glob("*.yaml") if not p.stem.startswith(("ablation_", "dg_", "xd_"))} == (
        {f"base2new_{d}" for d in N_CLASSES} | {f"fewshot_{d}" for d in N_CLASSES})


@pytest.mark.parametrize("dataset", sorted(N_CLASSES))
def test_base2new_file_states_the_reference_protocol(dataset, tmp_path):
    cfg = config.load(PAPER / f"base2new_{dataset}.yaml", [f"benchmark.root={tmp_path}"])
    n = N_CLASSES[dataset]
    b = cfg.benchmark
    assert (b.dataset, b.class_order, b.shots, cfg.seeds) == (dataset, "identity", 16, [1, 2, 3])
    assert b.classes_per_experience == [math.ceil(n / 2), n // 2]
    assert protocol_of(cfg.to_dict(), 2) == "base_to_new"
    assert (cfg.model.arch, cfg.model.pretrained) == ("ViT-B-16", "openai")
    lamm = {e.name: e.options for e in cfg.strategies}["lamm"]
    assert (lamm.epochs, lamm.batch_size, lamm.lr) == (50, 32, 0.002)
    assert lamm.loss.param == 1 / 16 and lamm.label_tokens == "min_experience" and lamm.softmax == "current"
    assert cfg.features.train_views == lamm.epochs  # a fresh view every epoch
    with pytest.raises(DataNotFoundError) as e:
        dry_run(cfg)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("dataset", sorted(N_CLASSES))
def test_fewshot_file_states_the_main_table_setting(dataset, tmp_path):
    cfg = config.load(PAPER / f"fewshot_{dataset}.yaml", [f"benchmark.root={tmp_path}"])
    b = cfg.benchmark
    assert (b.dataset, b.n_experiences, b.shots, cfg.seeds) == (dataset, 1, 16, [1, 2, 3])
    opts = {e.name: e.options for e in cfg.strategies}
    for name in ("lamm", "coop_lamm"):
        assert opts[name].loss.param == 1.0 and opts[name].epochs == 50 and opts[name].label_tokens == "min"
    assert cfg.features.train_views == 50
    published = {r["method"]: r["value"] for r in match_published(cfg.to_dict(), 1)}
    assert published["LAMM"] == "81.2" and published["zero-shot CLIP"] == "65.2"
    with pytest.raises(DataNotFoundError) as e:
        dry_run(cfg)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_cli_dry_run_of_a_paper_file_is_one_line_and_status_2(capsys, tmp_path):
    code = main(["run", str(PAPER / "base2new_dtd.yaml"), "--dry-run", "--set", f"benchmark.root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "dtd" in err


def test_class_incremental_runs_do_not_match_the_few_shot_table():
    cfg = config.load(PAPER / "base2new_eurosat.yaml").to_dict()
    assert match_published(cfg, 2) == []
    assert match_published({**cfg, "benchmark": {**cfg["benchmark"], "shots": 16}}, 1) != []


def test_list_shows_the_paper_files(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "benchmarks/lamm_paper/base2new_dtd.yaml" in out and "lamm_paper_fewshot_imagenet" in out
    assert out.index("benchmarks/split_ucf101.yaml") < out.index("benchmarks/lamm_paper/")  # top level first
