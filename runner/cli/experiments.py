"""``runner run``, ``runner batch`` and ``runner demo``: scripts run in the sandbox."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.backends.pool import pool_root_for
from runner.cli import show
from runner.cli.demo import demo_holdout, demo_jobs
from runner.cli.options import (
    FILES,
    HOLDOUT,
    POLICY,
    RESULTS,
    WHERE,
    history_for,
    holdout_for,
    runner_options,
)
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentSpec
from runner.core.settings import ExperimentDefaults
from runner.experiment.codegen import CodeGenerator
from runner.experiment.jobs import Job
from runner.experiment.runner import ExperimentRunner
from runner.results.junit import junit_report
from runner.results.summary import markdown_summary

#: Subparsers as ``argparse`` hands them out (its class is private).
Commands = Any


def add_commands(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        parents=[POLICY, FILES, HOLDOUT, WHERE, RESULTS],
        help="run one script in the sandbox and print its result",
        description="Run one script in a fresh hardened container and print its result.",
        usage="%(prog)s [options] script [-- script arguments...]",
        epilog="Everything after -- goes to the script's sys.argv[1:] as it is, e.g. "
        "`runner run exp.py -- --data train.csv`.",
    )
    run.add_argument("script", type=Path, help="the Python script to run")
    run.add_argument("--name", help="experiment name to record (default: the script's name)")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.set_defaults(handler=run_command, takes_script_args=True)

    batch = commands.add_parser(
        "batch",
        parents=[POLICY, FILES, HOLDOUT, WHERE, RESULTS],
        help="run many scripts at once and show a leaderboard",
        description="Run every given script (files, or directories of *.py) in parallel, "
        "each in a fresh sandbox, here or on a Ray cluster (--ray); show progress and a "
        "leaderboard, or print one JSON result a line (--json).",
    )
    batch.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                       help="a script, or a directory whose *.py files are scripts")  # fmt: skip
    batch.add_argument("--workers", type=int, help="runs at once (default: what fits)")
    batch.add_argument("--json", action="store_true",
                       help="print each result as one line of JSON as it finishes")  # fmt: skip
    batch.add_argument("--junit", type=Path, metavar="FILE",
                       help="write a JUnit XML report, one test case per script")  # fmt: skip
    batch.add_argument("--summary", type=Path, metavar="FILE",
                       help="append a Markdown leaderboard to FILE, e.g. "
                       "\"$GITHUB_STEP_SUMMARY\" (script-controlled text escaped)")  # fmt: skip
    batch.set_defaults(handler=batch_command)

    demo = commands.add_parser(
        "demo",
        parents=[POLICY, WHERE, RESULTS],
        help="run demo experiments in parallel on shipped data and show a leaderboard",
        description="Generate experiments for the shipped churn data set with CodeGenerator, "
        "run them in parallel in the sandbox, and rank them. Works offline.",
    )
    demo.add_argument("--workers", type=int, help="runs at once (default: what the host fits)")
    demo.add_argument("--no-holdout", action="store_true",
                      help="rank by the scripts' own metrics instead of the runner's scores "
                      "on held-out rows")  # fmt: skip
    demo.set_defaults(handler=demo_command)


def _runner(
    args: argparse.Namespace, settings: ExperimentDefaults, files: Sequence[Path] = ()
) -> ExperimentRunner:
    """The runner the command line asks for; with a warm pool, its root is the directory
    nearest every script and input (the default's, when none may be)."""
    options = runner_options(args)
    if options.warm_pool and files:
        options = options.merged(pool_root=pool_root_for(files, None))
    return ExperimentRunner(options=options, history=history_for(args, settings), settings=settings)


def _warm_up(args: argparse.Namespace, runner: ExperimentRunner) -> None:
    if not args.warm_pool:
        return
    if runner.backend.pool_unavailable:
        show.errors.print(show.safe_text(f"note: {runner.backend.pool_unavailable}"))


def run_command(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    holdout = holdout_for(args)
    files = [args.script.resolve().parent, *(Path(i).resolve() for i in args.inputs or ())]
    with _runner(args, settings, files) as runner:
        _warm_up(args, runner)
        if args.warm_pool:
            runner.wait_for_warm(120)
        spec = ExperimentSpec(experiment_name=args.name or args.script.stem, model_type="script")
        result = runner.run(args.script, spec, 0, args=args.script_args, holdout=holdout)
    if args.json:
        # ensure_ascii also escapes C1 and bidi characters (and DEL), which JSON allows raw.
        print(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=True))
    else:
        show.summary(result)
    return 0 if result.success else 1


def batch_command(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    holdout = holdout_for(args)
    scripts = _scripts(args.paths)
    files = [
        *(script.parent for script in scripts),
        *(Path(i).resolve() for i in args.inputs or ()),
    ]
    with _runner(args, settings, files) as runner:
        _warm_up(args, runner)
        if args.warm_pool:
            runner.wait_for_warm(120)
        jobs: list[Job] = [
            (script, ExperimentSpec(experiment_name=name, model_type="script"), 0)
            for script, name in zip(scripts, _names(scripts), strict=True)
        ]
        workers = args.workers or runner.default_workers()
        # With --json, stdout carries only the results; the progress goes to stderr.
        screen = show.errors if args.json else show.console
        where = f"Ray cluster {runner.cluster}" if runner.cluster else "this machine"
        screen.print(
            show.safe_text(
                f"Running {len(jobs)} script(s) on {where}, {workers} at once", limit=1000
            )
        )
        report = show.print_json_line if args.json else show.print_outcome
        results = show.run_with_progress(
            runner, jobs, workers, "scripts", screen, report, holdout=holdout
        )
    if args.junit:
        args.junit.write_bytes(junit_report(results, suite="runner batch"))
    if args.summary:
        # Appended: a CI step's summary file may hold what earlier commands wrote.
        with args.summary.open("a", encoding="utf-8") as summary:
            summary.write(markdown_summary(results, image=runner.policy.image))
    if not args.json:
        show.print_leaderboard(show.console, results, "Leaderboard")
    return 0 if all(r.success for r in results) else 1


def demo_command(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    with _runner(args, settings) as runner:
        holdout = None if args.no_holdout else demo_holdout()
        jobs = demo_jobs(CodeGenerator(settings.experiments_dir), holdout=holdout is not None)
        workers = args.workers or runner.default_workers()
        _warm_up(args, runner)
        warm = f", {runner.warm_pool_size} kept warm" if runner.warm_pool_size else ""
        show.console.print(
            f"Running {len(jobs)} experiments on the churn demo data, {workers} at once, "
            f"each in a fresh sandbox ({runner.policy.image}, {runner.policy.cpu_limit:g} CPU, "
            f"{runner.policy.memory_limit}{warm})"
            + (", scored by the runner on held-out rows" if holdout else "")
        )
        results = show.run_with_progress(
            runner, jobs, workers, "experiments", show.console, show.print_outcome,
            holdout=holdout,
        )  # fmt: skip
    show.print_leaderboard(show.console, results, "Leaderboard")
    return 0 if all(r.success for r in results) else 1


def _scripts(paths: Sequence[Path]) -> list[Path]:
    """The scripts ``paths`` name: files as they are, directories' ``*.py`` in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.py") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise ExperimentExecutionError(
                f"No such script or directory: {path}",
                hint="pass Python files, or directories holding *.py files.",
            )
    if not found:
        raise ExperimentExecutionError(
            "No scripts found.", hint="pass Python files, or directories holding *.py files."
        )
    return list(dict.fromkeys(p.resolve() for p in found))


def _names(scripts: Sequence[Path]) -> list[str]:
    """Each script's experiment name: its stem, with its directory where stems repeat."""
    stems = [script.stem for script in scripts]
    return [
        f"{script.parent.name}/{script.stem}" if stems.count(script.stem) > 1 else script.stem
        for script in scripts
    ]
