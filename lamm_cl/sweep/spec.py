"""The sweep file and its grid: which (benchmark file, grid cell, strategy, seed) jobs a sweep holds.

A sweep file is plain YAML, validated like a run config (unknown keys and wrong
types name their path)::

    name: coop11
    benchmarks: [../split_*.yaml]          # globs allowed; relative to the sweep file, then the current folder
    strategies: [zeroshot, lamm]           # optional subset, by name, of each file's strategies
    seeds: [1, 2, 3]                       # optional: replaces each file's seeds
    grid: {benchmark.shots: [1, 2, 4]}     # optional: more axes, as dotted keys (like --set: strategies.lamm.lr)
    output: results/coop11
    launcher: {name: local, workers: 2}

Each job runs what ``lamm-cl run`` runs for one strategy and one seed and writes
``<output>/<benchmark name>[/<grid cell>]/<strategy>/seed<k>/``. The expanded job list
is written to ``<output>/sweep.json`` so that ``--status``, reruns and the report
need nothing but the output folder.
"""
from __future__ import annotations

import glob
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from lamm_cl.config import ConfigError, convert, from_dict, load_yaml

SWEEP_FILE = "sweep.json"  # the expanded sweep, in the output folder
JOBS_DIR = "_jobs"  # per-job log and state files, in the output folder


@dataclass
class CostConfig:
    """What one unit of work costs on the target GPU, for ``--dry-run``'s estimate (seconds).

    The defaults are rough estimates for ViT-B/16 on one current data-centre GPU, not
    measurements (nothing here was timed on a GPU); ``lamm-cl sweep SWEEP.yaml --dry-run
    --calibrate`` measures all three on the machine it runs on and prints the ``cost:`` line.
    """

    encode_image_s: float = 0.0008  # encoding one image once with the frozen image tower (estimate)
    feature_step_s: float = 0.012  # one training step of a strategy on cached features, batch 32 (estimate)
    image_step_s: float = 0.09  # one training step of a strategy that reads images: finetune, maple (estimate)


@dataclass
class SweepConfig:
    name: str  # the sweep's name (for messages)
    benchmarks: list[str]  # benchmark YAML files; globs allowed
    output: str  # where every job writes, one folder per benchmark (and grid cell); relative to the current folder
    strategies: Optional[list[str]] = None  # a subset, by name, of each benchmark file's strategies
    seeds: Optional[list[int]] = None  # replaces each benchmark file's seeds
    grid: dict = field(default_factory=dict)  # dotted key (a strategy by name or index, as --set) -> list of values
    launcher: dict = field(default_factory=lambda: {"name": "local"})  # name + that launcher's options
    cost: CostConfig = field(default_factory=CostConfig)  # per-unit costs for --dry-run


@dataclass
class Job:
    """One cell of the grid: one strategy, one seed, one benchmark file with its grid overrides."""

    id: str  # unique, usable as a file name
    benchmark: str  # the benchmark file's `name`
    config: str  # the benchmark file (absolute path)
    overrides: list[str]  # --set assignments of the grid cell
    cell: str  # grid-cell folder name ("" without a grid)
    strategy: str
    seed: int
    results: str  # the benchmark's results folder: <output>/<benchmark>[/<cell>]

    @property
    def run_dir(self) -> Path:
        return Path(self.results) / self.strategy / f"seed{self.seed}"

    def run_overrides(self) -> list[str]:
        """The --set assignments that make the benchmark file this job's config (grid cell, then the seed)."""
        return [*self.overrides, f"seeds=[{self.seed}]"]


@dataclass
class Sweep:
    """A validated sweep file, expanded into jobs."""

    config: SweepConfig
    source: str  # the sweep file
    output: Path
    jobs: list[Job]
    cost_device: Optional[str] = None  # where `cost:` was measured (--calibrate); None: the file's GPU figures

    def to_dict(self) -> dict:
        return {"name": self.config.name, "source": self.source, "output": str(self.output),
                "launcher": self.config.launcher, "cost": asdict(self.config.cost),
                "jobs": [asdict(j) for j in self.jobs]}

    @classmethod
    def from_dict(cls, data: dict) -> "Sweep":
        """The sweep written as ``sweep.json``, every field type-checked.

        Raises:
            ConfigError: a missing key or a wrong type, named by its path (``jobs[3].results``).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object, got {type(data).__name__}")
        for key, kind in (("name", str), ("source", str), ("output", str), ("launcher", dict), ("jobs", list)):
            if not isinstance(data.get(key), kind):
                raise ConfigError(f"{key}: expected {kind.__name__}, got {data.get(key)!r}"[:200])
        cfg = SweepConfig(name=data["name"], benchmarks=[], output=data["output"], launcher=data["launcher"],
                          cost=from_dict(CostConfig, data.get("cost", {}), "cost"))
        return cls(config=cfg, source=data["source"], output=Path(data["output"]),
                   jobs=[from_dict(Job, j, f"jobs[{i}]") for i, j in enumerate(data["jobs"])])


def _resolve(pattern: str, base: Path, where: str) -> list[Path]:
    """Files a benchmark entry names: relative to the sweep file's folder, then to the current folder."""
    for root in (base, Path.cwd()):
        p = Path(pattern).expanduser()
        full = p if p.is_absolute() else root / p
        if glob.has_magic(pattern):
            hits = sorted(Path(h) for h in glob.glob(str(full)))
            hits = [h for h in hits if h.is_file()]
        else:
            hits = [full] if full.is_file() else []
        if hits:
            return [h.resolve() for h in hits]
    raise ConfigError(f"{where}: {pattern!r} matches no file (looked in {base} and {Path.cwd()})")


CELL_TEXT_MAX = 48  # characters of one value's slug in a cell name; a longer value is cut and hashed
CELL_MAX = 120  # characters of a whole cell name: job ids and log names must stay well under NAME_MAX (255)


def _value_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _value_slug(v: Any) -> str:
    """A readable, file-safe text of one grid value, plus a short hash of its exact YAML text whenever the slug
    alone could stand for another value (a character replaced, a list flattened, a long value cut)."""
    exact = _yaml_text(v)
    slug = re.sub(r"[^A-Za-z0-9._+-]", "-", _value_text(v))
    if slug == exact and len(slug) <= CELL_TEXT_MAX:
        return slug  # the value itself: 16, 0.01, true, null, ViT-B-16
    return f"{slug[:CELL_TEXT_MAX].rstrip('-') or 'v'}-{_value_hash(exact)}"


def cell_name(values: dict[str, Any]) -> str:
    """The folder of a grid cell: ``shots=16``, or ``shots=16_epochs=5`` (full dotted keys when last parts clash).

    Distinct cells get distinct names: a value that is not its own file-safe text (``'a photo of a {}!'``,
    ``[1, 2]``, ``'16'`` the string) is shown as a slug plus the first 8 hex digits of the SHA-256 of its YAML
    text (``template=a-photo-of-a----3f2a9c1d``); a name longer than :data:`CELL_MAX` is cut and hashed whole.
    """
    if not values:
        return ""
    last = [k.split(".")[-1] for k in values]
    keys = last if len(set(last)) == len(last) else list(values)
    keys = [re.sub(r"[^A-Za-z0-9._+-]", "-", k) for k in keys]
    text = "_".join(f"{k}={_value_slug(v)}" for k, v in zip(keys, values.values()))
    if len(text) > CELL_MAX:
        whole = _value_hash("\n".join(f"{k}={_yaml_text(v)}" for k, v in values.items()))
        text = f"{text[:CELL_MAX - 9].rstrip('-_')}-{whole}"
    return text


def _value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_value_text(x) for x in v)
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _yaml_text(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _check_items(data: dict) -> None:
    """Name the bad item of ``seeds`` (``seeds[1]: expected an integer, got nan``), before the generic type check."""
    seeds = data.get("seeds")
    if isinstance(seeds, list):
        for i, seed in enumerate(seeds):
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigError(f"seeds[{i}]: expected an integer, got {seed!r}")


def _check(cfg: SweepConfig) -> None:
    if not cfg.benchmarks:
        raise ConfigError("benchmarks: expected at least one benchmark file")
    if cfg.seeds is not None:
        if not cfg.seeds:
            raise ConfigError("seeds: expected at least one seed")
        if len(set(cfg.seeds)) != len(cfg.seeds):
            raise ConfigError(f"seeds: a seed is repeated in {cfg.seeds}")
        for i, seed in enumerate(cfg.seeds):
            if seed < 0:
                raise ConfigError(f"seeds[{i}]: expected 0 or more, got {seed}")
    if cfg.strategies is not None and not cfg.strategies:
        raise ConfigError("strategies: expected at least one strategy name")
    if cfg.strategies is not None:
        twice = sorted({s for s in cfg.strategies if cfg.strategies.count(s) > 1})
        if twice:
            raise ConfigError(f"strategies: {', '.join(twice)} listed twice; each strategy runs once per job cell")
    for name, value in asdict(cfg.cost).items():
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"cost.{name}: expected seconds, 0 or more, got {value}")
    for key, values in cfg.grid.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"grid: {key!r} is not a dotted key like benchmark.shots")
        if key.split(".")[0] in ("seeds", "name", "output"):
            raise ConfigError(f"grid.{key}: set seeds with the sweep's `seeds`; name and output are the sweep's")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values")
        texts = [_yaml_text(v) for v in values]
        twice = [t for i, t in enumerate(texts) if t in texts[:i]]
        if twice:
            raise ConfigError(f"grid.{key}: the value {twice[0]} is listed twice; every cell would run it again")
    launcher = cfg.launcher
    if not isinstance(launcher.get("name"), str):
        raise ConfigError("launcher.name: expected a string (local, slurm or ray)")


def read_config(path: str | Path, launcher: Optional[str] = None) -> SweepConfig:
    """Read and validate a sweep file, all but its launcher's own options (the driver checks those).

    Args:
        launcher: ``--launcher``: replaces ``launcher.name`` (the other launcher options stay
            only when the name is unchanged).

    Raises:
        ConfigError: one line naming the problem (an unknown key, a wrong type, an empty list).
    """
    data = load_yaml(path)
    _check_items(data)
    if isinstance(data.get("launcher"), str):
        data["launcher"] = {"name": data["launcher"]}
    cfg = from_dict(SweepConfig, data, "")
    cfg.launcher = dict(convert(dict, cfg.launcher, "launcher"))
    cfg.launcher.setdefault("name", "local")
    if launcher is not None and launcher != cfg.launcher["name"]:
        cfg.launcher = {"name": launcher}
    _check(cfg)
    return cfg


def expand(cfg: SweepConfig, path: str | Path) -> Sweep:
    """Expand the validated sweep file ``path`` (read as ``cfg``) into its jobs.

    Every benchmark file is parsed with each grid cell's overrides (so a bad grid value fails
    here, naming the file), and the strategy subset is checked against each file.

    Raises:
        ConfigError: one line naming the problem (a glob that matches nothing, a strategy a
            benchmark file lacks, a bad grid value, two benchmark files with one name).
    """
    from lamm_cl import config as config_mod

    path = Path(path)
    base = path.resolve().parent
    files: list[Path] = []
    for i, pattern in enumerate(cfg.benchmarks):
        for f in _resolve(pattern, base, f"benchmarks[{i}]"):
            if f not in files and f != path.resolve():  # `*.yaml` beside the sweep file is not the sweep file
                files.append(f)
    out = Path(cfg.output).expanduser().resolve()  # like a run's `output`: relative to the current folder
    keys = list(cfg.grid)
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*(cfg.grid[k] for k in keys))] or [{}]
    jobs: list[Job] = []
    names: dict[str, Path] = {}
    effective: set[str] = set()  # grid axes that change some job's config
    for f in files:
        extra = [f"seeds={_yaml_text(cfg.seeds)}"] if cfg.seeds else []
        try:
            paths = {k: config_mod.key_path(config_mod.load_yaml(f), k) for k in keys}  # names as in --set
        except ConfigError as e:
            raise ConfigError(f"grid: {f}: {e}") from None
        try:
            base = config_mod.load(f, extra) if keys else None
        except ConfigError:
            base = None  # the file alone is not valid (a grid value completes it): no telling what changes
        for values in cells:
            overrides = [f"{k}={_yaml_text(v)}" for k, v in values.items()]
            try:
                run_cfg = config_mod.load(f, [*overrides, *extra])
            except ConfigError as e:
                raise ConfigError(f"{f} with {', '.join(overrides) or 'no grid overrides'}: {e}") from None
            _check_benchmark_name(run_cfg.name, f)
            if run_cfg.name in names and names[run_cfg.name] != f:
                raise ConfigError(f"benchmarks: {names[run_cfg.name]} and {f} both have name {run_cfg.name!r}; "
                                  "results are kept per benchmark name")
            names[run_cfg.name] = f
            have = [e.run_label for e in run_cfg.strategies]  # a job is one entry: its label, or its name
            wanted = have if cfg.strategies is None else cfg.strategies
            missing = [s for s in wanted if s not in have]
            if missing:
                raise ConfigError(f"strategies: {f.name} has no strategy {', '.join(missing)}; it has "
                                  f"{', '.join(have)}")
            for k, path in paths.items():
                # an axis into a strategy the sweep does not run (strategies.0 = the file's zeroshot) is no change
                if path[0] == "strategies" and len(path) > 1 and isinstance(path[1], int) and \
                        path[1] < len(run_cfg.strategies) and run_cfg.strategies[path[1]].name not in wanted:
                    continue
                if base is None or config_mod.changes(base, run_cfg, path):
                    effective.add(k)
            cell = cell_name(values)
            results = out / run_cfg.name / cell if cell else out / run_cfg.name
            for seed in run_cfg.seeds:
                for s in wanted:
                    jid = "__".join(p for p in (run_cfg.name, cell, s, f"seed{seed}") if p)
                    jobs.append(Job(id=jid, benchmark=run_cfg.name, config=str(f), overrides=overrides, cell=cell,
                                    strategy=s, seed=seed, results=str(results)))
    for k in keys:
        if k not in effective:
            raise ConfigError(f"grid.{k}: changes nothing in any job it applies to (every value is what the "
                              "benchmark files already hold, or it names a strategy the sweep does not run; "
                              "name the strategy, e.g. strategies.lamm.lr)")
    _check_distinct(jobs, cells)
    return Sweep(config=cfg, source=str(path), output=out, jobs=jobs)


def _check_benchmark_name(name: str, f: Path) -> None:
    """A benchmark's ``name`` is one folder of the sweep's output: no path, nothing the sweep keeps there."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("_")
            or name == SWEEP_FILE or "\0" in name):
        raise ConfigError(f"{f}: name {name!r} cannot be a folder of the sweep's output (one folder name, "
                          "no '/', not '.' or '..', not starting with '_'); rename the benchmark")
    if len(name.encode("utf-8")) > 100:
        raise ConfigError(f"{f}: name {name[:40]!r}... is {len(name.encode('utf-8'))} bytes; a sweep keeps it in "
                          "file names, so at most 100")


def _check_distinct(jobs: list[Job], cells: list[dict]) -> None:
    """Every job its own id and run folder, every id a file name the filesystem takes; else refuse before anything runs."""
    by_cell: dict[str, dict] = {}
    for values in cells:
        name = cell_name(values)
        if name in by_cell and by_cell[name] != values:
            raise ConfigError(f"grid: the cells {by_cell[name]} and {values} both get the folder {name!r}; "
                              "change one of the values")
        by_cell[name] = values
    ids: dict[str, Job] = {}
    runs: dict[Path, Job] = {}
    for j in jobs:
        if j.id in ids or j.run_dir in runs:
            other = ids.get(j.id) or runs[j.run_dir]
            raise ConfigError(f"two jobs would share the id or folder {j.id!r} ({other.config} and {j.config}); "
                              "change a benchmark name or a grid value")
        ids[j.id] = runs[j.run_dir] = j
        if len(f"{j.id}.json".encode("utf-8")) > 250:
            raise ConfigError(f"job id {j.id[:60]!r}... is longer than a file name may be; shorten the benchmark name "
                              "or the grid keys")


def output_of(path: str | Path) -> Path:
    """The output folder a sweep file names (without expanding it)."""
    data = load_yaml(path)
    if "output" not in data:
        raise ConfigError("output: required key is missing")
    return Path(convert(str, data["output"], "output")).expanduser().resolve()


def check_output(out: Path) -> None:
    """Refuse, before anything is written, an output the sweep cannot own: a file, a folder under a file,
    one it cannot write, a results folder that is not a sweep's, or one whose ``_jobs`` is not a folder.

    Raises:
        UserError: one line naming the folder and what to do.
    """
    from lamm_cl.errors import UserError
    from lamm_cl.safe_io import check_creatable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out}: exists and is not a folder; choose another output")
    check_creatable(out, f"output {out}", "choose another output")
    if out.is_dir() and not (out / SWEEP_FILE).exists() and any(
            not p.name.startswith(".") for p in out.iterdir()):
        raise UserError(f"output {out}: not empty and not a sweep's output (no {SWEEP_FILE}), e.g. a lamm-cl run "
                        "results folder; choose another output")
    if (out / JOBS_DIR).exists() and not (out / JOBS_DIR).is_dir():
        raise UserError(f"output {out}: {JOBS_DIR} is not a folder (the sweep keeps job states there); remove it")


def write_sweep(sweep: Sweep) -> Path:
    """Write ``<output>/sweep.json`` (the job list every job and ``--status`` read)."""
    from lamm_cl.safe_io import atomic_write_text

    sweep.output.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(sweep.output / SWEEP_FILE, json.dumps(sweep.to_dict(), indent=1) + "\n")


def read_sweep(output: str | Path) -> Sweep:
    """The sweep written in an output folder.

    Raises:
        UserError: the folder holds no ``sweep.json``, or it is unreadable.
    """
    from lamm_cl.errors import UserError

    f = Path(output) / SWEEP_FILE
    try:
        return Sweep.from_dict(json.loads(f.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{output}: not a sweep output folder (no {SWEEP_FILE}); start it with lamm-cl sweep") from None
    except ConfigError as e:
        raise UserError(f"{f}: malformed ({e}); start the sweep again into another output") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{f}: unreadable ({type(e).__name__}: {e})") from None


def is_sweep_output(folder: str | Path) -> bool:
    """True when ``folder`` is the output folder of a sweep."""
    return (Path(folder) / SWEEP_FILE).is_file()
