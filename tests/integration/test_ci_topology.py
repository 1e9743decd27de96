"""The usual GitLab CI topology, for real: the job in a container of its own, with the runner
installed from its built wheel, and the engine a Docker-in-Docker service beside it.

The job container has no network; it reaches the service through the service's socket only
(GitLab's ``DOCKER_HOST=tcp://docker:2375`` is a socket too, over a network of the job's).
The service cannot see the job's files, so every run's files are copied over its API. The job
runs what docs/ci.md tells a CI job to run: ``runner doctor --conformance`` first, then
``runner batch --junit --summary``.

The runner comes from a wheel built from this checkout (``pip wheel``, offline, with the
build backend of the test extra); its dependencies from this machine's own environment,
mounted read-only (the job image's Python is the same minor version), as a CI image would
have them installed. Nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import docker

from runner.core.settings import DEFAULT_BASE_IMAGE
from tests.engines import DIND_SOCKET_DIR, LABEL, running_dind
from tests.integration.conftest import CHECKOUT, run_once

SCRIPT = """\
import json
print(json.dumps({{"success": True, "metrics": {{"accuracy": {score}}}}}))
"""

#: What the job runs: what docs/ci.md's recipes run, against the service.
JOB = """\
set -eu
python3 -m venv /venv
/venv/bin/pip install --quiet --no-index --no-deps /wheels/*.whl
/venv/bin/runner doctor --conformance --junit /job/out/conformance.xml
/venv/bin/runner batch /job/scripts/first.py /job/scripts/second.py \\
    --results /job/out/results.jsonl --junit /job/out/batch.xml --summary /job/out/summary.md
"""


@run_once
def test_a_job_container_with_the_wheel_proves_a_dind_service_and_runs_a_batch(
    tmp_path: Path,
) -> None:
    """Conformance holds on the service (exit 0, its JUnit with no failure), and the batch's
    two scripts succeed through copied files, with JUnit and the CI page's summary."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(wheels), str(CHECKOUT)],
        check=True, timeout=300,
    )  # fmt: skip
    assert [w.name for w in wheels.glob("experiment_runner-*.whl")], "no wheel was built"
    job = tmp_path / "job"
    (job / "scripts").mkdir(parents=True)
    (job / "out").mkdir()
    (job / "home").mkdir()
    for name, score in (("first", 0.75), ("second", 0.5)):
        (job / "scripts" / f"{name}.py").write_text(SCRIPT.format(score=score))
    dependencies = sysconfig.get_paths()["purelib"]

    local = docker.from_env()
    with running_dind() as dind:
        socket_dir = dind.docker_host.removeprefix("unix://").rsplit("/", 1)[0]
        container = local.containers.run(
            DEFAULT_BASE_IMAGE,
            ["sh", "-c", JOB],
            detach=True,
            network_mode="none",
            labels={LABEL: "ci-job"},
            environment={
                "DOCKER_HOST": f"unix://{DIND_SOCKET_DIR}/docker.sock",
                "PYTHONPATH": "/deps",
                "HOME": "/job/home",
                "CI": "true",
            },
            volumes={
                socket_dir: {"bind": DIND_SOCKET_DIR, "mode": "rw"},
                str(wheels): {"bind": "/wheels", "mode": "ro"},
                dependencies: {"bind": "/deps", "mode": "ro"},
                str(job): {"bind": "/job", "mode": "rw"},
            },
        )
        try:
            status = container.wait(timeout=600)["StatusCode"]
            logs = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
            local.close()
    assert status == 0, logs[-4000:]

    conformance = ET.parse(job / "out" / "conformance.xml").getroot()  # noqa: S314 - the job wrote it
    cases = conformance.findall(".//testcase")
    assert len(cases) >= 15, ET.tostring(conformance)[:2000]
    assert not conformance.findall(".//failure") and not conformance.findall(".//error")

    batch = ET.parse(job / "out" / "batch.xml").getroot()  # noqa: S314 - the job wrote it
    names = sorted(case.get("name", "") for case in batch.findall(".//testcase"))
    assert names == ["first", "second"], ET.tostring(batch)[:2000]
    assert not batch.findall(".//failure") and not batch.findall(".//error")
    summary = (job / "out" / "summary.md").read_text()
    assert "first" in summary and "second" in summary and "0.75" in summary, summary
    # The service could not see the job's files: the job's runner copied them.
    recorded = (job / "out" / "results.jsonl").read_text()
    assert recorded.count('"success": true') + recorded.count('"success":true') == 2, recorded
