"""An engine that restarts in the middle of a batch: a Docker-in-Docker engine of the test's
own, restarted for real (its dockerd stops, every container it ran with it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker

from runner import ExperimentRunner, ExperimentSpec, ResultsHistory
from runner.backends.local import RERUN_NOTE
from runner.sandbox.engine import DockerEngine
from tests.conftest import OURS
from tests.engines import running_dind
from tests.integration.conftest import run_once

#: A job of about three seconds.
JOB = """\
import json, time
time.sleep(3)
print(json.dumps({"success": True, "metrics": {"slept": 3}}))
"""


@run_once
def test_a_batch_outlives_an_engine_restart_with_each_result_once_and_nothing_left(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """dockerd restarted while ten 3-second jobs run, two at once: every job ends in success,
    once (a job cut off runs again, once, and says so; the ones queued wait for the
    engine), the history holds ten results, and nothing of the batch is left."""
    script = write_script(JOB, "job.py")
    jobs = [
        (script, ExperimentSpec(experiment_name=f"job{i}", model_type="s"), i) for i in range(10)
    ]
    history = ResultsHistory(tmp_path / "results.jsonl")
    with running_dind() as dind:
        client = docker.DockerClient(base_url=dind.docker_host, version="auto", max_pool_size=64)
        try:
            runner = ExperimentRunner(
                timeout=120, cpu_limit=1.0, memory_limit="1g", history=history,
                engine=DockerEngine(client),
            )  # fmt: skip
            runner.backend.engine.image_id(runner.policy.image)  # ready before the clock starts
            restarted = threading.Thread(target=_restart_mid_job, args=(client, dind.restart))
            started = time.monotonic()
            restarted.start()
            results = runner.run_many(jobs, max_workers=2)
            restarted.join()
            took = time.monotonic() - started
            assert [r.experiment_name for r in results] == [f"job{i}" for i in range(10)]
            assert all(r.success for r in results), "\n".join(str(r.error_message) for r in results)
            assert 1 <= sum(RERUN_NOTE.strip() in r.stderr for r in results) <= 2
            recorded, unreadable = history.read()
            assert unreadable == 0
            assert sorted(r.experiment_name for r in recorded) == sorted(
                f"job{i}" for i in range(10)
            )
            assert took < 120, took
            runner.close()  # the last removals, left to the background, are done
            left = client.containers.list(all=True, filters={"label": OURS})
            assert left == [], [c.name for c in left]
            volumes = client.volumes.list(filters={"label": OURS})
            assert [v.name for v in volumes if "support" not in v.name] == []
        finally:
            client.close()


def _restart_mid_job(client: docker.DockerClient, restart: Callable[[], None]) -> None:
    """Restart the engine once a job's script has run for a second: a fixed moment after the
    batch starts could fall before any script started on a busy machine, and cut off none."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.containers.list(filters={"label": OURS, "status": "running"}):
            time.sleep(1.0)
            break
        time.sleep(0.1)
    restart()
