"""Many runs at once: overlap within host limits, order, interruption, asyncio, live output."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import ExperimentRunner, ExperimentSpec
from runner.sandbox.engine import DockerEngine
from tests.conftest import our_containers
from tests.integration.conftest import SPEC
from tests.integration.test_lifecycle import spawn, wait_for_container

SLEEPER = """
import json, time
started = time.time()
time.sleep({seconds})
print(json.dumps({{"success": True, "metrics": {{"started": started, "ended": time.time()}}}}))
"""


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_eight_jobs_overlap_within_the_hosts_limits(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """run_many runs jobs concurrently, never more at once than default_workers allows."""
    runner = ExperimentRunner(timeout=60, engine=engine, cpu_limit=0.5, memory_limit="256m")
    allowed = runner.default_workers()
    assert allowed >= 2
    jobs = [
        (write_script(SLEEPER.format(seconds=1.5), f"job{i}.py"), SPEC.model_copy(), i)
        for i in range(8)
    ]
    results = runner.run_many(jobs)
    assert [r.iteration for r in results] == list(range(8))
    assert all(r.success for r in results), [r.error_message for r in results]
    intervals = [(r.metrics["started"], r.metrics["ended"]) for r in results]
    assert 2 <= max_overlap(intervals) <= allowed


def test_explicit_max_workers_is_respected(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """With max_workers=2, no more than two scripts ever run at once."""
    runner = ExperimentRunner(timeout=60, engine=engine, cpu_limit=0.25, memory_limit="256m")
    jobs = [(write_script(SLEEPER.format(seconds=1), f"j{i}.py"), SPEC, i) for i in range(5)]
    results = runner.run_many(jobs, max_workers=2)
    assert max_overlap([(r.metrics["started"], r.metrics["ended"]) for r in results]) == 2


def test_one_failing_run_does_not_affect_the_others(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A crash, a timeout and an OOM kill in a batch leave the other jobs' results intact."""
    runner = ExperimentRunner(timeout=3, engine=engine, memory_limit="128m")
    good = write_script('import json\nprint(json.dumps({"success": True}))\n', "good.py")
    jobs = [
        (good, SPEC, 0),
        (write_script("raise SystemExit(3)\n", "crash.py"), SPEC, 1),
        (write_script("import time\ntime.sleep(60)\n", "slow.py"), SPEC, 2),
        (write_script("x = bytearray(512 * 1024 * 1024)\n", "oom.py"), SPEC, 3),
        (good, SPEC, 4),
    ]
    results = runner.run_many(jobs, max_workers=3)
    assert [r.success for r in results] == [True, False, False, False, True]
    assert results[1].exit_code == 3
    assert results[2].timed_out
    assert results[3].oom_killed


def test_interrupting_a_batch_removes_every_container(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """SIGINT to a process running run_many leaves no container behind."""
    scripts = [str(write_script("import time\ntime.sleep(600)\n", f"s{i}.py")) for i in range(8)]
    process = spawn(
        f"""
        from runner import ExperimentRunner, ExperimentSpec
        spec = ExperimentSpec(experiment_name="batch", model_type="SVC")
        runner = ExperimentRunner(timeout=600, cpu_limit=0.5, memory_limit="256m")
        runner.run_many([(s, spec, i) for i, s in enumerate({scripts!r})], max_workers=4)
        """
    )
    wait_for_container(engine)
    deadline = time.monotonic() + 30
    while len(our_containers(engine)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert our_containers(engine) == []


def test_arun_runs_concurrently_under_asyncio(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """Two arun calls gathered together overlap in time."""
    runner = ExperimentRunner(timeout=60, engine=engine, cpu_limit=0.5)
    a = write_script(SLEEPER.format(seconds=1.5), "a.py")
    b = write_script(SLEEPER.format(seconds=1.5), "b.py")

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(runner.arun(a, SPEC, 0), runner.arun(b, SPEC, 1))

    first, second = asyncio.run(both())
    assert first.success and second.success
    assert max_overlap([(r.metrics["started"], r.metrics["ended"]) for r in (first, second)]) == 2


def test_cancelling_arun_removes_its_container(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A cancelled arun task takes its container with it."""
    runner = ExperimentRunner(timeout=600, engine=engine)
    script = write_script("import time\ntime.sleep(600)\n")

    async def cancel_midway() -> None:
        task = asyncio.create_task(runner.arun(script, SPEC, 0))
        await asyncio.to_thread(wait_for_container, engine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    deadline = time.monotonic() + 10
    while our_containers(engine) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert our_containers(engine) == []


def test_on_output_sees_lines_while_the_script_runs(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """The callback gets a line long before the script finishes."""
    script = write_script(
        """
        import json, sys, time
        print("epoch 1", flush=True)
        print("note", file=sys.stderr, flush=True)
        time.sleep(2)
        print(json.dumps({"success": True}))
        """
    )
    arrivals: list[tuple[str, str, float]] = []
    started = time.monotonic()
    result = runner.run(
        script,
        ExperimentSpec(experiment_name="live", model_type="SVC"),
        0,
        on_output=lambda stream, line: arrivals.append((stream, line, time.monotonic())),
    )
    finished = time.monotonic()
    assert result.success
    # Each stream keeps its order; the engine does not order one stream against the other.
    assert [line for s, line, _ in arrivals if s == "stdout"] == [
        "epoch 1", json.dumps({"success": True})
    ]  # fmt: skip
    assert [line for s, line, _ in arrivals if s == "stderr"] == ["note"]
    first = next(t for s, line, t in arrivals if line == "epoch 1")
    assert first < finished - 1.5  # seen while the script still slept
    assert first > started
