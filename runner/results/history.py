"""A results history: one ``ExperimentResult`` per line of a JSON Lines file."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult

#: Metrics that rank results, first found wins; all are "higher is better".
RANKING_METRICS = ("accuracy", "r2", "f1", "roc_auc")


class ResultsHistory:
    """Appends results safely and reads them back.

    Each append is one ``write`` of a whole line under an exclusive ``flock``,
    so two processes appending at once never interleave a line, and a crash
    mid-write can only leave a torn *last* line, which readers skip and the next
    append starts after.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def append(self, result: ExperimentResult) -> None:
        line = (result.model_dump_json() + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append(line)
        except OSError as e:
            raise ExperimentExecutionError(
                f"Could not record the result in {self.path}: {e}",
                hint="check that the results file's directory is writable, or choose another "
                "file (RUNNER_RESULTS_FILE or --results).",
            ) from e

    def _append(self, line: bytes) -> None:
        # Read access too: the last byte tells whether a previous writer died mid-line.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a previous writer died mid-line: start afresh
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> tuple[list[ExperimentResult], int]:
        """All readable results in file order, and how many lines were unreadable."""
        if not self.path.exists():
            return [], 0
        results: list[ExperimentResult] = []
        skipped = 0
        with self.path.open("rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    results.append(ExperimentResult.model_validate_json(raw))
                except ValidationError:
                    skipped += 1
        return results, skipped


def ranking_metric(result: ExperimentResult) -> tuple[str, float] | None:
    """The metric a leaderboard ranks ``result`` by, if it has one."""
    for name in RANKING_METRICS:
        if name in result.metrics:
            return name, result.metrics[name]
    return None


def best_first(results: Iterable[ExperimentResult]) -> list[ExperimentResult]:
    """Successful results by ranking metric, highest first, those the runner scored on
    held-out rows (``verified``) before the scripts' own claims; failures last, newest
    first."""

    def key(result: ExperimentResult) -> tuple[int, int, float, float]:
        metric = ranking_metric(result) if result.success else None
        return (
            0 if metric else 1,
            0 if result.verified else 1,
            -metric[1] if metric else 0.0,
            -result.timestamp.timestamp(),
        )

    return sorted(results, key=key)
