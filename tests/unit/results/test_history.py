import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentResult
from runner.results.history import ResultsHistory, best_first, ranking_metric


def result(name: str = "x", success: bool = True, minutes: int = 0, **metrics: float):
    return ExperimentResult(
        experiment_name=name,
        iteration=0,
        model_type="SVC",
        execution_time=1.0,
        success=success,
        code_path="/e/x.py",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        metrics=metrics,
        stdout="y" * 5000,
    )


def test_append_then_read_round_trips(tmp_path: Path) -> None:
    """Appended results read back in order, equal to what was written."""
    history = ResultsHistory(tmp_path / "sub" / "results.jsonl")
    written = [result("a", accuracy=0.5), result("b", success=False)]
    for item in written:
        history.append(item)
    assert history.read() == (written, 0)


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    """No file yet means no results, not an error."""
    assert ResultsHistory(tmp_path / "none.jsonl").read() == ([], 0)


def test_torn_last_line_is_skipped_and_the_next_append_starts_fresh(tmp_path: Path) -> None:
    """A crash mid-write loses only that line; earlier and later lines stay readable."""
    path = tmp_path / "results.jsonl"
    history = ResultsHistory(path)
    history.append(result("before"))
    with path.open("ab") as f:
        f.write(result("torn").model_dump_json().encode()[:100])  # no newline: a crash
    history.append(result("after"))
    results, skipped = history.read()
    assert [r.experiment_name for r in results] == ["before", "after"]
    assert skipped == 1


def _append_many(path: str, name: str) -> None:
    history = ResultsHistory(path)
    for _ in range(100):
        history.append(result(name))


def test_concurrent_processes_never_interleave_lines(tmp_path: Path) -> None:
    """Two processes appending large lines at once leave only whole lines."""
    path = tmp_path / "results.jsonl"
    workers = [
        multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(path), n))
        for n in ("one", "two")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    results, skipped = ResultsHistory(path).read()
    assert skipped == 0
    assert sorted(r.experiment_name for r in results) == ["one"] * 100 + ["two"] * 100


def test_unwritable_history_raises_with_hint(tmp_path: Path) -> None:
    """A results path that cannot be written raises ExperimentExecutionError, not OSError."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ExperimentExecutionError, match="Could not record"):
        ResultsHistory(blocker / "results.jsonl").append(result())


def test_best_first_ranks_successes_by_metric_then_failures() -> None:
    """Highest metric first; failures and metric-less results last, newest first."""
    ranked = best_first(
        [
            result("low", accuracy=0.6),
            result("failed-old", success=False, minutes=1),
            result("high", accuracy=0.9),
            result("failed-new", success=False, minutes=2),
            result("regression", r2=0.7),
        ]
    )
    assert [r.experiment_name for r in ranked] == [
        "high", "regression", "low", "failed-new", "failed-old"
    ]  # fmt: skip


def test_ranking_metric_prefers_accuracy() -> None:
    """Accuracy ranks a classification result even when other metrics are present."""
    assert ranking_metric(result(f1=0.2, accuracy=0.8)) == ("accuracy", 0.8)
    assert ranking_metric(result(rmse=3.0)) is None


def test_best_first_ranks_the_runners_scores_before_the_scripts_claims() -> None:
    """A held-out score of 0.6 ranks before a script's own claim of 1.0."""
    claimed = result("claimed", accuracy=1.0)
    scored = result("scored", accuracy=0.6).model_copy(update={"metrics_source": "holdout"})
    assert [r.experiment_name for r in best_first([claimed, scored])] == ["scored", "claimed"]
