"""One container's life on the fake engine: created and checked, run, recorded, removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import ActiveRuns, Resources, Sandbox, registered
from runner.sandbox.policy import Run, SandboxPolicy
from tests.unit.fakes import FakeEngine

POLICY = SandboxPolicy(image="img", memory_limit="1g", cpu_limit=1.0)


def make(engine: FakeEngine, tmp_path: Path, released: list[str]) -> Sandbox:
    resources = Resources(lease=lease_uid(tmp_path / "leases"))
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
