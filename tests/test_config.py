"""Config loading: typed values, full key paths in errors, --set overrides, exit status 2."""
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
    assert lamm.weights(shots=16).param == pytest.approx(1 / 16) and lamm.weights(None).param == 1.0
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
