"""The Python API (lamm_cl.run, lamm_cl.load_results) and the paired statistics under Results.compare."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

import lamm_cl
from lamm_cl import stats
from lamm_cl.errors import ConfigError, UserError
from lamm_cl.results import RunRecord, write_run

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "quickstart-reference"
SHIPPED_SHA256 = "5f8f1d14f58cdbc25eca1b97a985f0be46b2fddb1288a7e5b797ede68dd4fd67"  # README: the tiny pretrained CLIP
nan = float("nan")


# --------------------------------------------------------------------------- hand-built result folders


def _write(folder: Path, strategy: str, seed: int, A, benchmark: str = "toy") -> None:
    """One finished run with a 2-experience matrix A (two classes, one per experience, 10 test images each)."""
    rec = RunRecord(benchmark=benchmark, strategy=strategy, seed=seed, matrix=np.array(A, dtype=float),
                    test_counts=[10, 10], experiences=[[0], [1]], class_names=["cat", "dog"], class_order=[0, 1],
                    per_class_accuracy=[A[1][0], A[1][1]],
                    config={"name": benchmark, "model": {"arch": "lamm-tiny", "pretrained": "none"}},
                    matrix_task_aware=np.array(A, dtype=float),
                    info={"weights": {"arch": "lamm-tiny", "pretrained": "none", "file": None, "sha256": None}})
    write_run(folder / strategy / f"seed{seed}", rec)


def _last(A) -> float:  # pooled accuracy after the last experience, equal test counts: the mean of the row
    return (A[1][0] + A[1][1]) / 2


# Last of "a" minus Last of "b" per seed: seed 0 +1, seed 1 +2, seed 2 +3, seed 3 -1
RUNS_A = {0: [[80, nan], [60, 62]], 1: [[80, nan], [62, 62]], 2: [[80, nan], [64, 62]], 3: [[80, nan], [58, 60]]}
RUNS_B = {0: [[80, nan], [60, 60]], 1: [[80, nan], [60, 60]], 2: [[80, nan], [60, 60]], 3: [[80, nan], [60, 60]]}


@pytest.fixture()
def toy(tmp_path):
    for seed in RUNS_A:
        _write(tmp_path, "a", seed, RUNS_A[seed])
        _write(tmp_path, "b", seed, RUNS_B[seed])
    return tmp_path


# --------------------------------------------------------------------------- load_results


def test_load_results_matches_the_committed_summary_csv_exactly():
    res = lamm_cl.load_results(REFERENCE)
    with open(REFERENCE / "summary.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["seed"].isdigit()]
    assert len(res.summary) == len(rows) > 0
    got = res.summary.set_index(["strategy", "seed"])
    for r in rows:
        line = got.loc[(r["strategy"], int(r["seed"]))]
        assert line["avg"] == float(r["avg_incremental_accuracy"])  # exact: the same float, not approximately
        assert line["last"] == float(r["last_accuracy"])
        assert line["forgetting"] == float(r["forgetting"])
        assert line["bwt"] == float(r["bwt"])
        assert line["n_experiences"] == int(r["n_experiences"])
        assert (line["arch"], line["pretrained"]) == ("lamm-tiny", "tinyworld")
        assert line["weights_sha256"] == SHIPPED_SHA256  # the weights that produced the numbers
    assert "grid" not in res.summary.columns  # one benchmark folder: no grid-cell column


def test_matrix_and_long_metrics_of_one_run(toy):
    res = lamm_cl.load_results(toy)
    m = res.matrix("a", 2)
    assert m.shape == (2, 2) and m.loc[1, 0] == 64 and m.loc[1, 1] == 62 and np.isnan(m.loc[0, 1])
    acc = res.metrics[(res.metrics.strategy == "a") & (res.metrics.seed == 2) & (res.metrics.metric == "accuracy")]
    assert acc.sort_values("experience").value.tolist() == [80.0, 63.0]  # seen accuracy per experience
    with pytest.raises(UserError, match="no run of strategy 'c'"):
        res.matrix("c", 0)


def test_a_sweep_folder_gives_benchmark_and_grid_columns(tmp_path):
    for bench in ("pets", "dtd"):
        for cell in ("shots=1", "shots=16"):
            _write(tmp_path / bench / cell, "lamm", 1, [[50, nan], [40, 40]], benchmark=bench)
    res = lamm_cl.load_results(tmp_path)
    got = sorted(zip(res.summary.benchmark, res.summary.grid))
    assert got == [("dtd", "shots=1"), ("dtd", "shots=16"), ("pets", "shots=1"), ("pets", "shots=16")]
    with pytest.raises(UserError, match="say which"):
        res.matrix("lamm", 1)
    assert res.matrix("lamm", 1, benchmark="dtd", grid="shots=16").loc[1, 1] == 40


def test_load_results_of_an_empty_or_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no finished run"):
        lamm_cl.load_results(tmp_path)
    with pytest.raises(UserError, match="not found"):
        lamm_cl.load_results(tmp_path / "nope")


# --------------------------------------------------------------------------- paired comparison


def _brute_force_p(d):
    """Two-sided sign-flip p by listing all 2^n sign vectors (the definition, written independently)."""
    obs = abs(sum(d))
    hits = sum(1 for s in itertools.product((1, -1), repeat=len(d))
               if abs(sum(si * abs(di) for si, di in zip(s, d))) >= obs - 1e-9)
    return hits / 2 ** len(d)


def test_compare_on_hand_built_runs(toy):
    c = lamm_cl.load_results(toy).compare("a", "b", metric="last")
    diffs = [_last(RUNS_A[s]) - _last(RUNS_B[s]) for s in sorted(RUNS_A)]
    assert diffs == [1.0, 2.0, 3.0, -1.0]
    assert c.n_pairs == 4 and c.mean_diff == pytest.approx(1.25)
    # |+-1 +-2 +-3 +-1| >= 5 (the observed |1+2+3-1|): (1,2,3,-1), (-1,2,3,1), (1,2,3,1) and their negations
    assert c.p_value == pytest.approx(6 / 16)
    # the bootstrap, seeded, recomputed here resample by resample
    rng = np.random.default_rng(0)  # PCG64(0), as documented
    idx = rng.integers(0, 4, size=(stats.N_RESAMPLES, 4))
    means = np.array([np.mean([diffs[i] for i in row]) for row in idx])
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert str(c).startswith("a − b: Last +1.25 [") and str(c).endswith("p = 0.375, 4 pairs")


def test_compare_with_fewer_than_three_pairs_says_so(tmp_path):
    for seed in (0, 1):
        _write(tmp_path, "a", seed, RUNS_A[seed])
        _write(tmp_path, "b", seed, RUNS_B[seed])
    _write(tmp_path, "a", 2, RUNS_A[2])  # no partner: not a pair
    c = lamm_cl.load_results(tmp_path).compare("a", "b")
    assert c.n_pairs == 2 and c.p_value is None and c.mean_diff == pytest.approx(1.5)
    assert "fewer than 3 pairs" in str(c)


@pytest.mark.parametrize("d", [[1.0, 2.0, 3.0], [0.5, -0.5, 2.0, 2.0, -1.0, 3.25, 0.0, 1.5, -2.0],
                               [2.0, 2.0, 2.0, -2.0, 2.0, -2.0, 2.0]])
def test_sign_flip_p_is_exact(d):
    assert stats.sign_flip_p(d) == _brute_force_p(d)


def test_sign_flip_p_of_a_zero_mean_is_one_and_of_a_uniform_shift_is_two_over_2n():
    assert stats.sign_flip_p([1.0, -1.0, 2.0, -2.0]) == 1.0
    assert stats.sign_flip_p([3.0] * 10) == 2 / 2 ** 10


def test_compare_rejects_unknown_metric_and_strategy(toy):
    res = lamm_cl.load_results(toy)
    with pytest.raises(UserError, match="metric 'top5'"):
        res.compare("a", "b", metric="top5")
    with pytest.raises(UserError, match="strategy 'zz'"):
        res.compare("a", "zz")


# --------------------------------------------------------------------------- the report's section


def test_report_shows_paired_differences_against_the_baseline(toy, no_plots):
    from lamm_cl.cli import main

    assert main(["report", str(toy), "--baseline", "b"]) == 0
    text = (toy / "report.md").read_text()
    assert "## Paired differences" in text
    assert "- a − b: Last +1.25 [" in text and "p = 0.375, 4 pairs" in text
    main(["report", str(toy)])  # default baseline lamm: not in this folder, and the report says so
    assert "No `lamm` runs here to compare against" in (toy / "report.md").read_text()


# --------------------------------------------------------------------------- run()


def _tiny_config(out: Path) -> dict:
    return {
        "name": "api-tiny", "output": str(out), "seeds": [0], "device": "cpu",
        "benchmark": {"dataset": "digits", "n_experiences": 2, "classes_per_experience": None,
                      "class_order": "seeded"},
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "strategies": [{"name": "zeroshot"}, {"name": "linear_probe", "epochs": 1}],
    }


def test_run_with_a_dict_matches_the_cli(tmp_path, no_plots):
    import yaml

    from lamm_cl.cli import main

    cfg = _tiny_config(tmp_path / "api")
    cfg["benchmark"].pop("classes_per_experience")
    before = repr(cfg)
    res = lamm_cl.run(cfg, progress=False)
    assert repr(cfg) == before  # the caller's dict is not modified
    assert sorted(res.summary.strategy) == ["linear_probe", "zeroshot"] and res.failed == []
    # the report rebuilt, its figures recorded (test_quickstart draws a run's for real)
    assert (tmp_path / "api" / "report.md").is_file() and len(no_plots) == 6  # 4 + one per strategy

    cfg["output"] = str(tmp_path / "cli")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    assert (tmp_path / "cli" / "report.md").is_file() and len(no_plots) == 12
    cli = lamm_cl.load_results(tmp_path / "cli").summary
    cols = ["strategy", "seed", "avg", "last", "forgetting", "bwt"]
    assert res.summary[cols].sort_values("strategy").values.tolist() == cli[cols].sort_values("strategy").values.tolist()


def test_run_with_an_unknown_key_raises_and_writes_nothing(tmp_path):
    cfg = _tiny_config(tmp_path / "out")
    cfg["benchmark"].pop("classes_per_experience")
    cfg["strategies"][1]["epoch"] = 1  # a typo
    with pytest.raises(ConfigError, match=r"strategies\[1\]\.epoch"):
        lamm_cl.run(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []
    del cfg["strategies"][1]["epoch"]
    with pytest.raises(ConfigError, match="benchmark.n_experiences"):
        lamm_cl.run(cfg, set=["benchmark.n_experiences=0"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sweep_table_pairs_per_grid_cell(tmp_path):
    from lamm_cl.sweep.table import paired_lines

    # two benchmarks x two seeds per cell; "a" beats "b" by exactly 2 on Last in shots=1, by 0..3 in shots=16
    gap = {"shots=1": [2.0, 2.0, 2.0, 2.0], "shots=16": [0.0, 1.0, 2.0, 3.0]}
    for cell, gaps in gap.items():
        for k, (bench, seed) in enumerate([("pets", 1), ("pets", 2), ("dtd", 1), ("dtd", 2)]):
            _write(tmp_path / bench / cell, "b", seed, [[50, nan], [40, 40]], benchmark=bench)
            _write(tmp_path / bench / cell, "a", seed, [[50, nan], [40 + gaps[k], 40 + gaps[k]]], benchmark=bench)
    lines = paired_lines(tmp_path, {"shots=1": {}, "shots=16": {}}, baseline="b")
    i1, i16 = lines.index("shots=1:"), lines.index("shots=16:")
    # all four differences +2: only ++++ and ---- reach |8| -> p = 2/16; every resample's mean is 2
    assert lines[i1 + 2] == "- a − b: Last +2.00 [+2.00, +2.00], p = 0.125, 4 pairs"
    # 0, 1, 2, 3: |sum| >= 6 for +0+1+2+3 and its mirror, whatever the sign of the 0 -> 4 of 16
    assert lines[i16 + 2].startswith("- a − b: Last +1.50 [") and lines[i16 + 2].endswith("p = 0.250, 4 pairs")
    assert lamm_cl.load_results(tmp_path).compare("a", "b").n_pairs == 8  # no grid given: every cell


# --------------------------------------------------------------------------- bad arguments name themselves


@pytest.mark.parametrize("bad", [123, None, [1], b"seeds=[0]"])
def test_run_with_set_not_a_list_of_strings_names_set(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"^set: expected a list of 'dotted.key=value' strings"):
        lamm_cl.run(_tiny_config(tmp_path / "out"), set=bad, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, name", [({"n_resamples": -1}, "n_resamples"), ({"n_resamples": 0}, "n_resamples"),
                                          ({"n_resamples": 2.5}, "n_resamples"), ({"seed": -1}, "seed"),
                                          ({"seed": "0"}, "seed"), ({"grid": "x"}, "grid")])
def test_compare_with_a_bad_argument_names_it(toy, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        lamm_cl.load_results(toy).compare("a", "b", **kwargs)


def test_compare_with_an_unknown_grid_cell_lists_the_cells(tmp_path):
    for cell in ("shots=1", "shots=16"):
        _write(tmp_path / "pets" / cell, "a", 1, [[50, nan], [40, 40]], benchmark="pets")
        _write(tmp_path / "pets" / cell, "b", 1, [[50, nan], [40, 40]], benchmark="pets")
    with pytest.raises(ValueError, match="grid: 'shots=2' is not a grid cell .*shots=1, shots=16"):
        lamm_cl.load_results(tmp_path).compare("a", "b", grid="shots=2")
