"""Result files, the report and its determinism, on a results folder written by hand."""

import csv
import io
import json
import math

import matplotlib
import numpy as np
import pytest

from lamm_cl import plots
from lamm_cl.errors import UserError
from lamm_cl.report import build_report, match_published
from lamm_cl.results import RunRecord, find_runs, read_run, write_run
from lamm_cl.safe_io import atomic_write_text

nan = float("nan")
COUNTS = [10, 10, 20]
CONFIG = {
    "name": "toy",
    "seeds": [0, 1],
    "benchmark": {"dataset": "digits", "n_experiences": 3, "shots": None},
    "model": {"arch": "tiny", "pretrained": "none"},
    # Not alphabetical on purpose: the report must follow this order.
    "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}],
}

# Matrices and their headline numbers, by hand (a_i pools with COUNTS = [10, 10, 20]):
MATRICES = {
    # a = [90, 75, 70] -> avg 78.333, last 70; forgetting (30 + 30)/2 = 30; bwt (-30 - 30)/2 = -30
    ("zeroshot", 0): [[90, nan, nan], [70, 80, nan], [60, 50, 85]],
    # a = [90, 87.5, 70] -> avg 82.5, last 70; forgetting (35 + 30)/2 = 32.5; bwt -30
    ("zeroshot", 1): [[90, nan, nan], [95, 80, nan], [60, 50, 85]],
    # a = [80, 70, (800 + 600 + 800)/40 = 55] -> avg 68.333, last 55; forgetting 0; bwt 0
    ("lamm", 0): [[80, nan, nan], [80, 60, nan], [80, 60, 40]],
    # a = [100, 80, (800 + 600 + 1000)/40 = 60] -> avg 80, last 60;
    # forgetting (100 - 80 + 70 - 60)/2 = 15; bwt (80 - 100 + 60 - 70)/2 = -15
    ("lamm", 1): [[100, nan, nan], [90, 70, nan], [80, 60, 50]],
}
# Aggregates: mean, and sample std (ddof=1) of two values = |x - y| / sqrt(2).
R2 = math.sqrt(2)
EXPECTED = {
    ("zeroshot", "mean"): [(235 / 3 + 82.5) / 2, 70, 31.25, -30],
    ("zeroshot", "std"): [(82.5 - 235 / 3) / R2, 0, 2.5 / R2, 0],
    ("lamm", "mean"): [(205 / 3 + 80) / 2, 57.5, 7.5, -7.5],
    ("lamm", "std"): [(80 - 205 / 3) / R2, 5 / R2, 15 / R2, 15 / R2],
}
PLOTS = ["seen_accuracy", "final_accuracy_forgetting", "old_new_accuracy", "accuracy_matrices",
         "accuracy_matrix_zeroshot", "accuracy_matrix_lamm"]
RUN_FILES = ["config.yaml", "class_order.json", "accuracy_matrix.csv", "accuracy_matrix_task_aware.csv",
             "metrics.csv", "per_class_accuracy.csv", "summary.json"]


def make_record(strategy, seed, config=CONFIG):
    A = np.array(MATRICES[(strategy, seed)], dtype=float)
    return RunRecord(
        benchmark="toy", strategy=strategy, seed=seed, matrix=A, test_counts=list(COUNTS),
        experiences=[[0], [1], [2, 3]], class_names=["seven", "three", "five", "one"],
        class_order=[7, 3, 5, 1], per_class_accuracy=[A[2, 0], A[2, 1], A[2, 2] - 5, A[2, 2] + 5],
        config=config, matrix_task_aware=A,  # task-aware numbers are not what these tests look at
        info={"device": "cpu", "seconds": 1.5,
              "weights": {"arch": "tiny", "pretrained": "none", "file": None, "sha256": None}},
    )


def write_results(root):
    for strategy, seed in MATRICES:
        write_run(root / strategy / f"seed{seed}", make_record(strategy, seed))
    return root


@pytest.fixture
def results(tmp_path):
    """A fresh results folder (for tests that change it)."""
    return write_results(tmp_path / "toy")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One results folder with its report already built, shared by the read-only tests (drawing is slow)."""
    root = write_results(tmp_path_factory.mktemp("built") / "toy")
    (root / "lamm" / "seed7").mkdir()  # an unfinished run: killed before summary.json was written
    written = build_report(root)
    return root, written


def all_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_run_files_and_columns(results):
    run = results / "zeroshot" / "seed0"
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert (run / "accuracy_matrix.csv").read_text() == (
        "after_experience,exp0,exp1,exp2\n0,90.0,,\n1,70.0,80.0,\n2,60.0,50.0,85.0\n")
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0]) == ["experience", "classes_seen", "accuracy", "old_accuracy", "new_accuracy",
                             "avg_incremental_accuracy", "forgetting", "bwt"]
    assert [r["classes_seen"] for r in rows] == ["1", "2", "4"]
    assert [float(r["accuracy"]) for r in rows] == pytest.approx([90, 75, 70])
    assert rows[0]["old_accuracy"] == ""
    assert [float(r["old_accuracy"]) for r in rows[1:]] == pytest.approx([70, 55])
    assert [float(r["new_accuracy"]) for r in rows] == pytest.approx([90, 80, 85])
    assert [float(r["avg_incremental_accuracy"]) for r in rows] == pytest.approx([90, 82.5, 235 / 3])
    assert [float(r["forgetting"]) for r in rows] == pytest.approx([0, 20, 30])
    assert [float(r["bwt"]) for r in rows] == pytest.approx([0, -20, -30])
    per_class = list(csv.DictReader((run / "per_class_accuracy.csv").open()))
    assert per_class[3] == {"label": "3", "class_name": "one", "original_label": "1", "accuracy": "90.0"}
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == ["benchmark", "strategy", "seed", "avg_incremental_accuracy", "last_accuracy",
                             "forgetting", "bwt", "n_experiences", "info", "task_aware"]
    assert summary["avg_incremental_accuracy"] == pytest.approx(235 / 3)
    assert summary["n_experiences"] == 3 and summary["info"]["device"] == "cpu"


def test_read_run_round_trips(results):
    original = make_record("lamm", 1)
    back = read_run(results / "lamm" / "seed1")
    np.testing.assert_array_equal(back.matrix, original.matrix)  # NaN above the diagonal on both sides
    for field in ("benchmark", "strategy", "seed", "test_counts", "experiences", "class_names",
                  "class_order", "per_class_accuracy", "config", "info"):
        assert getattr(back, field) == getattr(original, field), field


def test_build_report_writes_every_file(built):
    root, written = built
    expected = {root / "plots" / f"{name}.png" for name in PLOTS}
    expected |= {root / "summary.csv", root / "summary.tex", root / "report.md"}
    assert set(written) == expected
    for path in expected:
        assert path.stat().st_size > 0
    assert (root / "plots" / "seen_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_csv_aggregates_by_hand(built):
    root, _ = built
    rows = list(csv.DictReader((root / "summary.csv").open()))
    assert list(rows[0]) == ["strategy", "seed", "avg_incremental_accuracy", "last_accuracy",
                             "forgetting", "bwt", "n_experiences", "task_aware_avg_incremental_accuracy",
                             "task_aware_last_accuracy", "task_aware_forgetting"]
    # Config order (zeroshot, lamm), seeds ascending, then mean and std.
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        ("zeroshot", "0"), ("zeroshot", "1"), ("zeroshot", "mean"), ("zeroshot", "std"),
        ("lamm", "0"), ("lamm", "1"), ("lamm", "mean"), ("lamm", "std")]
    metrics = ["avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"]
    for r in rows:
        assert r["n_experiences"] == "3"
        if (r["strategy"], r["seed"]) in EXPECTED:
            got = [float(r[m]) for m in metrics]
            assert got == pytest.approx(EXPECTED[(r["strategy"], r["seed"])], abs=1e-9), r
    assert float(rows[0]["avg_incremental_accuracy"]) == pytest.approx(235 / 3)


def test_report_md(built):
    root, _ = built
    md = (root / "report.md").read_text()
    assert md.startswith("# toy")
    assert "random weights" in md and "not pretrained CLIP" in md
    assert "`tiny`, pretrained `none`" in md
    assert md.index("`zeroshot`") < md.index("`lamm`")
    # zeroshot Avg: mean 80.42, std 2.95 (see EXPECTED)
    assert "80.42 ± 2.95" in md
    for name in PLOTS:
        assert f"](plots/{name}.png)" in md
    assert "3 (1) one" in md  # label 3, original label 1, its name
    assert "epochs: 1" in md  # the config is shown
    assert "lamm/seed7" in md  # the unfinished run is named, and left out
    assert [(r.strategy, r.seed) for r in find_runs(root)] == [("lamm", 0), ("lamm", 1), ("zeroshot", 0), ("zeroshot", 1)]
    assert "0, 1 |" in md and "0, 1, 7" not in md


def test_report_is_byte_identical_when_rebuilt(built):
    root, written = built
    first = all_bytes(root)
    assert build_report(root) == written
    assert all_bytes(root) == first


def test_svg_and_pdf_on_request_and_deterministic(tmp_path, monkeypatch):
    from builders import record_plots

    # One strategy, one seed: std is undefined, so summary.csv leaves it blank. The report's figures are
    # recorded, not drawn: save_figure writing each format is checked below.
    root = tmp_path / "one"
    write_run(root / "lamm" / "seed0", make_record("lamm", 0))
    with monkeypatch.context() as mp:
        figures = record_plots(mp)
        written = build_report(root, formats=("svg",))
    assert {p.name for p in written if p.parent.name == "plots"} == {
        "seen_accuracy.svg", "final_accuracy_forgetting.svg", "old_new_accuracy.svg", "accuracy_matrices.svg",
        "accuracy_matrix_lamm.svg"}
    assert {formats for _, _, formats in figures} == {("svg",)}
    assert "](plots/seen_accuracy.svg)" in (root / "report.md").read_text()
    rows = {r["seed"]: r for r in csv.DictReader((root / "summary.csv").open())}
    assert rows["std"]["avg_incremental_accuracy"] == ""
    assert float(rows["mean"]["avg_incremental_accuracy"]) == pytest.approx(205 / 3)
    # The same figure drawn twice gives the same bytes in every format (no dates, fixed SVG ids); and
    # save_figure's PNG, drawn once, is the PNG matplotlib's savefig writes drawing twice (plots._write_png).
    # Each save lays the figure out again from where the last left it: both are saved in the same order.
    groups = {"lamm": [make_record("lamm", 0)]}
    fig = plots.plot_old_new_accuracy(groups, plots.strategy_colors(["lamm"]))
    paths = plots.save_figure(fig, tmp_path / "a", plots.FORMATS)
    assert [p.name for p in paths] == ["a.png", "a.svg", "a.pdf"]
    ours = {p.suffix[1:]: p.read_bytes() for p in paths}
    fig = plots.plot_old_new_accuracy(groups, plots.strategy_colors(["lamm"]))
    theirs = {}
    for fmt in plots.FORMATS:
        buf = io.BytesIO()
        with matplotlib.rc_context(plots._RC):
            fig.savefig(buf, format=fmt, dpi=plots._DPI, metadata=plots._METADATA[fmt])
        theirs[fmt] = buf.getvalue()
    assert ours == theirs
    assert ours["pdf"].startswith(b"%PDF") and b"CreationDate" not in ours["pdf"]


def test_atomic_writes_leave_no_temp_files(built, tmp_path):
    root, _ = built
    assert [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")] == []
    # A failed rename (the target is a folder) removes its temporary file too.
    target = tmp_path / "occupied"
    target.mkdir()
    with pytest.raises(OSError):
        atomic_write_text(target, "x")
    assert [p.name for p in tmp_path.iterdir()] == ["occupied"]
    atomic_write_text(tmp_path / "sub" / "f.txt", "hello\n")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.txt"]
    assert (tmp_path / "sub" / "f.txt").read_bytes() == b"hello\n"


def one_line_error(root, name):
    with pytest.raises(UserError) as info:
        build_report(root)
    message = str(info.value)
    assert name in message and "\n" not in message, message
    return message


def test_missing_file_is_a_user_error_naming_it(results):
    (results / "lamm" / "seed1" / "accuracy_matrix.csv").unlink()
    assert "missing" in one_line_error(results, "lamm/seed1/accuracy_matrix.csv")


@pytest.mark.parametrize(
    "name, text",
    [
        ("summary.json", "{not json"),
        ("config.yaml", "a: [unclosed\n  b: c"),
        ("class_order.json", '{"class_order": 3}'),
        ("accuracy_matrix.csv", "after_experience,exp0,exp1,exp2\n0,90.0,,\n1,abc,80.0,\n2,60.0,50.0,85.0\n"),
        ("accuracy_matrix.csv", "after_experience,exp0,exp1\n0,90.0,\n1,70.0,80.0\n"),  # 2 experiences, 3 counts
        ("per_class_accuracy.csv", "label,name\n0,x\n"),
    ],
)
def test_malformed_file_is_a_user_error_naming_it(results, name, text):
    (results / "zeroshot" / "seed1" / name).write_text(text)
    assert "malformed" in one_line_error(results, "zeroshot/seed1/")


def test_missing_or_empty_results_folder(tmp_path):
    one_line_error(tmp_path / "nowhere", "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no finished runs" in one_line_error(tmp_path / "empty", "empty")


def test_unknown_format_is_a_user_error(results):
    with pytest.raises(UserError, match="png, svg, pdf"):
        build_report(results, formats=("jpg",))


def test_published_figures_match_dataset_steps_shots_and_backbone():
    cifar = {"benchmark": {"dataset": "cifar100", "shots": None}, "model": {"arch": "ViT-B-16", "pretrained": "openai"}}
    rows = match_published(cifar, 10)
    assert {(r["method"], r["metric"], r["value"]) for r in rows} >= {
        ("Continual-CLIP (zero-shot)", "avg_incremental_accuracy", "75.17"),
        ("MoE-Adapters", "last_accuracy", "77.52"), ("PROOF", "avg_incremental_accuracy", "86.77")}
    assert not any("ZSCL" in r["method"] for r in rows)
    assert match_published(cifar, 5) == []
    assert match_published({**cifar, "model": {"arch": "ViT-B-32", "pretrained": "openai"}}, 10) == []
    coop = {"benchmark": {"dataset": "eurosat", "shots": 16}, "model": {"arch": "ViT-B-16", "pretrained": "openai"}}
    # the few-shot table is one task with every class: a 5-step class-incremental run is another protocol
    assert {r["method"]: r["value"] for r in match_published(coop, 1)}["CoOp+LAMM"] == "81.7"
    assert match_published(coop, 5) == []
    assert match_published({**coop, "benchmark": {"dataset": "eurosat", "shots": None}}, 1) == []
    assert match_published(CONFIG, 3) == []


# --------------------------------------------------------------------------- only comparable runs are paired


def _three_seed_folder(root, lamm_config=CONFIG, lamm_weights=None):
    for seed in (0, 1, 2):
        rec = make_record("zeroshot", 0)
        rec.seed = seed
        write_run(root / "zeroshot" / f"seed{seed}", rec)
        other = make_record("lamm", 0, config=lamm_config)
        other.seed = seed
        if lamm_weights:
            other.info = {**other.info, "weights": lamm_weights}
        write_run(root / "lamm" / f"seed{seed}", other)
    return root


def test_runs_of_another_class_order_are_not_paired(tmp_path, no_plots):
    from lamm_cl.api import load_results

    seeded = {**CONFIG, "benchmark": {**CONFIG["benchmark"], "order_seed": 7}}
    root = _three_seed_folder(tmp_path / "toy", lamm_config=seeded)
    build_report(root)
    md = (root / "report.md").read_text()
    section = md[md.index("## Paired differences"):md.index("## Published")]
    assert "zeroshot − lamm: not compared: zeroshot/seed0 and lamm/seed0 differ in benchmark.order_seed None vs 7" \
        in section
    assert "p = " not in section and "pairs" not in section.split("not compared")[1]
    with pytest.raises(UserError, match="not comparable.*order_seed"):
        load_results(root).compare("lamm", "zeroshot")


def test_runs_with_other_weights_are_not_paired_and_the_header_names_every_model(tmp_path, no_plots):
    from lamm_cl.api import load_results

    tiny = {**CONFIG, "model": {"arch": "lamm-tiny", "pretrained": "tinyworld"}}
    weights = {"arch": "lamm-tiny", "pretrained": "tinyworld", "file": "w.pt", "sha256": "ab" * 32}
    root = _three_seed_folder(tmp_path / "toy", lamm_config=tiny, lamm_weights=weights)
    build_report(root)
    md = (root / "report.md").read_text()
    assert "- Model of zeroshot/seed0, zeroshot/seed1, zeroshot/seed2: `tiny`, pretrained `none`" in md
    assert "- Model of lamm/seed0, lamm/seed1, lamm/seed2: `lamm-tiny`, pretrained `tinyworld`" in md
    assert "not compared" in md and "model `tiny` + `none` vs `lamm-tiny` + `tinyworld`" in md
    with pytest.raises(UserError, match="not comparable.*model"):
        load_results(root).compare("zeroshot", "lamm")


def test_comparable_runs_are_paired_and_the_report_says_the_smallest_p(tmp_path, no_plots):
    root = _three_seed_folder(tmp_path / "toy")
    build_report(root)
    # every figure asked for once, in the order report.md lists them (test_report_md: the real files)
    assert [(fig, name, formats) for fig, name, formats in no_plots] == [
        ("plot_seen_accuracy", "seen_accuracy", ("png",)),
        ("plot_final_accuracy_forgetting", "final_accuracy_forgetting", ("png",)),
        ("plot_old_new_accuracy", "old_new_accuracy", ("png",)),
        ("plot_accuracy_matrices", "accuracy_matrices", ("png",)),
        ("plot_accuracy_matrix", "accuracy_matrix_zeroshot", ("png",)),
        ("plot_accuracy_matrix", "accuracy_matrix_lamm", ("png",))]
    md = (root / "report.md").read_text()
    assert "- zeroshot − lamm: Last +15.00 [+15.00, +15.00], p = 0.250, 3 pairs " \
           "(the smallest p 3 pairs can give: 0.250)" in md
    assert "p < 0.05 needs at least 6 pairs" in md and "`order_seed: null`" in md


def test_min_p_by_hand():
    from lamm_cl import stats

    assert [stats.min_p(n) for n in (1, 3, 5, 6)] == [1.0, 0.25, 0.0625, 0.03125]
    assert stats.min_p(stats.PAIRS_FOR_5_PERCENT) < 0.05 <= stats.min_p(stats.PAIRS_FOR_5_PERCENT - 1)
    # the bound is reached: every difference of one sign
    assert stats.sign_flip_p([1, 2, 3, 4, 5, 6]) == stats.min_p(6)


def test_summary_json_naming_another_strategy_or_seed_is_malformed(results):
    from lamm_cl.api import load_results

    summary = results / "lamm" / "seed0" / "summary.json"
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "strategy": "coop"}))
    assert "records strategy 'coop' seed 0 but sits in lamm/seed0" in one_line_error(results, "lamm/seed0/summary.json")
    with pytest.raises(UserError, match="lamm/seed0/summary.json: malformed"):
        load_results(results)
    summary.write_text(json.dumps({**data, "seed": 4}))
    assert "malformed" in one_line_error(results, "lamm/seed0/summary.json")


def test_baseline_naming_no_strategy_is_exit_2_listing_the_strategies(results, capsys, no_plots):
    from lamm_cl.cli import main

    assert main(["report", str(results), "--baseline", "knn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--baseline knn" in err and "zeroshot, lamm" in err
    assert not (results / "report.md").exists() and not (results / "plots").exists()
    assert no_plots == []  # refused before any figure was drawn
    assert main(["report", str(results), "--baseline", "zeroshot"]) == 0
    assert len(no_plots) == len(PLOTS)
    assert "Each strategy minus `zeroshot`" in (results / "report.md").read_text()


def test_one_seed_says_fewer_than_3_pairs_and_the_versions_once(tmp_path, no_plots):
    root = tmp_path / "toy"
    for strategy in ("zeroshot", "lamm", "coop"):
        rec = make_record("lamm" if strategy == "coop" else strategy, 0)
        rec.strategy = strategy
        rec.info = {**rec.info, "versions": {"lamm_cl": "0.1", "torch": "2.4"}}
        write_run(root / strategy / "seed0", rec)
    build_report(root)
    md = (root / "report.md").read_text()
    assert md.count("fewer than 3 pairs") == 1
    assert md.count("torch: '2.4'") == 1 and "Versions (the same for every run)" in md


def test_summary_tex_is_a_latex_table_of_the_summary(built):
    root, _ = built
    tex = (root / "summary.tex").read_text()
    assert "\\begin{tabular}{llrrrr}" in tex and "\\end{tabular}" in tex
    # zeroshot Avg 80.42 ± 2.95 (see EXPECTED), in report order
    assert "zeroshot & 0, 1 & 80.42 $\\pm$ 2.95 & 70.00 $\\pm$ 0.00" in tex
    assert tex.index("zeroshot &") < tex.index("lamm &")
    assert "Avg (\\%)" in tex
