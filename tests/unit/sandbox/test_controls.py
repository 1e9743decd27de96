from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from tests.unit.fakes import FakeEngine

SPEC = ExperimentSpec(experiment_name="verify", model_type="SVC")


@pytest.mark.parametrize(
    ("quietly", "control"),
    [
        ({"NetworkMode": "bridge"}, "no network"),
        ({"ReadonlyRootfs": False}, "read-only root filesystem"),
        ({"Privileged": True}, "not privileged"),
        ({"CapDrop": []}, "every capability dropped"),
        ({"CapAdd": ["SYS_ADMIN"]}, "no capability added"),
        ({"SecurityOpt": ["no-new-privileges"]}, "seccomp profile"),
        ({"SecurityOpt": []}, "no-new-privileges"),
        ({"MemorySwap": -1}, "no swap"),
        ({"Memory": 0}, "memory cap"),
        ({"NanoCpus": 0}, "CPU cap"),
        ({"PidsLimit": None}, "PID cap"),
        ({"Ulimits": []}, "ulimit nofile"),
        ({"Tmpfs": {"/tmp": "rw,size=256m", "/var/tmp": "rw"}}, "writable mount but /tmp"),
        ({"Tmpfs": {"/tmp": "rw"}}, "a capped /tmp tmpfs"),
    ],
)
def test_a_control_the_engine_drops_stops_the_run(
    script: Path, quietly: dict[str, Any], control: str
) -> None:
    """An engine that quietly weakens any control gets an error naming it; nothing starts."""
    engine = FakeEngine(quietly=quietly)
    with pytest.raises(ExperimentExecutionError, match=control) as raised:
        ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)
    assert "Fake Engine 1.0" in str(raised.value)
    assert "start" not in engine.calls
    assert engine.removed == ["c1"]


def test_a_runtime_the_engine_ignores_stops_the_run(script: Path) -> None:
    """Asking for runsc on an engine that runs runc anyway is refused, never a silent runc."""
    engine = FakeEngine(runtimes_registered={"runc", "runsc"}, quietly={"Runtime": "runc"})
    with pytest.raises(ExperimentExecutionError, match="runtime runsc"):
        ExperimentRunner(timeout=5, engine=engine, runtime="runsc").run(script, SPEC, 0)
    assert "start" not in engine.calls


def test_a_writable_mount_the_engine_adds_stops_the_run(script: Path) -> None:
    """A bind mount reported writable fails the check."""
    engine = FakeEngine()
    original = engine.inspect

    def with_extra_mount(container_id: str) -> dict[str, Any]:
        data = original(container_id)
        data["Mounts"].append({"Destination": "/var/tmp", "RW": True})
        return data

    engine.inspect = with_extra_mount  # type: ignore[method-assign]
    with pytest.raises(ExperimentExecutionError, match="/var/tmp writable"):
        ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)


def test_every_control_in_force_runs(script: Path) -> None:
    """With every control reported as asked, the run starts and succeeds."""
    engine = FakeEngine()
    assert ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0).success
    assert "start" in engine.calls
