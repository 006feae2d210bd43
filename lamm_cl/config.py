"""The YAML a user writes, as typed and validated dataclasses (DESIGN section 9).

YAML stays plain data; :func:`parse` turns it into :class:`Config`. Unknown
keys, wrong types and missing required fields raise :class:`ConfigError` with
the key's full path, e.g. ``strategies[1].lr: expected a number, got 'fast'``.
Strategy entries are checked against the options dataclass their strategy
registered, so a plugin's own keys are validated the same way.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml

from lamm_cl.errors import ConfigError


@dataclass
class TargetConfig:
    """One entry of ``benchmark.evaluate_on``: a dataset never trained, evaluated after every experience."""

    dataset: str  # imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r | any other dataset's name
    root: Optional[str] = None  # where it lives; null: benchmark.root
    template: Optional[str] = None  # prompt template with {} for its unseen classes; null: the dataset's own


@dataclass
class SequenceEntry:
    """One dataset of a benchmark made of a sequence of datasets (one experience each)."""

    dataset: str  # a registered dataset name (`lamm-cl list`)
    root: str = "~/data"  # where this dataset lives
    download: bool = False  # fetch it where the source allows (CIFAR-100, MNIST)


@dataclass
class BenchmarkConfig:
    # digits | cifar100 | imagefolder | one of the 11 CoOp datasets; null with `sequence`
    dataset: Optional[str] = None
    root: str = "~/data"  # where the dataset lives (CoOp layout, ImageFolder tree, CIFAR pickles)
    download: bool = False  # fetch where the source allows (CIFAR-100)
    n_experiences: Optional[int] = None  # equal split of the classes ...
    classes_per_experience: Optional[list[int]] = None  # ... or an explicit count per experience
    # identity: the dataset's label order; or an explicit list of class ids
    class_order: Union[Literal["icarl", "identity", "seeded"], list[int]] = "seeded"
    order_seed: Optional[int] = None  # seed of a seeded order; null: the run's seed
    shots: Optional[int] = None  # k training images per class, drawn with the run's seed
    # how the shots are drawn: numpy (per class in class order, numpy's generator) | dassl (Dassl's
    # generate_fewshot_dataset: Python's random seeded with the run's seed, the same images as the reference)
    sampling: Literal["numpy", "dassl"] = "numpy"
    template: Optional[str] = None  # prompt template with {}; null: the dataset's own
    # datasets never trained, evaluated after every experience (domain generalization, cross-dataset transfer)
    evaluate_on: list[TargetConfig] = field(default_factory=list)
    # a benchmark made of several datasets, one experience each, in this order (MTIL, X-TAIL); replaces
    # dataset/root/download, n_experiences/classes_per_experience and class_order
    sequence: Optional[list[SequenceEntry]] = None
    # how a sequence's datasets are scored: task_aware (MTIL: among the dataset's own classes) |
    # all_classes (X-TAIL: among the classes of every dataset of the sequence, trained or not)
    evaluation: Literal["task_aware", "all_classes"] = "task_aware"

    def describe(self) -> str:
        """The dataset, or the sequence's datasets in order, for one-line messages."""
        if self.sequence is not None:
            return "sequence " + " > ".join(e.dataset for e in self.sequence)
        return str(self.dataset)


SEQUENCE_REPLACES = ("dataset", "root", "download", "n_experiences", "classes_per_experience", "class_order",
                     "order_seed")  # the keys of one split dataset that a sequence stands in for


def benchmark_dict(b: BenchmarkConfig) -> dict:
    """The benchmark section as plain data that parses back: a split benchmark without the sequence keys
    (so results written before sequences existed keep their resolved config), a sequence without the keys
    it replaces."""
    out = dataclasses.asdict(b)
    drop = SEQUENCE_REPLACES if b.sequence is not None else ("sequence", "evaluation")
    if not b.evaluate_on:  # evaluate_on only when given: the resolved config of a run without targets stays as it was
        drop = (*drop, "evaluate_on")
    return {k: v for k, v in out.items() if k not in drop}


@dataclass
class ModelConfig:
    arch: str = "ViT-B-16"  # any open_clip architecture, or lamm-tiny
    pretrained: str = "openai"  # open_clip tag | path to a checkpoint file | none
    # bf16-autocast: fp32 weights, bf16 autocast on CUDA (plain fp32 on CPU); fp16: weights, features and
    # trainable vectors in fp16, plain SGD, as the reference; fp32: no autocast and no TF32 anywhere
    precision: Literal["bf16-autocast", "fp16", "fp32"] = "bf16-autocast"


@dataclass
class FeaturesConfig:
    cache: bool = True  # share frozen image features across strategies, seeds and runs
    cache_dir: Optional[str] = None  # default: the user's cache folder
    train_views: int = 0  # augmented views cached per training image; 0: centre crop only
    dtype: Literal["float32", "float16"] = "float32"  # storage precision of cached features (float16 halves the disk)


@dataclass
class StrategyEntry:
    """One entry of ``strategies:``: a registered name, that strategy's options, and an optional label."""

    name: str
    options: Any  # an instance of the strategy's options dataclass
    raw: dict  # the entry as written (after --set), for the resolved config
    label: Optional[str] = None  # what results are kept and shown under (<label>/seed<k>/); null: the name
    save_model: Optional[bool] = None  # write model.pt after the last experience; null: the config's save_model

    @property
    def run_label(self) -> str:
        """The label results are kept and shown under: ``label`` when given, else the strategy's name."""
        return self.label or self.name

    def saves_model(self, cfg: "Config") -> bool:
        """Whether this entry's runs write ``model.pt``: its own ``save_model``, else the config's."""
        return cfg.save_model if self.save_model is None else self.save_model


@dataclass
class Config:
    name: str  # results go to results/<name>/ unless `output` is set
    benchmark: BenchmarkConfig
    strategies: list[StrategyEntry] = field(default_factory=list)  # run in this order, each on the same benchmark
    output: Optional[str] = None  # results folder
    seeds: list[int] = field(default_factory=lambda: [0])  # one full run per seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    plugins: list[str] = field(default_factory=list)  # extra strategy plugin files (.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    loggers: list[dict] = field(default_factory=list)  # Avalanche loggers by name: tensorboard | wandb | csv (+ params)
    save_model: bool = False  # keep each run's trained model (<strategy>/seed<k>/model.pt; lamm_cl.load_model)
    source: Optional[str] = None  # the YAML file this came from (not a YAML key)

    def results_dir(self, override: Optional[str] = None) -> Path:
        """Where a run writes: ``--output``, else the config's ``output``, else ``results/<name>``."""
        return Path(override or self.output or Path("results") / self.name).expanduser()

    def to_dict(self) -> dict:
        """The resolved config as plain data (what ``config.yaml`` in the results holds)."""
        out = {
            "name": self.name,
            "output": self.output,
            "seeds": list(self.seeds),
            "device": self.device,
            "plugins": list(self.plugins),
            "benchmark": benchmark_dict(self.benchmark),
            "model": dataclasses.asdict(self.model),
            "features": dataclasses.asdict(self.features),
            "loggers": [dict(x) for x in self.loggers],
            "save_model": self.save_model,
            "strategies": [{"name": s.name, **({"label": s.label} if s.label else {}),
                            **({"save_model": s.save_model} if s.save_model is not None else {}),
                            **dataclasses.asdict(s.options)} for s in self.strategies],
        }
        return out


# ---------------------------------------------------------------------------
# generic typed conversion
# ---------------------------------------------------------------------------

def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict or tp is dict:
        return "a mapping"
    if origin is Union:
        return ", or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _fail(path: str, tp, value) -> ConfigError:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"{path}: expected {_describe(tp)}, got {shown}")


def convert(tp, value, path: str):
    """Check ``value`` against type ``tp`` and return it converted (ints accepted as floats).

    Raises:
        ConfigError: naming ``path``.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: expected {_describe(tp)}, got null")
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(a, value, path)
            except ConfigError:
                continue
        raise _fail(path, tp, value)
    if value is None:
        raise ConfigError(f"{path}: expected {_describe(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(path, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _fail(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(path, tp, value)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(next(a for a in typing.get_args(tp) if a == value)):
            return value
        raise _fail(path, tp, value)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(path, tp, value)
        (item,) = typing.get_args(tp)
        return [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(path, tp, value)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    raise TypeError(f"unsupported config type {tp!r} at {path}")


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    # Resolving a dataclass's string annotations compiles each one; a sweep's dry run validates thousands of
    # configs (each strategy entry's options class again), so resolve each class once.
    return typing.get_type_hints(cls)


def from_dict(cls, data, path: str, skip: tuple[str, ...] = ()):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields and key not in skip:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}: unknown key; known keys here: {known}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    return cls(**kwargs)


# ---------------------------------------------------------------------------
# loading, overrides, validation
# ---------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error, not last-wins."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with `<<` may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key; the base class says so
                    continue
                if twice:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice in one mapping", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_finite(value, path: str) -> None:
    """Refuse NaN and infinite numbers anywhere in the config (``.nan``/``.inf`` are valid YAML floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


SEED_RANGE = 2**32  # NumPy takes seeds in 0..2**32-1


@functools.lru_cache(maxsize=256)
def _parse_yaml(text: str):
    # Keyed on the text itself, so an edited file is parsed anew. A sweep reads each benchmark file once per
    # job (hundreds of jobs over a dozen files), and PyYAML's pure-Python parser is most of a dry run's time.
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file as plain data.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or not a mapping.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e.__class__.__name__}: {e})") from None
    try:
        data = copy.deepcopy(_parse_yaml(text))  # a copy: callers may change what they get
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: broken YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


TRAINING_OPTIONS = ("lr", "epochs", "batch_size")  # refused for a strategy that trains nothing
# Strategies that train CLIP's own weights: `model.precision: fp16` would train them in fp16 with plain SGD
# (no loss scaling), which the reference never does (it trains prompt and label vectors only) and which
# turns the loss to NaN within an experience on the tiny model; they are refused with fp16.
FP16_REFUSED = ("finetune",)


def _split(assignment: str) -> tuple[str, list[str], str]:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected dotted.key=value")
    key, _, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {assignment}: expected dotted.key=value")
    return key.strip(), parts, text


def _entry_index(node: list, part: str, key: str, where: str) -> int:
    """The list index a key part names: a number, or the ``name`` of one entry (``strategies.lamm``)."""
    if part.isdigit():
        if int(part) >= len(node):
            raise ConfigError(f"--set {key}: {where} is a list of {len(node)}; {part!r} is not an index in it")
        return int(part)
    names = [e.get("name") if isinstance(e, dict) else None for e in node]
    hits = [i for i, n in enumerate(names) if n == part]
    if len(hits) == 1:
        return hits[0]
    named = ", ".join(str(n) for n in names if n is not None)
    if not hits:
        raise ConfigError(f"--set {key}: {where} has no entry named {part!r}"
                          + (f"; it has {named} (or give an index 0..{len(node) - 1})" if named else
                             f"; it is a list of {len(node)}: give an index"))
    raise ConfigError(f"--set {key}: {where} has {len(hits)} entries named {part!r}; give an index")


def key_path(data: dict, key: str) -> list:
    """A dotted key's parts with every list step as an index (entry names resolved against ``data``).

    Example: with ``strategies: [{name: zeroshot}, {name: lamm}]``, ``strategies.lamm.lr`` is
    ``["strategies", 1, "lr"]``; parts past what ``data`` holds are kept as written.

    Raises:
        ConfigError: a list step names no entry (the message lists the names there).
    """
    parts = key.split(".")
    node: Any = data
    path: list = []
    for part in parts:
        where = ".".join(str(p) for p in path) or "config"
        if isinstance(node, list):
            i = _entry_index(node, part, key, where)
            path.append(i)
            node = node[i]
        else:
            path.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return path


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` to raw config data, in place.

    The value is read as YAML (``1`` is an int, ``[1, 2]`` a list, ``null`` None).
    A part that steps into a list is an index or the ``name`` of one entry:
    ``strategies.1.epochs=1`` and ``strategies.lamm.epochs=1`` alike.

    Raises:
        ConfigError: malformed assignment, or a path through something that is not there.
    """
    key, parts, text = _split(assignment)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node: Any = data
    walked = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(walked) or "config"
        if isinstance(node, list):
            index = _entry_index(node, part, key, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {where} is not a mapping or a list")
        walked.append(part)


_ABSENT = object()


def resolved_value(cfg: "Config", path: list) -> Any:
    """The value at ``path`` (from :func:`key_path`) in the resolved config; a private sentinel where absent."""
    node: Any = cfg.to_dict()
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _ABSENT
    return node


def changes(before: "Config", after: "Config", path: list) -> bool:
    """Whether the resolved value at ``path`` differs (True where either config lacks it: no telling)."""
    a, b = resolved_value(before, path), resolved_value(after, path)
    return a is _ABSENT or b is _ABSENT or a != b


def _refuse_no_ops(data: dict, applied: list[tuple[str, list]], cfg: "Config", source: Optional[str],
                   strategy_options) -> None:
    """Refuse a ``--set`` whose key already held that value: it would change nothing and hide a typo
    (``strategies.0.lr`` meant for the second strategy, a default written out)."""
    if not applied:
        return
    try:
        base = parse(data, source=source, strategy_options=strategy_options)
    except ConfigError:
        return  # the file alone is not a valid config (an override completes it): nothing to compare with
    for o, path in applied:
        key = _split(o)[0]
        if not changes(base, cfg, path):
            shown = resolved_value(cfg, path)
            raise ConfigError(f"--set {o}: changes nothing ({key} is already {_yaml_flow(shown)}); "
                              "check the key, or the strategy it names")


def _yaml_flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parse(data: dict, source: Optional[str] = None, strategy_options=None,
          before_strategies: Optional[Callable[["Config"], None]] = None) -> Config:
    """Turn raw config data into a validated :class:`Config`.

    Args:
        data: the YAML as plain data (after overrides).
        source: the file it came from, for messages and the results.
        strategy_options: ``name -> options dataclass``; defaults to the strategy
            registry (which loads the built-ins, the config's plugin files and
            entry points).
        before_strategies: called with the config (all but its strategies checked) before the
            strategies are read: the registry imports torch and Avalanche, so the CLI checks
            the results folder here and refuses a bad one without them.
    """
    data = copy.deepcopy(data)
    _check_finite(data, "")
    cfg = from_dict(Config, data, "", skip=("strategies", "source"))
    if not cfg.name.strip():
        raise ConfigError("name: expected a non-empty name (it names the results folder)")
    for where, seed in [*((f"seeds[{i}]", x) for i, x in enumerate(cfg.seeds)),
                        ("benchmark.order_seed", cfg.benchmark.order_seed)]:
        if seed is not None and not 0 <= seed < SEED_RANGE:
            raise ConfigError(f"{where}: expected a seed in 0..{SEED_RANGE - 1}, got {seed}")
    if "strategies" not in data:
        raise ConfigError("strategies: required key is missing")
    raw = data["strategies"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("strategies: expected a non-empty list of {name: ...} entries")
    if not cfg.seeds:
        raise ConfigError("seeds: expected at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: a seed is repeated in {cfg.seeds}")
    _check_sequence(cfg.benchmark, data.get("benchmark") or {})
    _check_benchmark(cfg.benchmark)
    if cfg.features.train_views < 0:
        raise ConfigError(f"features.train_views: expected 0 or more, got {cfg.features.train_views}")
    if before_strategies is not None:
        before_strategies(cfg)
    trains: Callable[[str], bool] = lambda name: True  # noqa: E731 - a caller's own options table says nothing
    scores_unseen: Callable[[str], bool] = lambda name: True  # noqa: E731
    if strategy_options is None:
        from lamm_cl import registry

        if cfg.plugins:  # the built-ins load first, so a plugin cannot take a built-in's name
            registry.load_plugin_files(cfg.plugins, base=Path(source).parent if source else None)
        # without plugins, a built-in's options and `trains` come from its source and the light
        # lamm_cl.strategy_kit.options: a bad option is refused before torch loads
        strategy_options = registry.options_of
        trains = registry.trains
        scores_unseen = registry.scores_unseen
    entries = []
    for i, item in enumerate(raw):
        path = f"strategies[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: expected a mapping with a `name`, got {type(item).__name__}")
        if "name" not in item:
            raise ConfigError(f"{path}.name: required key is missing")
        name = item["name"]
        if not isinstance(name, str):
            raise _fail(f"{path}.name", str, name)
        try:
            opts_cls = strategy_options(name) if callable(strategy_options) else strategy_options[name]
        except (ConfigError, KeyError) as e:
            raise ConfigError(f"{path}.name: {e.args[0] if isinstance(e, ConfigError) else 'unknown strategy ' + repr(name)}") from None
        if not trains(name):
            given = [k for k in TRAINING_OPTIONS if k in item]
            if given:
                raise ConfigError(f"{path}.{given[0]}: {name} trains nothing; {', '.join(given)} would change "
                                  "nothing (remove it)")
        if cfg.benchmark.sequence is not None and cfg.benchmark.evaluation == "all_classes" \
                and not scores_unseen(name):
            # refused rather than run: among every class of the sequence means scoring classes it has not
            # trained, which this strategy cannot (its registration does not declare scores_unseen)
            raise ConfigError(f"{path}.name: {name} cannot score classes it has not trained, so it cannot run "
                              "benchmark.evaluation: all_classes (use task_aware, or drop it)")
        if name in FP16_REFUSED and cfg.model.precision == "fp16":
            raise ConfigError(f"model.precision: fp16 would train {name}'s CLIP weights in fp16 with plain SGD "
                              f"({path}); use bf16-autocast or fp32 with {name}")
        label = _check_label(item.get("label"), f"{path}.label")
        save_model = item.get("save_model")
        if save_model is not None and not isinstance(save_model, bool):
            raise _fail(f"{path}.save_model", bool, save_model)
        opts = from_dict(opts_cls, {k: v for k, v in item.items() if k not in ("name", "label", "save_model")}, path)
        check = getattr(opts, "validate", None)
        if check is not None:
            check(path)
        entries.append(StrategyEntry(name=name, options=opts, raw=dict(item), label=label, save_model=save_model))
    names = [e.run_label for e in entries]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"strategies: {', '.join(sorted(dup))} listed twice; results are kept per strategy "
                          "label (give each entry its own `label:`)")
    cfg.strategies = entries
    cfg.source = source
    return cfg


def _check_label(label, path: str) -> Optional[str]:
    """A strategy entry's ``label``: None, or a name that can be a results folder (it becomes ``<label>/``)."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise _fail(path, str, label)
    if not label.strip() or label != label.strip() or label in (".", "..") or any(c in label for c in "/\\\0"):
        raise ConfigError(f"{path}: expected a name usable as a folder (no slashes, not blank), got {label!r}")
    return label


def _check_sequence(b: BenchmarkConfig, raw: dict) -> None:
    """A sequence replaces the keys that split one dataset: any of them beside it is refused."""
    if b.sequence is None:
        if b.dataset is None:
            raise ConfigError("benchmark.dataset: required key is missing (or give benchmark.sequence)")
        if "evaluation" in raw:
            raise ConfigError("benchmark.evaluation: applies to a benchmark.sequence of datasets only")
        return
    for key in SEQUENCE_REPLACES:
        if key in raw:
            raise ConfigError(f"benchmark.{key}: cannot be given beside benchmark.sequence (each dataset of the "
                              "sequence is one experience, in the listed order, with its own root)")
    if not b.sequence:
        raise ConfigError("benchmark.sequence: expected a non-empty list of {dataset: ..., root: ...} entries")
    if b.evaluate_on:  # a target's classes are matched to one trained dataset's (lamm_cl.data.targets)
        raise ConfigError("benchmark.evaluate_on: not available beside benchmark.sequence (a sequence already "
                          "scores every dataset it lists after every experience; list the dataset there instead)")
    names = [e.dataset for e in b.sequence]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"benchmark.sequence[{i}].dataset: {name!r} is listed twice (also at "
                              f"benchmark.sequence[{names.index(name)}])")


def _check_benchmark(b: BenchmarkConfig) -> None:
    if b.shots is not None and b.shots < 1:
        raise ConfigError(f"benchmark.shots: expected 1 or more, got {b.shots}")
    if b.sequence is not None:  # one experience per dataset: nothing to split
        if b.template is not None and b.template.count("{}") != 1:
            raise ConfigError(f"benchmark.template: expected exactly one {{}} for the class name, got {b.template!r}")
        return
    if b.n_experiences is not None and b.classes_per_experience is not None:
        raise ConfigError("benchmark: give n_experiences or classes_per_experience, not both")
    if b.n_experiences is None and b.classes_per_experience is None:
        raise ConfigError("benchmark.n_experiences: required (or give benchmark.classes_per_experience)")
    if b.n_experiences is not None and b.n_experiences < 1:
        raise ConfigError(f"benchmark.n_experiences: expected 1 or more, got {b.n_experiences}")
    if b.classes_per_experience is not None:
        for i, n in enumerate(b.classes_per_experience):
            if n < 1:
                raise ConfigError(f"benchmark.classes_per_experience[{i}]: expected 1 or more, got {n}")
        if not b.classes_per_experience:
            raise ConfigError("benchmark.classes_per_experience: expected a non-empty list")
    if b.shots is not None and b.shots < 1:
        raise ConfigError(f"benchmark.shots: expected 1 or more, got {b.shots}")
    if b.template is not None and b.template.count("{}") != 1:
        raise ConfigError(f"benchmark.template: expected exactly one {{}} for the class name, got {b.template!r}")
    _check_targets(b)


def _check_targets(b: BenchmarkConfig) -> None:
    """``benchmark.evaluate_on``: known datasets, none listed twice, none the trained dataset itself."""
    from lamm_cl.data import list_datasets  # no torch: the loaders import their heavy parts when they load
    from lamm_cl.data.imagenet_variants import EVALUATION_ONLY

    if b.dataset in EVALUATION_ONLY:
        raise ConfigError(f"benchmark.dataset: {b.dataset} holds test images only (nothing to train on); "
                          f"list it under benchmark.evaluate_on")
    known = list_datasets()
    seen: dict[tuple[str, str], int] = {}
    trained = (b.dataset, str(Path(b.root).expanduser()))
    for i, t in enumerate(b.evaluate_on):
        path = f"benchmark.evaluate_on[{i}]"
        if t.dataset not in known:
            raise ConfigError(f"{path}.dataset: unknown dataset {t.dataset!r}; known: {', '.join(known)}")
        if t.template is not None and t.template.count("{}") != 1:
            raise ConfigError(f"{path}.template: expected exactly one {{}} for the class name, got {t.template!r}")
        key = (t.dataset, str(Path(t.root if t.root is not None else b.root).expanduser()))
        if key == trained:
            raise ConfigError(f"{path}: {t.dataset} in {key[1]} is the trained dataset (benchmark.dataset); "
                              "a target is a dataset the run never trains on")
        if key in seen:
            raise ConfigError(f"{path}: {t.dataset} in {key[1]} is listed twice (also evaluate_on[{seen[key]}])")
        seen[key] = i


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = (), strategy_options=None, *,
         refuse_no_ops: bool = False, before_strategies: Optional[Callable[[Config], None]] = None) -> Config:
    """Load, override and validate a config file.

    Args:
        overrides: ``--set`` assignments, applied in order.
        refuse_no_ops: refuse an override that leaves the resolved config as it was (``--set``;
            a sweep checks its grid axes itself, over all its jobs, and its jobs' own overrides,
            such as their seed, may repeat the file).
        before_strategies: see :func:`parse`.

    Example:
        >>> cfg = load("benchmarks/quickstart.yaml", ["strategies.lamm.epochs=1"])  # doctest: +SKIP

    Raises:
        ConfigError: naming the key (or the ``--set`` that changes nothing).
    """
    data = load_yaml(path)
    original = copy.deepcopy(data) if refuse_no_ops else None  # only the no-op check compares with it
    applied = []
    for o in overrides:
        try:
            where = key_path(data, _split(o)[0])  # before applying: the override may rename the entry
        except ConfigError:
            where = None  # apply_override says what is wrong
        apply_override(data, o)
        applied.append((o, where))
    cfg = parse(data, source=str(path), strategy_options=strategy_options, before_strategies=before_strategies)
    if refuse_no_ops:
        _refuse_no_ops(original, applied, cfg, str(path), strategy_options)
    return cfg


def only_labels(cfg: Config, names: Union[str, list[str]], where: str = "--only") -> list[str]:
    """The labels of ``cfg``'s strategy entries that ``names`` picks (``--only lamm,coop``): each name is
    an entry's label or its strategy's name (every entry of that strategy).

    Raises:
        ConfigError: a name picks no entry, or none is given (naming the config's strategies).
    """
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: expected strategy names or labels, got {names!r}")
    wanted = [n.strip() for n in names if n.strip()]
    known = ", ".join(e.run_label for e in cfg.strategies)
    if not wanted:
        raise ConfigError(f"{where}: expected strategy names or labels (this config's: {known})")
    picked: list[str] = []
    for n in wanted:
        hits = [e.run_label for e in cfg.strategies if n in (e.run_label, e.name)]
        if not hits:
            raise ConfigError(f"{where}: no strategy {n!r} in {cfg.source or 'the config'}; its strategies: {known}")
        picked += [h for h in hits if h not in picked]
    return picked
