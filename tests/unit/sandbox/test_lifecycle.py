"""One container's life on the fake engine: created and checked, run, recorded, removed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import ActiveRuns, Reaper, Resources, Sandbox, registered
from runner.sandbox.policy import Run, SandboxPolicy
from runner.sandbox.telemetry import CgroupTelemetry, Usage
from tests.unit.fakes import FakeEngine

POLICY = SandboxPolicy(image="img", memory_limit="1g", cpu_limit=1.0)


class FakeTelemetry(CgroupTelemetry):
    """The kernel's counters of a run's cgroup, as given."""

    def __init__(self, peak: int) -> None:
        super().__init__(Path("/nonexistent"))
        self.peak = peak

    def read(self, parent: str) -> Usage:
        return Usage(self.peak, 0.25)

    def release(self, parent: str) -> None:
        pass


def make(
    engine: FakeEngine, tmp_path: Path, released: list[str], peak: int | None = None
) -> Sandbox:
    telemetry = FakeTelemetry(peak) if peak is not None else None
    resources = Resources(
        lease=lease_uid(tmp_path / "leases"),
        cgroup_parent="/experiment-runner/x" if telemetry else None,
        telemetry=telemetry,
    )
    resources.extra.append(lambda: released.append("extra"))
    run = Run(
        command=["python", "x.py"],
        workdir=tmp_path,
        read_only_paths=(tmp_path,),
        deadline=0.0,
        uid=resources.lease.uid,
    )
    return Sandbox.create(engine, "sha256:img", POLICY, run, resources)


def test_a_run_is_started_waited_for_recorded_and_removed(tmp_path: Path) -> None:
    """Leaving the with block removes the container and releases what was made for it."""
    engine, released = FakeEngine(), []
    with make(engine, tmp_path, released) as sandbox:
        sandbox.attach()
        execution = sandbox.run(5, 1000, None)
    assert (execution.exit_code, execution.timed_out, execution.image_id) == (
        0,
        False,
        "sha256:img",
    )
    assert '"accuracy": 0.9' in execution.stdout and execution.exit_reported
    assert engine.calls == ["create", "attach", "start", "wait", "remove"]
    assert released == ["extra"]


def test_a_deadline_kills_the_container_and_says_so(tmp_path: Path) -> None:
    """A wait that runs out is a kill and a timed-out record, never a hang."""
    engine, released = FakeEngine(wait_results=[None, 137]), []
    with make(engine, tmp_path, released) as sandbox:
        sandbox.attach()
        execution = sandbox.run(0.01, 1000, None)
    assert execution.timed_out and not execution.oom_killed
    assert engine.calls[-3:] == ["kill", "wait", "remove"]


def test_a_control_the_engine_drops_stops_the_sandbox_before_it_starts(tmp_path: Path) -> None:
    """An engine that reports a weaker container than asked: never started, nothing left."""
    engine, released = FakeEngine(quietly={"NetworkMode": "bridge"}), []
    with pytest.raises(ExperimentExecutionError, match="no network"):
        make(engine, tmp_path, released)
    assert "start" not in engine.calls and engine.removed == ["c1"] and released == ["extra"]


def test_an_aborted_run_is_never_registered(tmp_path: Path) -> None:
    """A token aborted before its container exists keeps the container from running."""
    engine, active, token = FakeEngine(), ActiveRuns(), object()
    assert active.abort([token]) == []
    with (
        make(engine, tmp_path, []) as sandbox,
        pytest.raises(ExperimentExecutionError),
        registered(active, token, sandbox),
    ):
        pytest.fail("an aborted run must not start")
    assert active.aborted(token)
    active.forget(token)
    assert not active.aborted(token)


GIB = 1024**3


def test_a_complete_run_is_over_before_the_engine_says_so(tmp_path: Path) -> None:
    """Both end records in, the script exited by itself, peak memory clear of the cap: the
    result returns with no wait, and the removal is the reaper's."""
    engine, released, reaper = FakeEngine(remove_delay=0.2), [], Reaper()
    with make(engine, tmp_path, released, peak=GIB // 10) as sandbox:
        sandbox.attach()
        execution = sandbox.run(5, 1000, None, reaper=reaper)
    assert "wait" not in engine.calls and "remove" not in engine.calls  # not yet
    assert (execution.exit_code, execution.exit_reported, execution.timed_out) == (0, True, False)
    assert execution.stdout == '{"success": true, "metrics": {"accuracy": 0.9}}\n'
    assert execution.peak_memory_bytes == GIB // 10 and execution.cpu_seconds == 0.25
    reaper.drain()
    assert engine.calls[-1] == "remove" and released == ["extra"]


@pytest.mark.parametrize(
    ("status", "peak", "why"),
    [
        (137, GIB // 10, "a signal ended it: the memory cap's kill, or the deadline's"),
        (1, GIB - 1, "peak memory at the cap: something may have been OOM-killed"),
        (0, None, "no telemetry: only the engine can tell an OOM kill"),
    ],
)
def test_the_engines_record_is_waited_for_when_the_end_may_not_tell(
    tmp_path: Path, status: int, peak: int | None, why: str
) -> None:
    engine = FakeEngine(exit_status=status, wait_results=[status], oom_killed=status == 137)
    with make(engine, tmp_path, [], peak=peak) as sandbox:
        sandbox.attach()
        execution = sandbox.run(5, 1000, None, reaper=Reaper())
    assert "wait" in engine.calls, why
    assert execution.exit_code == status
    assert execution.oom_killed == (status == 137)


def test_the_runners_own_program_needs_no_telemetry(tmp_path: Path) -> None:
    """``trusted`` (the scorer): its own exit record is enough."""
    engine = FakeEngine()
    with make(engine, tmp_path, []) as sandbox:
        sandbox.attach()
        execution = sandbox.run(5, 1000, None, trusted=True)
    assert "wait" not in engine.calls and execution.exit_code == 0


def test_without_the_end_record_the_run_is_waited_for(tmp_path: Path) -> None:
    """A sandbox that ended without its records (gVisor's kernel died, say) is the engine's
    to describe."""
    engine = FakeEngine(exit_reported=False, wait_results=[1])
    with make(engine, tmp_path, [], peak=GIB // 10) as sandbox:
        sandbox.attach()
        execution = sandbox.run(5, 1000, None)
    assert "wait" in engine.calls and not execution.exit_reported


def test_a_drain_from_inside_a_removal_does_not_wait_for_itself() -> None:
    # The garbage collector may collect a backend inside a removal thread; its
    # finalizer drains from there and must neither raise nor wait for itself.
    reaper, errors, done = Reaper(), [], threading.Event()

    def step() -> None:
        try:
            reaper.drain(timeout=5)
        except Exception as error:  # noqa: BLE001 - the test records any
            errors.append(error)
        finally:
            done.set()

    started = time.monotonic()
    reaper.remove(step)
    assert done.wait(5)
    reaper.drain(timeout=5)
    assert errors == []
    assert time.monotonic() - started < 4
