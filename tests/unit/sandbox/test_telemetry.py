from pathlib import Path

import pytest

from runner.sandbox import telemetry
from runner.sandbox.telemetry import CgroupTelemetry


def test_a_run_cgroup_still_busy_is_released_once_it_empties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cgroup the engine is still leaving (Podman's clean-up) is removed when it empties."""
    run = tmp_path / "memory" / "experiment-runner" / "run1"
    run.mkdir(parents=True)
    attempts: list[int] = []
    remove = telemetry._remove_tree

    def busy_twice(directory: Path) -> bool:
        attempts.append(1)
        return len(attempts) > 2 and remove(directory)

    monkeypatch.setattr(telemetry, "_remove_tree", busy_twice)
    monkeypatch.setattr(telemetry, "RELEASE_RETRY_DELAY", 0.0)
    CgroupTelemetry(root=tmp_path).release("/experiment-runner/run1")
    assert not run.exists()
    assert len(attempts) == 3


def test_a_run_cgroup_that_stays_busy_is_left_for_release_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Release gives up after its attempts, without an error; release_stale takes it later."""
    run = tmp_path / "memory" / "experiment-runner" / "run1"
    run.mkdir(parents=True)
    monkeypatch.setattr(telemetry, "_remove_tree", lambda directory: False)
    monkeypatch.setattr(telemetry, "RELEASE_RETRY_DELAY", 0.0)
    CgroupTelemetry(root=tmp_path).release("/experiment-runner/run1")
    assert run.exists()
