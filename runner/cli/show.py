"""What the command line shows: script-controlled text made safe, outcomes, leaderboards,
the one-run summary, and progress while a batch runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from runner.core.models import ExperimentResult
from runner.core.text import printable
from runner.experiment.holdout import Holdout
from runner.experiment.jobs import Job
from runner.experiment.runner import ExperimentRunner
from runner.results.history import best_first, ranking_metric

# Piped output (CI logs, tests) gets a wide fixed width instead of rich's 80 columns: wide
# enough for a leaderboard of the demo's longest model names, unwrapped.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
errors = Console(stderr=True, highlight=False)


def safe_text(value: object, limit: int = 500) -> Text:
    """Text a script (or a file) controls, for a console: never markup, controls escaped.

    rich strips only a few control codes itself (not ESC, C1 or bidi characters).
    """
    return Text(printable(str(value), limit))


def run_with_progress(
    runner: ExperimentRunner,
    jobs: list[Job],
    workers: int,
    what: str,
    screen: Console,
    report: Callable[[Console, ExperimentResult], None],
    *,
    holdout: Holdout | None = None,
) -> list[ExperimentResult]:
    """``run_many`` under a progress bar on ``screen``, each result reported as it comes
    (with ``holdout``, every job scored on it)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=screen,
    ) as progress:
        task = progress.add_task(what, total=len(jobs))

        def done(index: int, result: ExperimentResult) -> None:
            progress.advance(task)
            report(progress.console, result)

        return runner.run_many(jobs, max_workers=workers, on_result=done, holdout=holdout)


def print_outcome(screen: Console, result: ExperimentResult) -> None:
    """One line: how the run ended, and its name."""
    screen.print(Text.assemble("  ", outcome(result), ": ", safe_text(result.experiment_name)))


def print_json_line(screen: Console, result: ExperimentResult) -> None:
    """One result on stdout (the progress is on ``screen``, stderr)."""
    # ensure_ascii also escapes C1 and bidi characters, which JSON allows raw.
    sys.stdout.write(json.dumps(result.model_dump(mode="json"), ensure_ascii=True) + "\n")
    sys.stdout.flush()


def print_leaderboard(screen: Console, results: Sequence[ExperimentResult], title: str) -> None:
    """A title line, then the results best first. The title is a line of its own: as a
    table's title it would be wrapped to the table's width, a long path cut in pieces."""
    screen.print(safe_text(title, limit=10_000))
    screen.print(leaderboard(results))


def leaderboard(results: Sequence[ExperimentResult]) -> Table:
    """The results best first: rank, name, model, main metric, whether the runner scored
    it (``verified``) or the script claims it, time, outcome, when."""
    table = Table()
    columns = ("#", "experiment", "model", "main metric", "metrics", "time", "outcome",
               "when (UTC)")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "time") else "left")
    for rank, result in enumerate(best_first(results), 1):
        metric = ranking_metric(result)
        table.add_row(
            str(rank),
            safe_text(result.experiment_name),
            safe_text(result.model_type),
            f"{metric[0]} {metric[1]:.4f}" if metric and result.success else "-",
            scored_by(result),
            f"{result.execution_time:.2f}s",
            outcome(result),
            result.timestamp.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def scored_by(result: ExperimentResult) -> str:
    """Who computed a result's metrics, in a word: ``verified`` (the runner, on held-out
    rows) or ``claimed`` (the script itself)."""
    return "verified" if result.verified else "claimed"


def outcome(result: ExperimentResult) -> Text:
    """How a run ended, in a few words (a failure's reason cut short)."""
    if result.success:
        return Text("ok")
    if result.timed_out:
        return Text("timed out")
    if result.oom_killed:
        return Text("out of memory")
    return Text("failed: ").append_text(safe_text(result.error_message or "", limit=60))


def summary(result: ExperimentResult) -> None:
    """One run on the console: its outcome and metrics or error (a hint on a line of its
    own), its artifacts, and a tracking failure on stderr."""
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    detail = metrics if result.success else result.error_message or ""
    # Script text in a message is escaped (printable), so a newline is the runner's: a hint.
    first, *more = detail.split("\n")
    console.print(
        Text.assemble(
            outcome(result).plain.split(":")[0],
            " ",
            safe_text(result.experiment_name),
            f" ({result.execution_time:.2f}s, exit {result.exit_code}): ",
            safe_text(first, limit=10_000),
        )
    )
    for line in more:
        console.print(safe_text(line, limit=10_000))
    if result.verified and result.holdout is not None:
        console.print(
            f"  verified: the runner's scores on {result.holdout.test_rows} held-out rows "
            f"(test rows sha256 {result.holdout.test_rows_sha256[:12]})"
        )
        if result.reported_metrics:
            claimed = ", ".join(f"{k}={v:.4f}" for k, v in result.reported_metrics.items())
            console.print(Text.assemble("  the script reported: ", safe_text(claimed)))
    for artifact in result.artifacts:
        console.print(
            Text.assemble("  artifact ", safe_text(artifact.path), f" ({artifact.size} bytes)")
        )
    if result.artifacts_message:
        console.print(Text.assemble("  ", safe_text(result.artifacts_message, limit=2000)))
    if result.tracking_error:
        errors.print(Text.assemble("note: ", safe_text(result.tracking_error, limit=2000)))


def lines(listing: str) -> Text:
    """A label's space-separated items, one a line, each made safe to print."""
    return Text("\n").join(safe_text(item) for item in listing.split()) if listing else Text("-")
