"""The ``lamm-cl`` command: the only place that parses arguments, prints and exits.

Exit status: 0 done, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM, handled as Ctrl-C is: a pre-emption), 1 anything else.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from lamm_cl import __version__
from lamm_cl.errors import UserError
from lamm_cl.warnings_policy import quiet_third_party_warnings

# Nothing heavy is imported at module level: `lamm-cl --help`, `--version`, `list` and every refusal of a
# config or a results folder answer without torch, Avalanche or open_clip (tests/test_cli.py checks it);
# each command imports what it needs.


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lamm-cl", description="Continual-learning benchmarks for CLIP (LAMM and baselines).")
    p.add_argument("--version", action="version", version=f"lamm-cl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a benchmark config")
    r.add_argument("config", help="a benchmark YAML, e.g. benchmarks/quickstart.yaml")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set strategies.lamm.epochs=1 (a strategy by name or by "
                        "index; repeatable)")
    r.add_argument("--output", help="results folder (default: the config's output, else results/<name>)")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides the config)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue in a results folder: keep finished runs, continue a killed run from its "
                            "last checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the results already in the folder (removed only once the config, data and "
                            "weights have checked out)")
    r.add_argument("--dry-run", action="store_true",
                   help="validate the config, load the dataset index and print the plan; train nothing")
    r.add_argument("--only", metavar="NAME[,NAME]",
                   help="run just these strategies (names or labels), replacing their earlier results in the "
                        "folder (with --resume: keeping those whose config is unchanged); the other strategies' "
                        "results stay as they are, and the summary and report are rebuilt from all of them")
    r.add_argument("--check-images", action="store_true",
                   help="with --dry-run: also decode every image (an undecodable one is named, exit status 2)")
    ls = sub.add_parser("list", help="list the strategies (and where each comes from), datasets and benchmark files")
    ls.add_argument("config", nargs="?", help="also load this config's plugin files, so its strategies show up")
    rep = sub.add_parser("report", help="rebuild the report and plots of a results folder")
    rep.add_argument("results_dir")
    rep.add_argument("--format", dest="formats", action="append", choices=["png", "svg", "pdf"],
                     help="plot format (repeatable; default png)")
    rep.add_argument("--baseline", default=None,
                     help="strategy the others are compared with, paired by seed (default lamm)")
    sw = sub.add_parser("sweep", help="run a grid of benchmarks x strategies x seeds on a local pool, SLURM or Ray")
    sw.add_argument("sweep_file", help="a sweep YAML, e.g. benchmarks/sweeps/coop11.yaml")
    sw.add_argument("--launcher", help="local | slurm | ray (overrides the file's launcher.name)")
    what = sw.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the jobs and what they will cost; run nothing")
    what.add_argument("--status", action="store_true", help="print where every job stands (reads the output folder)")
    sw.add_argument("--retry-failed", action="store_true", help="run failed jobs again (by default they are skipped)")
    sw.add_argument("--calibrate", action="store_true",
                    help="with --dry-run: time the image encoder and a training step on this machine (the sweep's "
                         "model and device), print them as a `cost:` line and estimate with them")
    return p


class _ArgError(UserError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a UserError: one line and status 2, like every other bad input."""

    def error(self, message: str):
        raise _ArgError(f"{message} (see {self.prog} --help)")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(msg if msg.startswith("lamm-cl:") else f"lamm-cl: {msg}", file=sys.stderr, flush=True)


def _sequence_table(records) -> str:
    """ZSCL's Transfer / Avg / Last of each run on a sequence of datasets (n/a: cannot score unseen classes)."""
    head = f"{'strategy':<16} {'seed':>4} {'Transfer':>9} {'Avg':>7} {'Last':>7}"
    lines = ["Sequence of datasets (ZSCL's metrics; Last is a mean over datasets):", head, "-" * len(head)]
    for r in records:
        s = r.summary()
        cells = [f"{s[k]:>{w}.2f}" if s[k] is not None else f"{'n/a':>{w}}"
                 for k, w in (("transfer", 9), ("mtil_avg", 7), ("last_accuracy", 7))]
        lines.append(f"{r.strategy:<16} {r.seed:>4} " + " ".join(cells))
    return "\n".join(lines)


def _summary_table(records) -> str:
    """One row per (strategy, seed); with several seeds, a mean row per strategy after them."""
    from lamm_cl.metrics import summarize

    keys = ("avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt")
    head = f"{'strategy':<16} {'seed':>4} {'Avg':>7} {'Last':>7} {'Forget':>7} {'BWT':>7}"
    lines = [head, "-" * len(head)]
    per_strategy: dict[str, list[dict]] = {}
    for r in records:
        s = summarize(r.matrix, r.test_counts)
        per_strategy.setdefault(r.strategy, []).append(s)
        lines.append(f"{r.strategy:<16} {r.seed:>4} " + " ".join(f"{s[k]:>7.2f}" for k in keys))
    means = [(name, runs) for name, runs in per_strategy.items() if len(runs) > 1]
    if means:
        lines.append("-" * len(head))
        for name, runs in means:
            lines.append(f"{name:<16} {'mean':>4} " + " ".join(f"{sum(r[k] for r in runs) / len(runs):>7.2f}" for k in keys))
    return "\n".join(lines)


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted ``lamm-cl run ARGV``, shell-quoted for pasting.

    Every argument is kept (the config, ``--set``, ``--output``, ``--device``, ...) so that the
    same results folder and config are resumed; ``--overwrite`` becomes ``--resume`` (the folder
    now holds this run's own results) and ``--resume`` appears once.
    """
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    if "--" in kept:  # after `--` everything is positional: the flag goes before it
        i = kept.index("--")
        kept = [*kept[:i], "--resume", *kept[i:]]
    else:
        kept.append("--resume")
    return shlex.join(["lamm-cl", *kept])


def cmd_run(args) -> int:
    from lamm_cl import config as config_mod
    from lamm_cl.run_folder import check_output

    _refuse_sweep_file(args.config, "run")
    if args.only is not None and args.overwrite:  # before the config: refused without torch
        raise UserError("--only keeps the other strategies' results and --overwrite removes them; give one "
                        "(--only alone replaces the named strategies' results)")

    def check_folder(top) -> None:  # before the strategies are read: a bad folder is refused without torch
        if not args.dry_run:
            check_output(top.results_dir(args.output), resume=args.resume or args.only is not None,
                         overwrite=args.overwrite)

    if args.check_images and not args.dry_run:
        raise _ArgError("--check-images goes with --dry-run: lamm-cl run CONFIG --dry-run --check-images "
                        "(a run decodes every image anyway)")
    cfg = config_mod.load(args.config, args.overrides, refuse_no_ops=True, before_strategies=check_folder)
    only = None if args.only is None else config_mod.only_labels(cfg, args.only)
    if args.dry_run:
        from lamm_cl.sequence import dry_run

        for line in dry_run(cfg, device=args.device, check_images=args.check_images):
            _say(line)
        _say("dry run: the config is valid and the data is there; nothing was trained or written")
        return 0
    from lamm_cl.api import run_config

    out = cfg.results_dir(args.output)
    _say(f"lamm-cl: {cfg.name}: {cfg.benchmark.describe()}, {cfg.model.arch} + {cfg.model.pretrained}, "
         f"strategies {', '.join(only or [e.run_label for e in cfg.strategies])}, seeds {cfg.seeds} -> {out}")
    if cfg.model.pretrained == "none":
        _say(f"note: model.pretrained is none -- {cfg.model.arch} has RANDOM weights; these numbers show the "
             "pipeline works and say nothing about pretrained CLIP.")
    try:
        records = run_config(cfg, out, device=args.device, progress=not args.no_progress, log=_say,
                             resume=args.resume, overwrite=args.overwrite, warn=_warn, only=only)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"lamm-cl: {what}; finished runs and the last checkpoint are kept in {out}; "
              f"continue with: {resume_command(args.argv)}", file=sys.stderr, flush=True)
        return _interrupted_status(e)
    if records:
        _say("")
        _say(_summary_table(records))
        _say("")
        _say(f"Avg = average incremental accuracy (%), Last = accuracy after the last experience (%), "
             f"Forget = average forgetting, BWT = backward transfer. Results, plots and report.md: {out}")
        if any(r.sequence is not None for r in records):
            _say("")
            _say(_sequence_table(records))
    if records.failed:
        _warn(f"lamm-cl: {len(records.failed)} run(s) failed: " + "; ".join(records.failed))
        return 1
    return 0


def cmd_report(args) -> int:
    from lamm_cl.report import build_report
    from lamm_cl.sweep import is_sweep_output

    if is_sweep_output(args.results_dir):  # a sweep: the cross-dataset table
        from lamm_cl.sweep.table import build_table

        written = build_table(args.results_dir, formats=tuple(args.formats or ["png"]), baseline=args.baseline)
        _say(f"wrote {len(written)} files under {args.results_dir} (table.md, table.csv, plots/)")
        return 0
    written = build_report(args.results_dir, formats=tuple(args.formats or ["png"]), baseline=args.baseline)
    _say(f"wrote {len(written)} files under {args.results_dir}")
    return 0


def cmd_sweep(args) -> int:
    from lamm_cl.sweep import load_sweep

    _refuse_sweep_file(args.sweep_file, "sweep")
    if args.status:  # the output folder alone: no benchmark file is read, nothing heavy imported
        from lamm_cl.sweep.spec import output_of, read_sweep
        from lamm_cl.sweep.state import status_table, sweep_status

        for line in status_table(sweep_status(read_sweep(output_of(args.sweep_file)))):
            _say(line)
        return 0
    if args.calibrate and not args.dry_run:
        raise _ArgError("--calibrate goes with --dry-run: lamm-cl sweep SWEEP.yaml --dry-run --calibrate")
    sweep = load_sweep(args.sweep_file, launcher=args.launcher)
    if args.dry_run:
        from lamm_cl.sweep.cost import estimate

        if args.calibrate:
            from lamm_cl.sweep.calibrate import calibrate, report_lines

            measured = calibrate(sweep, log=_say)
            for line in report_lines(measured):
                _say(line)
            sweep.config.cost = measured.cost  # the estimate below uses what was just measured
        for line in estimate(sweep):
            _say(line)
        return 0
    from lamm_cl.sweep.driver import run_sweep

    try:
        outcome = run_sweep(sweep, retry_failed=args.retry_failed, log=_say)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        _warn(f"{what}; no further job was started; finished jobs and checkpoints are kept in {sweep.output}; "
              f"continue with: {shlex.join(['lamm-cl', *args.argv])}")
        return _interrupted_status(e)
    _say("")
    for line in outcome.table():
        _say(line)
    if outcome.table_path is not None:
        _say(f"table: {outcome.table_path}")
    for line in outcome.problems():
        _warn(line)
    return outcome.exit_code


def _is_sweep_file(data) -> bool:
    """A sweep file lists `benchmarks:` (files); a benchmark file has a `benchmark:` section instead."""
    return isinstance(data, dict) and "benchmarks" in data and "benchmark" not in data


def _refuse_sweep_file(path: str, command: str) -> None:
    """Refuse, naming the right command, a sweep file given to `run` or a benchmark file given to `sweep`."""
    from lamm_cl.config import load_yaml

    try:
        data = load_yaml(path)
    except UserError:
        return  # missing or broken: the command's own loading says so
    if command == "run" and _is_sweep_file(data):
        raise UserError(f"{path} is a sweep file (it lists `benchmarks:`); run it with: lamm-cl sweep {path}")
    if command == "sweep" and not _is_sweep_file(data) and "benchmark" in data:
        raise UserError(f"{path} is a benchmark file, not a sweep file; run it with: lamm-cl run {path}")


def _columns(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]


def _benchmark_files(folder: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(file, its `name`) of every YAML in ``folder`` and its subfolders one level down (``lamm_paper/``,
    ``sweeps/``): the benchmark files, then the sweep files; a broken file is listed with the benchmarks,
    with the reason."""
    import yaml

    from lamm_cl.formatting import yaml_data  # libyaml where built: ~40 files in a blink, not seconds

    benchmarks, sweeps = [], []
    for f in [*sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]),
              *sorted([*folder.glob("*/*.yaml"), *folder.glob("*/*.yml")])]:
        data = None
        try:
            data = yaml_data(f.read_text(encoding="utf-8"))
            name = str(data.get("name", "(no name)")) if isinstance(data, dict) else "(not a mapping)"
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            name = f"(cannot read: {type(e).__name__})"
        (sweeps if _is_sweep_file(data) else benchmarks).append((str(f), name))
    return benchmarks, sweeps


def cmd_list(args) -> int:
    from lamm_cl import registry
    from lamm_cl.data import list_datasets

    if args.config:
        from lamm_cl.config import convert, load_yaml

        data = load_yaml(args.config)
        plugins = convert(list[str], data.get("plugins") or [], "plugins")
        registry.load_plugin_files(plugins, base=Path(args.config).parent)
    specs = registry.describe_strategies()  # the built-ins read from their source: no torch imported
    lines = [f"strategies ({len(specs)}):"]
    lines += _columns([("name", "loaded from", "description")] + [(n, src, d or "-") for n, src, d in specs])
    datasets = list_datasets()
    lines += ["", f"datasets ({len(datasets)}):", *(f"  {name}" for name in datasets)]
    folder = Path("benchmarks")
    files, sweeps = _benchmark_files(folder) if folder.is_dir() else ([], [])
    if files:
        lines += ["", f"benchmark files ({len(files)}; lamm-cl run FILE):", *_columns([("file", "name")] + files)]
    else:
        lines += ["", f"benchmark files: none in {folder.resolve()}"]
    if sweeps:
        lines += ["", f"sweep files ({len(sweeps)}; lamm-cl sweep FILE):", *_columns([("file", "name")] + sweeps)]
    sys.stdout.write("\n".join(lines) + "\n")  # one write, so `lamm-cl list | head` does not hit a closed pipe
    sys.stdout.flush()
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's pre-emption, ``kill``): unwinds like Ctrl-C, so finished runs and the last
    checkpoint are kept, the results-folder lock is released, and ``--resume`` continues."""


def _interrupted_status(e: BaseException) -> int:
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``lamm-cl`` console script."""
    try:
        before = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        before = None
    try:
        with quiet_third_party_warnings():
            return _main(argv)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        args.argv = argv  # as typed, for the resume hint
        handler = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "sweep": cmd_sweep}[args.command]
        return handler(args)
    except UserError as e:
        print(f"lamm-cl: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    except KeyboardInterrupt as e:
        print(f"lamm-cl: {'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return _interrupted_status(e)
    except BrokenPipeError:  # `lamm-cl list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
