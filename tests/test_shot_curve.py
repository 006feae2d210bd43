"""The LAMM paper's shot curve: the sweep file, the figure `lamm-cl report` draws from a sweep whose grid
varies benchmark.shots, `loss.param: auto` in both of the reference's protocols, and the CoOp rows of the
few-shot files (LAMM's ctxv1 setting beside canonical CoOp)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import dtd_config_data, make_dtd, run_capturing
from lamm_cl import config
from lamm_cl.cli import main
from lamm_cl.report import COOP_DATASETS
from lamm_cl.results import RunRecord, write_run

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "benchmarks" / "lamm_paper"
SHOTS = (1, 4, 16)
STRATEGIES = {"coop": 60.0, "lamm": 70.0}  # a base accuracy per strategy


def _accuracy(strategy: str, d: int, shots: int, seed: int) -> float:
    """Known in advance: base + 2 log2(shots) + the dataset's index + the seed."""
    return STRATEGIES[strategy] + 2 * math.log2(shots) + d + seed


def _synthetic_sweep(out: Path, datasets=COOP_DATASETS, shots=SHOTS, seeds=(1, 2)) -> Path:
    """A finished shot sweep written by hand: one experience per run, the accuracy of :func:`_accuracy`."""
    from lamm_cl.sweep.spec import Job, Sweep, SweepConfig, write_sweep

    jobs = []
    for dataset in datasets:
        for k in shots:
            for strategy in STRATEGIES:
                for seed in seeds:
                    bench = f"fewshot_{dataset}"
                    jobs.append(Job(id=f"{bench}__shots={k}__{strategy}__seed{seed}", benchmark=bench,
                                    config=str(PAPER / f"{bench}.yaml"), overrides=[f"benchmark.shots={k}"],
                                    cell=f"shots={k}", strategy=strategy, seed=seed,
                                    results=str(out / bench / f"shots={k}")))
    sweep = Sweep(config=SweepConfig(name="curve", benchmarks=[], output=str(out)), source="curve.yaml",
                  output=out, jobs=jobs)
    write_sweep(sweep)
    for j in jobs:
        d = list(datasets).index(j.benchmark.removeprefix("fewshot_"))
        k = int(j.cell.split("=")[1])
        v = _accuracy(j.strategy, d, k, j.seed)
        cfg = {"benchmark": {"dataset": datasets[d], "shots": k, "n_experiences": 1},
               "model": {"arch": "ViT-B-16", "pretrained": "openai"}, "strategies": [{"name": j.strategy}]}
        write_run(j.run_dir, RunRecord(benchmark=j.benchmark, strategy=j.strategy, seed=j.seed,
                                       matrix=np.array([[v]]), test_counts=[4], experiences=[[0, 1]],
                                       class_names=["a", "b"], class_order=[0, 1], per_class_accuracy=[v, v],
                                       config=cfg, matrix_task_aware=np.array([[v]]),
                                       info={"weights": {"arch": "ViT-B-16", "pretrained": "openai",
                                                         "file": "ViT-B-16-openai.pt", "sha256": "0" * 64}}))
    return out


def test_report_on_a_shot_sweep_draws_the_curve_from_the_result_files(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from lamm_cl.sweep import table
    from lamm_cl.sweep.table import collect, shot_curves

    # the report's other figures (a Last-per-dataset plot per shot count, seconds of matplotlib) are
    # test_sweep.py's; drawn blank here, still written and linked
    monkeypatch.setattr(table, "_plot", lambda cell, title: Figure())

    out = _synthetic_sweep(tmp_path / "sweep")
    (fig,) = shot_curves(out, collect(out)).values()  # one figure: the grid varies nothing but the shots
    curves = fig["curves"]
    assert list(curves) == [*COOP_DATASETS, "mean"]  # a panel per dataset in the sweep's order, the mean last
    sd = 1 / math.sqrt(2)  # two seeds one apart
    for d, dataset in enumerate(COOP_DATASETS):
        for strategy, base in STRATEGIES.items():
            for k in SHOTS:
                mean, std = curves[dataset][strategy][k]
                assert mean == pytest.approx(base + 2 * math.log2(k) + d + 1.5) and std == pytest.approx(sd)
    # the mean panel: seed by seed over the 11 datasets (mean index 5), then over the seeds
    assert curves["mean"]["lamm"][16] == pytest.approx((70.0 + 8 + 5 + 1.5, sd))
    assert curves["mean"]["coop"][1] == pytest.approx((60.0 + 0 + 5 + 1.5, sd))
    # the LAMM paper's 16-shot averages, on the mean panel only, each in its strategy's colour
    published = fig["published"]
    assert set(published) == {"mean"}
    got = {label.split(" (")[0]: v for label, v in published["mean"].items()}
    assert got["published: LAMM"] == {16: 81.2} and got["published: CoOp"] == {16: 78.5}
    assert got["published: zero-shot CLIP"] == {16: 65.2} and got["published: CoOp+LAMM"] == {16: 81.7}
    assert {fig["published_as"][label] for label in published["mean"]} == {
        "zeroshot", "coop", "lamm", "coop_lamm", "maple", "maple_lamm"}

    # `lamm-cl report` draws the curve for real: on two of the datasets (a 12-panel figure is seconds of
    # matplotlib; the panels' numbers are checked above)
    out = _synthetic_sweep(tmp_path / "two", datasets=("eurosat", "dtd"))
    assert main(["report", str(out)]) == 0
    assert all((out / "plots" / f"last_per_dataset_shots_{k}.png").is_file() for k in SHOTS)
    png = out / "plots" / "shot_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "![Accuracy against shots per class](plots/shot_curve.png)" in (out / "table.md").read_text()


def test_a_sweep_without_a_shots_axis_draws_no_curve(tmp_path):
    from lamm_cl.sweep.table import collect, shot_curves

    out = _synthetic_sweep(tmp_path / "sweep", datasets=("eurosat", "dtd"), shots=(16,), seeds=(1,))
    assert shot_curves(out, collect(out)) == {}


def test_the_figure_puts_shots_on_a_log2_axis_with_one_line_per_strategy():
    from lamm_cl.plots import plot_shot_curve

    curves = {"eurosat": {"lamm": {1: (50.0, 1.0), 2: (60.0, 1.0), 16: (80.0, math.nan)},
                          "coop": {1: (40.0, math.nan), 16: (math.nan, math.nan)}},
              "mean": {"lamm": {1: (50.0, 0.5), 16: (80.0, 0.5)}}}
    fig = plot_shot_curve(curves, {"mean": {"published: LAMM": {16: 81.2}}}, {"published: LAMM": "lamm"})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["eurosat", "mean"]
    ax = axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "16"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["lamm"].get_xdata()) == [1, 2, 16] and list(lines["lamm"].get_ydata()) == [50, 60, 80]
    assert list(lines["coop"].get_xdata()) == [1]  # a shot count with no finished run is left out
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(49.0) and band.max() == pytest.approx(81.0 - 1.0)  # NaN std: no band there
    star = axes[1].collections[-1]
    assert star.get_offsets().tolist() == [[16.0, 81.2]]
    assert tuple(star.get_facecolor()[0]) == pytest.approx(tuple(lines["lamm"].get_color()))


# --------------------------------------------------------------------------- the sweep file


@pytest.mark.integration
def test_the_shot_sweep_expands_with_lambda_p_1_at_every_shot_count_and_dry_runs(capsys):
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.job import _config

    sweep = load_sweep(ROOT / "benchmarks" / "sweeps" / "lamm_paper_fewshot.yaml")
    strategies = ["zeroshot", "lamm", "coop_ctxv1", "coop", "coop_lamm", "maple", "maple_lamm"]
    assert len(sweep.jobs) == 11 * 5 * len(strategies) * 3
    assert {j.cell for j in sweep.jobs} == {f"shots={k}" for k in (1, 2, 4, 8, 16)}
    assert {j.seed for j in sweep.jobs} == {1, 2, 3} and {j.strategy for j in sweep.jobs} == set(strategies)
    for j in sweep.jobs:
        if j.seed != 1 or j.strategy not in ("lamm", "coop_lamm", "maple_lamm") or j.cell not in ("shots=1", "shots=2"):
            continue
        cfg = _config(j)
        (entry,) = cfg.strategies
        shots = int(j.cell.split("=")[1])
        assert cfg.benchmark.shots == shots and cfg.benchmark.n_experiences == 1
        # the reference's main scripts pass no --shots: lambda_p = 1 at 1 shot as at 16
        assert entry.options.weights(shots, cfg.benchmark.n_experiences).param == 1.0
    capsys.readouterr()
    assert main(["sweep", str(ROOT / "benchmarks" / "sweeps" / "lamm_paper_fewshot.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1155 jobs in 55 results folders" in out and "estimated GPU-hours" in out
    assert not (ROOT / "benchmarks" / "sweeps" / "fewshot_shots.yaml").exists()


# --------------------------------------------------------------------------- loss.param: auto


@pytest.mark.parametrize("n_experiences,expected", [(1, 1.0), (2, 1 / 4)])
def test_auto_lambda_p_is_one_for_one_task_and_one_over_shots_when_incremental(tmp_path, n_experiences, expected):
    """The runner hands the strategy the benchmark's experiences: `auto` resolves as the reference's
    scripts set it (few-shot, one task: no --shots, 1; base -> new: --shots k, 1/k)."""
    root = tmp_path / "data"
    make_dtd(root, per_class=4)
    data = dtd_config_data(root, tmp_path / "out", **{
        "benchmark.n_experiences": n_experiences, "benchmark.shots": 4,
        "strategies": [{"name": "lamm", "epochs": 1, "batch_size": 2, "loss": {"param": "auto"}}]})
    (captured,), _ = run_capturing(data, tmp_path / "out")
    assert captured.template.weights.param == expected


# --------------------------------------------------------------------------- the CoOp rows of the few-shot files


def _block(text: str, first: str) -> str:
    """The lines of the strategy entry whose first line, comment aside, is ``first`` (the first such)."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.split("#")[0].rstrip() == first)
    end = next((n for n in range(i + 1, len(lines)) if lines[n].startswith("  - ")), len(lines))
    return "\n".join(lines[i:end])


@pytest.mark.parametrize("path", sorted(PAPER.glob("fewshot_*.yaml")), ids=lambda p: p.stem)
def test_fewshot_files_hold_lamms_ctxv1_coop_and_canonical_coop_as_their_comments_say(path, tmp_path):
    cfg = config.load(path, [f"benchmark.root={tmp_path}"])
    coops = {e.run_label: e.options for e in cfg.strategies if e.name == "coop"}
    assert set(coops) == {"coop_ctxv1", "coop"}
    text = path.read_text()
    v1, canonical = coops["coop_ctxv1"], coops["coop"]
    comment = _block(text, "  - name: coop")  # the first coop entry: LAMM's ctxv1 row
    assert "label: coop_ctxv1" in comment and 'CTX_INIT "a photo of a", 4 vectors, 50 epochs' in comment
    assert (v1.n_ctx, v1.ctx_init, v1.epochs, v1.batch_size, v1.lr) == (4, "a photo of a", 50, 32, 0.002)
    block = _block(text.split("label: coop_ctxv1", 1)[1], "  - name: coop")  # the next one: canonical
    assert "16 context vectors" in block and "random init" in block and "class token at the end" in block
    assert (canonical.n_ctx, canonical.ctx_init, canonical.batch_size, canonical.lr) == (16, "random", 32, 0.002)
    stated = re.search(r"epochs: (\d+) +# KaiyangZhou/CoOp .*(vit_b16(?:_ep50)?\.yaml)", block)
    assert stated and int(stated.group(1)) == canonical.epochs
    # ImageNet takes CoOp's 50-epoch file at every shot count, the others its 200-epoch 16-shot file
    assert (canonical.epochs, stated.group(2)) == ((50, "vit_b16_ep50.yaml") if cfg.benchmark.dataset == "imagenet"
                                                   else (200, "vit_b16.yaml"))
    assert "OPTIM.MAX_EPOCH 200" in block or cfg.benchmark.dataset == "imagenet"
    assert cfg.features.train_views == 50  # 200 epochs read each cached view 4 times (README)


def test_canonical_coop_is_sixteen_random_vectors_before_the_class_name(tiny_clip):
    from lamm_cl.strategy_kit.context import StrategyContext
    from lamm_cl.strategy_kit.prompt_learning import shared_context

    cfg = config.load(PAPER / "fewshot_dtd.yaml")
    opts = next(e.options for e in cfg.strategies if e.run_label == "coop")
    ctx = StrategyContext(clip=tiny_clip, class_names=["banded", "dotted"], template="a photo of a {}.",
                          device=torch.device("cpu"), seed=0)
    torch.manual_seed(0)
    prompts, context = shared_context(ctx, opts)
    assert tuple(context.shape) == (16, tiny_clip.token_width)
    assert 0.015 < float(context.std()) < 0.025  # N(0, 0.02^2)
    assert prompts.template == " ".join(["X"] * 16) + " {}."  # the class name last, then the period
    assert prompts.name_start == 17  # SOS, 16 context slots, then the name
