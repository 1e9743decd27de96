from pathlib import Path

import pytest

from runner import ExperimentRunner, ExperimentSpec
from runner.sandbox.streams import MAX_LINE, LineSplitter
from tests.unit.fakes import FakeEngine

SPEC = ExperimentSpec(experiment_name="job", model_type="SVC")


def test_default_workers_never_book_more_than_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs at once = min(cores / cpu_limit, memory / memory_limit), at least one."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 8 * 1024**3 // 4096}  # 8 GiB
    monkeypatch.setattr("os.sysconf", lambda name: pages[name])
    engine = FakeEngine()
    assert ExperimentRunner(cpu_limit=1.0, memory_limit="1g", engine=engine).default_workers() == 4
    assert ExperimentRunner(cpu_limit=0.5, memory_limit="1g", engine=engine).default_workers() == 8
    assert ExperimentRunner(cpu_limit=0.5, memory_limit="3g", engine=engine).default_workers() == 2
    assert ExperimentRunner(cpu_limit=8.0, memory_limit="1g", engine=engine).default_workers() == 1


def test_default_workers_on_a_remote_engine_count_its_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On an engine that does not share this machine, its own CPUs and memory count."""
    monkeypatch.setenv("RUNNER_TRANSFER", "auto")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    engine = FakeEngine(remote=True, ncpu=8, mem_total=4 * 1024**3)
    assert ExperimentRunner(cpu_limit=1.0, memory_limit="1g", engine=engine).default_workers() == 4
    assert ExperimentRunner(cpu_limit=2.0, memory_limit="1g", engine=engine).default_workers() == 4
    assert (
        ExperimentRunner(cpu_limit=1.0, memory_limit="512m", engine=engine).default_workers() == 8
    )


def test_run_many_keeps_job_order_and_isolates_a_broken_job(script: Path, tmp_path: Path) -> None:
    """Results follow the jobs' order; a job that cannot run fails alone."""
    engine = FakeEngine(wait_results=[0, 0])
    runner = ExperimentRunner(timeout=5, engine=engine)
    jobs = [(script, SPEC, 0), (tmp_path / "missing.py", SPEC, 1), (script, SPEC, 2)]
    seen: list[int] = []
    results = runner.run_many(jobs, max_workers=2, on_result=lambda i, r: seen.append(i))
    assert [r.iteration for r in results] == [0, 1, 2]
    assert [r.success for r in results] == [True, False, True]
    assert "Script not found" in (results[1].error_message or "")
    assert sorted(seen) == [0, 1, 2]
    assert sorted(engine.removed) == ["c1", "c2"]


def test_run_many_records_every_result(script: Path, tmp_path: Path) -> None:
    """With a history, each batch result is appended once."""
    runner = ExperimentRunner(
        timeout=5,
        engine=FakeEngine(wait_results=[0, 0]),
        history=tmp_path / "r.jsonl",  # type: ignore[arg-type]
    )
    runner.run_many([(script, SPEC, 0), (script, SPEC, 1)], max_workers=1)
    results, _ = runner.history.read()  # type: ignore[union-attr]
    assert sorted(r.iteration for r in results) == [0, 1]


def test_run_calls_on_output_with_each_line(script: Path) -> None:
    """on_output receives each stream's lines, without newlines, the last partial one too."""
    engine = FakeEngine(stdout=b"one\ntw", stderr=b"warn\n")
    lines: list[tuple[str, str]] = []
    ExperimentRunner(timeout=5, engine=engine).run(
        script, SPEC, 0, on_output=lambda stream, line: lines.append((stream, line))
    )
    # The partial line is whole once the script has exited (the sandbox's end record).
    assert lines == [("stdout", "one"), ("stdout", "tw"), ("stderr", "warn")]


def test_a_line_with_no_newline_is_handed_over_in_bounded_pieces() -> None:
    """A huge line without a newline never piles up past MAX_LINE bytes."""
    pieces: list[str] = []
    splitter = LineSplitter("stdout", lambda _, line: pieces.append(line))
    for _ in range(10):
        splitter.feed(b"z" * (MAX_LINE // 2 + 1))
    assert all(len(p) == MAX_LINE for p in pieces)
    assert len(pieces) == 5


def test_a_failing_callback_does_not_stop_capture(script: Path) -> None:
    """If on_output raises, the run still completes and stderr notes the failure."""

    def broken(stream: str, line: str) -> None:
        raise RuntimeError("ui crashed")

    result = ExperimentRunner(timeout=5, engine=FakeEngine()).run(script, SPEC, 0, on_output=broken)
    assert result.success
    assert "on_output callback failed" in result.stderr
