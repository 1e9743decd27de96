"""A cold run on the fake engine: its files bound or copied, and one more attempt only when
nothing of the script ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.sandbox.cold import ColdRuns
from runner.sandbox.engine import SandboxStartError
from runner.sandbox.lifecycle import ActiveRuns
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.probe import FileRoute, probe
from runner.sandbox.request import RunRequest
from tests.unit.fakes import FakeEngine

POLICY = SandboxPolicy(image="img", memory_limit="1g", cpu_limit=1.0)


class StartsOnSecondTry(FakeEngine):
    """The runtime fails the first start (as gVisor sometimes does)."""

    def start(self, container_id: str) -> None:
        if not self.started and "start failed" not in self.calls:
            self.calls.append("start failed")
            raise SandboxStartError("The runtime could not start the sandbox")
        super().start(container_id)


def cold(engine: FakeEngine, active: ActiveRuns | None = None) -> ColdRuns:
    facts = probe(engine, POLICY, "bind")
    return ColdRuns(engine, POLICY, facts, FileRoute("bind", True), active or ActiveRuns())


def test_a_failed_start_gets_one_fresh_sandbox(script: Path) -> None:
    """Nothing ran, so a second sandbox runs the script; the first is removed."""
    engine = StartsOnSecondTry()
    request = RunRequest(script, (script.parent,), 5, 1000)
    execution = cold(engine).run(request, None, object())
    assert execution.exit_code == 0
    assert engine.removed == ["c1", "c2"] and engine.started == ["c2"]


def test_a_cancelled_run_is_not_tried_again(script: Path) -> None:
    """A run aborted while its first sandbox failed to start never gets a second one."""
    engine, active, token = StartsOnSecondTry(), ActiveRuns(), object()
    active.abort([token])
    request = RunRequest(script, (script.parent,), 5, 1000)
    with pytest.raises(Exception, match=r"cancelled|could not start"):
        cold(engine, active).run(request, None, token)
    assert engine.started == []


def test_copied_files_reach_the_sandbox_from_a_volume_at_their_own_paths(script: Path) -> None:
    """transfer="copy": the script's directory is bound from a volume, not from this machine."""
    engine = FakeEngine()
    facts = probe(engine, POLICY, "copy")
    runs = ColdRuns(engine, POLICY, facts, FileRoute("copy", facts.shares_files), ActiveRuns())
    runs.run(RunRequest(script, (script.parent,), 5, 1000), None, object())
    config = engine.created[-1]  # the sandbox (a probe and the files' helper came first)
    (bind,) = [m for m in config["mounts"] if m["Target"] == str(script.parent)]
    assert bind["Source"] != str(script.parent) and bind["ReadOnly"]
    assert engine.volumes_removed  # the run's volume went with it


def test_the_runners_own_program_is_over_at_its_result_line(script: Path) -> None:
    """A run that ends with its result (the scorer) is over once the result line and the
    exit of 0 are in: no wait for the container, whose removal the reaper does."""
    from runner.sandbox.lifecycle import Reaper

    engine = FakeEngine(stdout=b'{"success": true, "metrics": {"accuracy": 0.5}}\n')
    facts = probe(engine, POLICY, "bind")
    reaper = Reaper()
    runs = ColdRuns(engine, POLICY, facts, FileRoute("bind", True), ActiveRuns(), reaper=reaper)
    request = RunRequest(script, (script.parent,), 5, 1000, ends_with_result=True)
    execution = runs.run(request, None, object())
    reaper.drain()
    assert execution.exit_code == 0 and execution.exit_reported
    assert execution.stdout.endswith('{"accuracy": 0.5}}\n')
    assert "wait" not in engine.calls
    assert engine.removed == ["c1"]


def test_a_failing_program_of_the_runner_is_waited_for(script: Path) -> None:
    """Without its result line and an exit of 0 the run is supervised as any other."""
    from runner.sandbox.lifecycle import Reaper

    engine = FakeEngine(stdout=b"no result\n", exit_reported=False, wait_results=[1])
    facts = probe(engine, POLICY, "bind")
    runs = ColdRuns(engine, POLICY, facts, FileRoute("bind", True), ActiveRuns(), reaper=Reaper())
    request = RunRequest(script, (script.parent,), 5, 1000, ends_with_result=True)
    execution = runs.run(request, None, object())
    assert execution.exit_code == 1
    assert engine.calls[-2:] == ["wait", "remove"]
