"""``runner history``: recorded results, best first, from the history file or MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runner.cli import show
from runner.core.settings import ExperimentDefaults
from runner.results.history import ResultsHistory, best_first
from runner.results.mlflow import MlflowTracker


def add_commands(commands: Any) -> None:
    history = commands.add_parser("history", help="show recorded results, best first")
    history.add_argument(
        "--results",
        type=Path,
        help="the JSON Lines file (default: RUNNER_RESULTS_FILE, else results.jsonl)",
    )
    history.add_argument("--name", help="only experiments whose name contains this")
    history.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    history.add_argument(
        "--mlflow", metavar="URI", help="read the results logged to this MLflow tracking URI"
    )
    history.set_defaults(handler=history_command)


def history_command(args: argparse.Namespace) -> int:
    path = args.results or ExperimentDefaults().results_file
    if args.mlflow:
        path, unreadable = args.mlflow, 0
        results = MlflowTracker(args.mlflow).read(name=args.name)
    else:
        results, unreadable = ResultsHistory(path).read()
    if args.name:
        results = [r for r in results if args.name in r.experiment_name]
    if unreadable:
        show.errors.print(
            show.safe_text(f"note: skipped {unreadable} unreadable line(s) in {path}")
        )
    if not results:
        matching = f" matching {args.name!r}" if args.name else ""
        show.console.print(show.safe_text(f"no results in {path}{matching}"))
        return 0
    shown = best_first(results)[: args.limit]
    show.print_leaderboard(show.console, shown, f"{path}: {len(results)} result(s), best first")
    return 0
