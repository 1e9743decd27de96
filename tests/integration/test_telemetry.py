"""Peak memory and CPU time in the result come from the kernel and match the engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from runner import ExperimentResult, ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import LOCAL_ENGINE, SPEC, needs_local_engine
from tests.integration.test_lifecycle import wait_for_container

FOOTPRINT = """
import json, time
import numpy as np
block = np.ones(300 * 1024 * 1024 // 8)   # 300 MB, every page touched
spin_until = time.process_time() + 1.5
while time.process_time() < spin_until:
    pass
print("measured", flush=True)
time.sleep(3)
print(json.dumps({"success": True, "metrics": {"sum": float(block[:10].sum())}}))
"""


@needs_local_engine
def test_peak_memory_and_cpu_match_what_the_engine_reports(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A 300 MB, 1.5 CPU-second script: result telemetry is within 10% of docker stats."""
    script = write_script(FOOTPRINT)
    runner = ExperimentRunner(timeout=60, engine=engine)
    measured = threading.Event()
    results: list[ExperimentResult] = []

    def run() -> None:
        results.append(
            runner.run(
                script, SPEC, 0, on_output=lambda s, line: line == "measured" and measured.set()
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    container = wait_for_container(engine)
    assert measured.wait(60), "the script never reached its idle phase"
    time.sleep(0.3)
    stats = docker.from_env().api.stats(container.id, stream=False)
    thread.join(60)
    result = results[0]
    assert result.success, result.error_message
    # Podman reports only the usage of the moment, Docker its peak too.
    engine_memory = stats["memory_stats"]
    engine_peak = engine_memory.get("max_usage", engine_memory["usage"])
    engine_cpu = stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
    assert result.peak_memory_bytes is not None and result.cpu_seconds is not None
    assert result.peak_memory_bytes > 300 * 1024 * 1024
    assert result.peak_memory_bytes == pytest.approx(engine_peak, rel=0.10)
    # The script spun 1.5 s of its own CPU time; gVisor's clock for that differs a little
    # from the host's accounting of its sandbox, so the host's count is held to 10% less.
    assert result.cpu_seconds >= 1.5 * 0.9
    assert result.cpu_seconds == pytest.approx(engine_cpu, rel=0.10)


@needs_local_engine
def test_telemetry_cgroups_are_removed_after_the_run(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """The per-run cgroup parent goes with the container (removed in the background once
    the result is back: ``close()`` waits for that)."""
    before = set(Path("/sys/fs/cgroup/memory/experiment-runner").glob("*"))
    result = runner.run(write_script("print('{\"success\": true}')\n"), SPEC, 0)
    runner.close()
    after = set(Path("/sys/fs/cgroup/memory/experiment-runner").glob("*"))
    assert result.peak_memory_bytes is not None
    assert {p for p in after - before if p.is_dir()} == set()


@pytest.mark.skipif(LOCAL_ENGINE, reason="for engines on another machine (RUNNER_TEST_ENGINE)")
def test_telemetry_is_none_where_the_engine_is_elsewhere(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """An engine whose cgroups are not this machine's gives no telemetry, never wrong numbers."""
    result = runner.run(write_script("print('{\"success\": true}')\n"), SPEC, 0)
    assert result.success, result.error_message
    assert (result.peak_memory_bytes, result.cpu_seconds) == (None, None)
