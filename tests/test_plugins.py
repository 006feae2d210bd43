"""Strategy plugins: files named in a YAML, the built-ins in strategies/, entry points, `lamm-cl list`,
the error cases, and the README's worked example run end to end (tiny random CLIP on digits). The runs' claims
are summary.csv and the printed table: their reports are written without drawing the figures (conftest's
``no_plots``; the figures are drawn by test_plots.py and test_report.py)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lamm_cl import registry
from lamm_cl.cli import main

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = {"dataset": "digits", "n_experiences": 2}
MODEL = {"arch": "lamm-tiny", "pretrained": "none"}


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """The registry is process-global: each test works on a copy and leaves no plugin module behind."""
    registry._load_builtins()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_SCANNED", False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("lamm_cl_plugin_", "myplug_")):
            del sys.modules[name]


def write_config(folder: Path, strategies: list, plugins: list | None = None, name: str = "plugtest") -> Path:
    cfg = {"name": name, "device": "cpu", "benchmark": BENCHMARK, "model": MODEL, "strategies": strategies}
    if plugins is not None:
        cfg["plugins"] = plugins
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_plugin(folder: Path, filename: str, body: str) -> Path:
    path = folder / filename
    path.write_text(textwrap.dedent(body))
    return path


# A plugin that reuses the zero-shot builder: no training, so runs take seconds.
ZS_PLUGIN = '''
    """A test plugin."""
    from lamm_cl import register_strategy
    from lamm_cl.strategies.zeroshot import ZeroShotOptions, build as zeroshot

    @register_strategy("{name}", options=ZeroShotOptions)
    def build(ctx, opts):
        """Zero-shot CLIP again, from a plugin."""
        return zeroshot(ctx, opts)
'''


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamm-cl: error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------------
# the public API
# ---------------------------------------------------------------------------

def test_import_is_cheap_and_exports_the_plugin_api():
    code = ("import sys, lamm_cl; from lamm_cl import register_strategy, StrategyOptions; "
            "heavy = [m for m in ('torch', 'avalanche', 'open_clip', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    import lamm_cl

    for name in ("register_strategy", "StrategyOptions", "StrategyContext", "FrozenCLIP", "ClassPrompts",
                 "PromptEncoder", "LabelTable", "PromptClassifier", "lamm_loss", "LammWeights",
                 "param_loss", "feature_loss", "logits_loss"):
        assert name in lamm_cl.__all__
    assert set(lamm_cl.__all__) == {*lamm_cl._EXPORTS, "__version__"}
    import importlib
    from importlib.metadata import version

    for name, module in lamm_cl._EXPORTS.items():  # each name is the object its own module defines
        assert getattr(lamm_cl, name) is getattr(importlib.import_module(module), name), name
    assert lamm_cl.__version__ == version("lamm-cl")
    from lamm_cl.strategy_kit.context import StrategyContext

    assert lamm_cl.StrategyContext is StrategyContext
    with pytest.raises(AttributeError):
        getattr(lamm_cl, "no_such_thing")


# ---------------------------------------------------------------------------
# (b) the built-ins
# ---------------------------------------------------------------------------

def test_builtins_load_through_register_strategy(monkeypatch):
    import lamm_cl.strategies

    seen = []
    real = registry.register_strategy

    def spy(name, **kw):
        seen.append(name)
        return real(name, **kw)

    # a fresh import of every built-in, into an empty registry, with the decorator spied on
    for mod in [m for m in sys.modules if m.startswith("lamm_cl.strategies.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(registry, "register_strategy", spy)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_BUILTINS_LOADED", False)
    registry._load_builtins()
    assert {"zeroshot", "lamm"} <= set(seen)
    assert set(seen) == set(registry._REGISTRY)
    for name in ("zeroshot", "lamm"):
        spec = registry.get_strategy(name)
        assert spec.source == f"built-in strategies/{name}.py"
        assert spec.build is sys.modules[f"lamm_cl.strategies.{name}"].build
        assert spec.description
    assert Path(lamm_cl.strategies.__path__[0]).name == "strategies"


def test_builtin_options_read_from_source_are_the_registered_ones():
    """Before the built-ins are imported, a config's options and `trains` come from their source (so a bad option
    is refused without torch); what that reading finds must be what each strategy registers."""
    declared = registry._builtin_declarations()
    registry._load_builtins()
    assert set(declared) == {s.name for s in registry.list_strategies() if s.source.startswith("built-in")}
    for name, d in declared.items():
        spec = registry.get_strategy(name)
        assert d.options is not None and d.options[0] == "lamm_cl.strategy_kit.options", name  # the light module
        module, cls = d.options
        assert getattr(sys.modules[module], cls) is spec.options, name
        assert d.trains is spec.trains, name
    assert [n for n, d in declared.items() if not d.trains] == ["simplecil", "zeroshot"]


# ---------------------------------------------------------------------------
# (a) a plugin file named in the YAML
# ---------------------------------------------------------------------------

def test_plugin_file_runs_end_to_end(tmp_path, capsys, no_plots):
    write_plugin(tmp_path, "zs_again.py", ZS_PLUGIN.format(name="zs_again"))
    cfg = write_config(tmp_path, [{"name": "zs_again"}], plugins=["zs_again.py"])
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^zs_again\s+0\s", printed, flags=re.M), printed
    summary = pd.read_csv(out / "summary.csv")
    assert "zs_again" in set(summary["strategy"])
    assert ("plot_accuracy_matrix", "accuracy_matrix_zs_again", ("png",)) in no_plots  # its figure, not drawn
    spec = registry.get_strategy("zs_again")
    assert spec.source == f"file {(tmp_path / 'zs_again.py').resolve()}"
    assert spec.description == "Zero-shot CLIP again, from a plugin."


def test_plugin_options_are_validated_like_the_config(tmp_path, capsys):
    write_plugin(tmp_path, "opts.py", '''
        from dataclasses import dataclass
        from lamm_cl import StrategyOptions, register_strategy

        @dataclass
        class Opts(StrategyOptions):
            shrink: float = 0.0  # a plugin's own key

        @register_strategy("with_opts", options=Opts)
        def build(ctx, opts):
            raise AssertionError("not reached: the config is rejected first")
    ''')
    cfg = write_config(tmp_path, [{"name": "with_opts", "shrink": "lots"}], plugins=["opts.py"])
    assert main(["run", str(cfg)]) == 2
    assert "strategies[0].shrink: expected a number, got 'lots'" in one_error_line(capsys)


# ---------------------------------------------------------------------------
# (c) an installed package's entry point
# ---------------------------------------------------------------------------

def make_distribution(folder: Path, strategy: str, module: str, body: str) -> None:
    """A distribution as an installer leaves it: a module plus its .dist-info with entry_points.txt."""
    (folder / f"{module}.py").write_text(textwrap.dedent(body))
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lamm_cl.strategies]\n{strategy} = {module}\n")


def test_entry_point_plugin_is_found_lazily(tmp_path, monkeypatch, capsys, no_plots):
    make_distribution(tmp_path, "ep_zeroshot", "myplug_ep", ZS_PLUGIN.format(name="ep_zeroshot"))
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib's caches
    registry.get_strategy("zeroshot")  # a known name does not scan entry points
    assert "myplug_ep" not in sys.modules
    cfg = write_config(tmp_path, [{"name": "ep_zeroshot"}])  # no `plugins:` -- found by its entry point
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--output", str(out), "--no-progress"]) == 0
    assert re.search(r"^ep_zeroshot\s+0\s", capsys.readouterr().out, flags=re.M)
    assert "ep_zeroshot" in set(pd.read_csv(out / "summary.csv")["strategy"])
    assert registry.get_strategy("ep_zeroshot").source == "entry point ep_zeroshot = myplug_ep (myplug_ep 0.1)"


def test_entry_point_that_fails_to_import(tmp_path, monkeypatch, capsys):
    make_distribution(tmp_path, "ep_broken", "myplug_broken", "raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list"]) == 2
    err = one_error_line(capsys)
    assert "entry point ep_broken = myplug_broken" in err and "RuntimeError: no GPU here" in err


# ---------------------------------------------------------------------------
# errors: one line, status 2
# ---------------------------------------------------------------------------

def test_duplicate_of_a_builtin(tmp_path, capsys):
    write_plugin(tmp_path, "dup.py", ZS_PLUGIN.format(name="zeroshot"))
    cfg = write_config(tmp_path, [{"name": "zeroshot"}], plugins=["dup.py"])
    assert main(["run", str(cfg)]) == 2
    err = one_error_line(capsys)
    assert "'zeroshot' is registered twice: by built-in strategies/zeroshot.py and by file" in err
    assert "dup.py" in err


def test_duplicate_across_plugin_files(tmp_path, capsys):
    write_plugin(tmp_path, "one.py", ZS_PLUGIN.format(name="twin"))
    write_plugin(tmp_path, "two.py", ZS_PLUGIN.format(name="twin"))
    cfg = write_config(tmp_path, [{"name": "twin"}], plugins=["one.py", "two.py"])
    assert main(["run", str(cfg)]) == 2
    err = one_error_line(capsys)
    assert "'twin' is registered twice" in err and "one.py" in err and "two.py" in err


def test_plugin_with_a_syntax_error(tmp_path, capsys):
    write_plugin(tmp_path, "broken.py", "def build(:\n    pass\n")
    cfg = write_config(tmp_path, [{"name": "zeroshot"}], plugins=["broken.py"])
    assert main(["run", str(cfg)]) == 2
    err = one_error_line(capsys)
    assert "broken.py failed to import" in err and "SyntaxError" in err


def test_plugin_that_raises_at_import_leaves_nothing_registered(tmp_path, capsys):
    body = textwrap.dedent(ZS_PLUGIN.format(name="half_done")) + "raise ValueError('boom')\n"
    write_plugin(tmp_path, "raises.py", body)
    cfg = write_config(tmp_path, [{"name": "half_done"}], plugins=["raises.py"])
    assert main(["run", str(cfg)]) == 2
    err = one_error_line(capsys)
    line = body.splitlines().index("raise ValueError('boom')") + 1
    assert f"raises.py failed to import at line {line}: ValueError: boom" in err
    assert "half_done" not in registry._REGISTRY
    assert main(["list", str(cfg)]) == 2  # the same file, the same line, through `lamm-cl list`
    assert "ValueError: boom" in one_error_line(capsys)


def test_missing_plugin_file(tmp_path, capsys):
    cfg = write_config(tmp_path, [{"name": "zeroshot"}], plugins=["nowhere.py"])
    assert main(["run", str(cfg)]) == 2
    err = one_error_line(capsys)
    assert "plugin file nowhere.py not found" in err and str(tmp_path) in err


def test_unknown_strategy_lists_the_known_names(tmp_path, capsys):
    cfg = write_config(tmp_path, [{"name": "zeroshot"}, {"name": "nobody_registered_me"}])
    assert main(["run", str(cfg)]) == 2
    err = one_error_line(capsys)
    assert "strategies[1].name: unknown strategy 'nobody_registered_me'; known:" in err
    assert "lamm" in err and "zeroshot" in err


def test_register_strategy_rejects_bad_arguments():
    with pytest.raises(TypeError, match="needs a name"):
        registry.register_strategy(lambda ctx, opts: None)
    with pytest.raises(TypeError, match="StrategyOptions"):
        registry.register_strategy("bad_options", options=dict)
    with pytest.raises(TypeError, match="inputs"):
        registry.register_strategy("bad_inputs", inputs="pixels")


# ---------------------------------------------------------------------------
# lamm-cl list
# ---------------------------------------------------------------------------

def test_list_prints_strategies_datasets_and_benchmarks(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  zeroshot\s+built-in strategies/zeroshot\.py\s+Zero-shot", out, flags=re.M), out
    assert re.search(r"^  lamm\s+built-in strategies/lamm\.py\s+\S", out, flags=re.M)
    datasets = out.split("datasets", 1)[1]
    for name in ("digits", "cifar100"):
        assert re.search(rf"^  {name}$", datasets, flags=re.M)
    assert re.search(r"^  benchmarks/quickstart\.yaml\s+quickstart$", out, flags=re.M)


def test_list_with_a_config_shows_its_plugins(tmp_path, monkeypatch, capsys):
    write_plugin(tmp_path, "listed.py", ZS_PLUGIN.format(name="listed_one"))
    cfg = write_config(tmp_path, [{"name": "listed_one"}], plugins=["listed.py"])
    monkeypatch.chdir(tmp_path)  # no ./benchmarks here
    assert main(["list", cfg.name]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^  listed_one\s+file {re.escape(str(tmp_path / 'listed.py'))}\s+Zero-shot CLIP again",
                     out, flags=re.M), out
    assert "benchmark files: none" in out


# ---------------------------------------------------------------------------
# the README's worked example
# ---------------------------------------------------------------------------

def readme_section() -> str:
    """The README's "Adding a strategy" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Adding a strategy", 1)[1]
    return re.split(r"^## ", section, flags=re.M)[0]


def code_block(section: str, lang: str) -> str:
    m = re.search(rf"^```{lang}\n(.*?)^```", section, flags=re.M | re.S)
    assert m, f"no ```{lang} block in the README's 'Adding a strategy' section"
    return m.group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys, no_plots):
    section = readme_section()
    plugin, config = code_block(section, "python"), code_block(section, "yaml")
    command = next(line for line in code_block(section, "bash").splitlines() if line.startswith("lamm-cl run"))
    cfg = yaml.safe_load(config)
    (tmp_path / cfg["plugins"][0]).write_text(plugin)
    (tmp_path / shlex.split(command)[2]).write_text(config)
    monkeypatch.chdir(tmp_path)
    assert main([*shlex.split(command)[1:], "--no-progress"]) == 0
    printed = capsys.readouterr().out
    names = [s["name"] for s in cfg["strategies"]]
    for name in names:
        assert re.search(rf"^{name}\s+0\s", printed, flags=re.M), printed
    summary = pd.read_csv(tmp_path / "results" / cfg["name"] / "summary.csv").set_index(["strategy", "seed"])
    assert set(names) <= set(summary.index.get_level_values(0))
    new = names[-1]  # the example's strategy
    assert registry.get_strategy(new).source.startswith("file ")
    # neighbours among frozen features beat hand-made prompts on a random-weight CLIP
    avg = summary["avg_incremental_accuracy"]
    assert avg[(new, "0")] > avg[("zeroshot", "0")]
