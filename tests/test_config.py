"""Config loading: typed values, full key paths in errors, --set overrides, exit status 2."""
from pathlib import Path

import pytest
import yaml

from lamm_cl import config
from lamm_cl.cli import main
from lamm_cl.errors import ConfigError

BASE = {
    "name": "t",
    "benchmark": {"dataset": "digits", "n_experiences": 5},
    "model": {"arch": "lamm-tiny", "pretrained": "none"},
    "strategies": [{"name": "zeroshot"}, {"name": "lamm", "epochs": 1}],
}


def _with(path, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    config.apply_override(data, f"{path}={value}")
    return data


def test_defaults_and_types():
    cfg = config.parse(BASE)
    assert cfg.seeds == [0] and cfg.device == "auto" and cfg.features.cache is True
    lamm = cfg.strategies[1].options
    assert lamm.epochs == 1 and lamm.lr == 0.002 and lamm.label_tokens == "min" and lamm.loss.logits == 0.05
    # auto: 1/shots few-shot and incremental (the reference's --shots 16 base->new scripts), else 1
    assert lamm.weights(16, n_experiences=2).param == pytest.approx(1 / 16) and lamm.weights(None, 5).param == 1.0
    assert lamm.weights(16, n_experiences=1).param == 1.0  # one task of every class: the few-shot scripts, no --shots
    assert cfg.to_dict()["strategies"][1]["loss"]["logits_kind"] == "reference"


@pytest.mark.parametrize("path,value,message", [
    ("strategies.1.lr", "fast", "strategies[1].lr: expected a number, got 'fast'"),
    ("strategies.1.speed", "1", "strategies[1].speed: unknown key"),
    ("strategies.1.label_tokens", "some", "strategies[1].label_tokens: expected"),
    ("strategies.1.loss.logits_kind", "js", "strategies[1].loss.logits_kind: expected 'reference' or 'kl'"),
    ("strategies.1.loss.param", "-1", "strategies[1].loss.param: expected 0 or more, got -1"),
    ("strategies.1.loss.feature", "-0.5", "strategies[1].loss.feature: expected 0 or more, got -0.5"),
    ("strategies.1.loss.logits", "-1", "strategies[1].loss.logits: expected 0 or more, got -1"),
    ("benchmark.n_experiences", "many", "benchmark.n_experiences: expected an integer, got 'many'"),
    ("benchmark.colour", "red", "benchmark.colour: unknown key"),
    ("seeds", "0", "seeds: expected a list of integers"),
    ("features.cache", "maybe", "features.cache: expected true or false"),
    ("strategies.0.name", "nope", "strategies[0].name: unknown strategy 'nope'"),
])
def test_errors_name_the_full_key_path(path, value, message):
    with pytest.raises(ConfigError) as e:
        config.parse(_with(path, value))
    assert str(e.value).startswith(message)


def test_missing_required_keys():
    data = yaml.safe_load(yaml.safe_dump(BASE))
    del data["benchmark"]["dataset"]
    with pytest.raises(ConfigError, match=r"^benchmark.dataset: required key is missing"):
        config.parse(data)
    data = yaml.safe_load(yaml.safe_dump(BASE))
    del data["strategies"]
    with pytest.raises(ConfigError, match=r"^strategies: required"):
        config.parse(data)


def test_set_overrides_index_lists_and_parse_values():
    data = yaml.safe_load(yaml.safe_dump(BASE))
    config.apply_override(data, "strategies.1.epochs=3")
    config.apply_override(data, "seeds=[1, 2]")
    config.apply_override(data, "benchmark.shots=null")
    cfg = config.parse(data)
    assert cfg.strategies[1].options.epochs == 3 and cfg.seeds == [1, 2] and cfg.benchmark.shots is None
    with pytest.raises(ConfigError, match="strategies is a list of 2"):
        config.apply_override(data, "strategies.5.epochs=1")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        config.apply_override(data, "strategies.1.epochs")


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("strategies.1.lr", "fast")))
    assert main(["run", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lamm-cl: error: strategies[1].lr: expected a number, got 'fast'"
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nbenchmark: [unclosed\n")
    assert main(["run", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken YAML" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- a strategy by name; no-op --set


def _file(tmp_path, data=BASE):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_set_names_a_strategy_and_indices_keep_working(tmp_path):
    path = _file(tmp_path, {**BASE, "strategies": [{"name": "coop"}, {"name": "lamm", "epochs": 1}]})
    cfg = config.load(path, ["strategies.lamm.lr=0.01", "strategies.0.epochs=7"], refuse_no_ops=True)
    coop, lamm = (e.options for e in cfg.strategies)
    assert lamm.lr == 0.01 and coop.lr == 0.002  # the named one, not index 0
    assert coop.epochs == 7 and lamm.epochs == 1
    assert config.key_path(yaml.safe_load(path.read_text()), "strategies.lamm.loss.param") == \
        ["strategies", 1, "loss", "param"]
    with pytest.raises(ConfigError, match="strategies has no entry named 'lam'; it has coop, lamm"):
        config.load(path, ["strategies.lam.lr=0.01"])


@pytest.mark.parametrize("assignment", [
    "strategies.lamm.epochs=1",  # written in the file
    "strategies.lamm.lr=0.002",  # the default
    "seeds=[0]",
    "benchmark.n_experiences=5",
])
def test_set_that_changes_nothing_is_refused(tmp_path, assignment):
    path = _file(tmp_path)
    with pytest.raises(ConfigError, match=r"changes nothing"):
        config.load(path, [assignment], refuse_no_ops=True)
    config.load(path, [assignment])  # what a sweep job's own overrides do: accepted


def test_set_renaming_then_naming_the_entry(tmp_path):
    cfg = config.load(_file(tmp_path), ["strategies.lamm.name=coop_lamm", "strategies.coop_lamm.lr=0.01"],
                      refuse_no_ops=True)
    assert cfg.strategies[1].name == "coop_lamm" and cfg.strategies[1].options.lr == 0.01


@pytest.mark.parametrize("strategy,key", [("zeroshot", "lr"), ("zeroshot", "batch_size"), ("simplecil", "epochs"),
                                          ("simplecil", "lr")])
def test_training_options_for_a_strategy_that_trains_nothing_are_refused(tmp_path, strategy, key):
    data = {**BASE, "strategies": [{"name": strategy, key: 1}, {"name": "lamm", "epochs": 1}]}
    with pytest.raises(ConfigError, match=rf"strategies\[0\]\.{key}: {strategy} trains nothing"):
        config.parse(data)
    with pytest.raises(ConfigError, match=rf"strategies\[0\]\.lr: {strategy} trains nothing"):
        config.load(_file(tmp_path, {**BASE, "strategies": [{"name": strategy}]}), [f"strategies.{strategy}.lr=0.1"])


# --------------------------------------------------------------------------- the shipped files' lambda_p


def _lambda_p(entry, benchmark):
    p = entry.options.loss.param
    n = benchmark.n_experiences or len(benchmark.classes_per_experience or [1])
    return (1.0 / benchmark.shots if benchmark.shots and n > 1 else 1.0) if p == "auto" else p


SHIPPED = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.yaml")) + sorted(SHIPPED.glob("lamm_paper/*.yaml")),
                         ids=lambda p: p.name)
def test_lamm_entries_of_a_shipped_file_share_the_lambda_p_its_comment_states(path):
    import re

    cfg = config.load(path)
    values = {e.name: _lambda_p(e, cfg.benchmark) for e in cfg.strategies
              if e.name in ("lamm", "coop_lamm", "maple_lamm")}
    assert len(set(values.values())) <= 1, f"{path.name}: {values}"
    for stated in re.findall(r"lambda_p (1/16|1)\b as every LAMM entry", path.read_text()):
        assert set(values.values()) == {1 / 16 if stated == "1/16" else 1.0}, f"{path.name}: {stated} vs {values}"
