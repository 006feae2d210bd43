"""The `lamm-cl` command itself: the resume hint, cheap start-up, sweep files told apart from benchmark
files, grid keys by strategy name, and the one warnings rule of the command line, the API and workers."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import lamm_cl
from lamm_cl import config
from lamm_cl.cli import main, resume_command
from lamm_cl.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parent.parent
STOPPER_FILE: Path
FEATURES: Path

STOPPER = '''
"""zeroshot that is interrupted (Ctrl-C, or SIGTERM's Terminated) the first time it is built for seed 1."""
import os
from pathlib import Path

from lamm_cl.cli import Terminated
from lamm_cl.registry import get_strategy, register_strategy

ZEROSHOT = get_strategy("zeroshot")


@register_strategy("stops_once", options=ZEROSHOT.options, trains=False)
def build(ctx, opts):
    """zeroshot, interrupted once."""
    flag = Path(os.environ["LAMM_CL_TEST_STOP"])
    if ctx.seed == 1 and flag.exists():
        kind = flag.read_text()
        flag.unlink()
        raise Terminated() if kind == "term" else KeyboardInterrupt()
    return ZEROSHOT.build(ctx, opts)
'''


@pytest.fixture(scope="module", autouse=True)
def stopper(tmp_path_factory, feature_store):
    """The plugin file, one per module: a file registers its names once per process. The runs here use the
    session's feature store (conftest's ``feature_store``), which the other `lamm-cl run` tests share."""
    global STOPPER_FILE, FEATURES
    STOPPER_FILE = tmp_path_factory.mktemp("plugin") / "stopper.py"
    STOPPER_FILE.write_text(STOPPER)
    FEATURES = feature_store


def tiny_config(folder: Path, strategies, **top) -> Path:
    data = {"name": "hinted", "seeds": [0], "device": "cpu", "plugins": [str(STOPPER_FILE)],
            "benchmark": {"dataset": "digits", "n_experiences": 2, "class_order": "seeded", "order_seed": 0,
                          "shots": 4},
            "model": {"arch": "lamm-tiny", "pretrained": "none"},
            "features": {"cache": True, "cache_dir": str(FEATURES)},
            "strategies": strategies, **top}
    path = folder / "my config.yaml"  # a space: the hint must quote it
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- 1. the resume hint


@pytest.mark.parametrize("kind,status,said", [("int", 130, "interrupted"), ("term", 143, "terminated (SIGTERM)")])
def test_pasted_resume_hint_continues_the_same_run(tmp_path, monkeypatch, capsys, kind, status, said):
    import lamm_cl.report

    monkeypatch.setattr(lamm_cl.report, "build_report", lambda *a, **k: [])  # plots: tested elsewhere
    monkeypatch.chdir(tmp_path)  # a hint without --output would resume results/hinted here
    cfg = tiny_config(tmp_path, [{"name": "zeroshot"}, {"name": "stops_once"}])
    flag = tmp_path / "stop"
    flag.write_text(kind)
    monkeypatch.setenv("LAMM_CL_TEST_STOP", str(flag))
    out = tmp_path / "runs" / "x"
    argv = ["run", str(cfg), "--set", "seeds=[0, 1]", "--output", str(out), "--no-progress"]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert said in err
    hint = err.split("continue with: ", 1)[1].strip().splitlines()[0]
    pasted = shlex.split(hint)
    assert pasted[0] == "lamm-cl" and pasted[1:] == [*argv, "--resume"]

    assert main(pasted[1:]) == 0
    log = capsys.readouterr().out
    assert "zeroshot seed 0: already finished, kept" in log and "stops_once seed 0: already finished, kept" in log
    assert "zeroshot seed 1: already finished, kept" in log
    for strategy in ("zeroshot", "stops_once"):
        for seed in (0, 1):
            assert (out / strategy / f"seed{seed}" / "summary.json").is_file()
    assert not (tmp_path / "results").exists()


def test_resume_command_keeps_everything_and_adds_resume_once():
    assert resume_command(["run", "a b.yaml", "--set", "x=[1, 2]", "--resume"]) == \
        "lamm-cl run 'a b.yaml' --set 'x=[1, 2]' --resume"
    assert resume_command(["run", "c.yaml", "--overwrite", "--output", "o"]) == "lamm-cl run c.yaml --output o --resume"


# --------------------------------------------------------------------------- 8. start-up without torch

HEAVY = ("torch", "avalanche", "open_clip")


def _heavy_modules_after(argv: list[str], cwd: Path) -> tuple[int, list[str], str]:
    code = ("import json, sys\nfrom lamm_cl.cli import main\ntry:\n    rc = main(json.loads(sys.argv[1]))\n"
            "except SystemExit as e:\n    rc = e.code\n"
            f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    rc, heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    return rc, heavy, proc.stdout + proc.stderr


def test_version_help_list_and_refusals_import_no_torch(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("x")
    missing_key = tmp_path / "bad.yaml"
    missing_key.write_text("name: x\nstrategies: [{name: lamm}]\n")
    quick = str(ROOT / "benchmarks" / "quickstart.yaml")
    cases = [
        (["--version"], 0, f"lamm-cl {lamm_cl.__version__}"),
        (["--help"], 0, "usage: lamm-cl"),
        (["list"], 0, "sweep files"),
        (["run", str(missing_key)], 2, "benchmark: required key is missing"),
        (["run", quick, "--output", str(full)], 2, "is not empty"),
        (["run", str(ROOT / "benchmarks" / "sweeps" / "coop11.yaml")], 2, "lamm-cl sweep"),
        (["run", str(tmp_path / "nothing.yaml")], 2, "config file not found"),
    ]
    for argv, want_rc, said in cases:
        rc, heavy, text = _heavy_modules_after(argv, ROOT)
        assert (rc, heavy) == (want_rc, []), (argv, text)
        assert said in text, (argv, text)


def test_python_dash_m_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "lamm_cl", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"lamm-cl {lamm_cl.__version__}"


# --------------------------------------------------------------------------- 9. sweep files vs benchmark files


def test_run_on_a_sweep_file_names_sweep_and_the_reverse(capsys):
    sweep = str(ROOT / "benchmarks" / "sweeps" / "coop11.yaml")
    bench = str(ROOT / "benchmarks" / "quickstart.yaml")
    assert main(["run", sweep]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a sweep file" in err and f"lamm-cl sweep {sweep}" in err
    assert main(["sweep", bench]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a sweep file" in err and f"lamm-cl run {bench}" in err


def test_list_shows_sweep_files_apart(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    benchmarks, sweeps = out.split("\nsweep files")
    assert "benchmarks/sweeps/coop11.yaml" in sweeps and "benchmarks/sweeps/" not in benchmarks
    assert "benchmarks/quickstart.yaml" in benchmarks and "quickstart" not in sweeps


# --------------------------------------------------------------------------- 2. --set and grid keys by name


def test_set_by_name_and_refusals_through_the_command(tmp_path, capsys):
    cfg = tiny_config(tmp_path, [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}])
    assert main(["run", str(cfg), "--dry-run", "--set", "strategies.lamm.epochs=2"]) == 0
    assert "strategy lamm: epochs 2" in capsys.readouterr().out
    for assignment, said in [("strategies.lamm.epochs=1", "changes nothing"),
                             ("strategies.zeroshot.lr=0.01", "zeroshot trains nothing")]:
        assert main(["run", str(cfg), "--dry-run", "--set", assignment]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and said in err, err


def _sweep(tmp_path, grid, strategies=("lamm",)) -> Path:
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({
        "name": "b", "seeds": [0], "device": "cpu",
        "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": 4},
        "model": {"arch": "lamm-tiny", "pretrained": "none"},
        "strategies": [{"name": "coop", "epochs": 1}, {"name": "lamm", "epochs": 1}]}, sort_keys=False))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "benchmarks": ["bench.yaml"], "strategies": list(strategies),
                                     "grid": grid, "output": str(tmp_path / "out")}, sort_keys=False))
    return sweep


def test_grid_by_name_changes_the_named_strategy(tmp_path):
    from lamm_cl.sweep.spec import expand, read_config

    path = _sweep(tmp_path, {"strategies.lamm.lr": [0.002, 0.01]})
    sweep = expand(read_config(path), path)
    lrs = []
    for job in sweep.jobs:
        cfg = config.load(job.config, job.run_overrides())
        coop, lamm = (e.options for e in cfg.strategies)
        assert coop.lr == 0.002
        lrs.append(lamm.lr)
    assert [j.strategy for j in sweep.jobs] == ["lamm", "lamm"] and lrs == [0.002, 0.01]


@pytest.mark.parametrize("grid", [
    {"strategies.0.lr": [0.002, 0.01]},  # index 0 is coop, which the sweep does not run
    {"benchmark.shots": [4]},  # what the file already holds
])
def test_grid_axis_that_changes_no_job_is_refused(tmp_path, grid):
    from lamm_cl.sweep.spec import expand, read_config

    path = _sweep(tmp_path, grid)
    with pytest.raises(ConfigError, match=rf"grid\.{list(grid)[0]}: changes nothing in any job"):
        expand(read_config(path), path)
    path = _sweep(tmp_path, grid, strategies=("coop", "lamm"))
    if "strategies" in list(grid)[0]:  # coop runs now: the axis changes its jobs
        assert len(expand(read_config(path), path).jobs) == 4


# --------------------------------------------------------------------------- 9. one warnings rule


def test_python_api_hides_third_party_warnings_as_the_command_does(monkeypatch, tmp_path):
    import lamm_cl.api

    def noisy(*args, **kwargs):
        warnings.warn("a third-party notice", UserWarning, stacklevel=1)
        raise UserError("stop here")

    monkeypatch.setattr(lamm_cl.api, "run_config", noisy)
    cfg = tiny_config(tmp_path, [{"name": "zeroshot"}])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(UserError):
            lamm_cl.run(cfg, output=tmp_path / "o", progress=False)
        assert [str(w.message) for w in seen] == []
        warnings.warn("the caller's own", UserWarning, stacklevel=1)  # the caller's filters are back afterwards
    assert [str(w.message) for w in seen] == ["the caller's own"]


def test_cli_api_and_workers_share_one_rule():
    from lamm_cl import api, cli
    from lamm_cl.sweep import job
    from lamm_cl.warnings_policy import hide_third_party_warnings, quiet_third_party_warnings

    assert cli.quiet_third_party_warnings is quiet_third_party_warnings
    assert job.hide_third_party_warnings is hide_third_party_warnings
    assert "quiet_third_party_warnings" in Path(api.__file__).read_text()
