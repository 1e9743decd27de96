"""Shared test set-up."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

# The Ryuk reaper image cannot be pulled here (no registry); tests clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import uuid

from runner import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.sandbox.cleanup import LABEL, LABEL_GROUP
from runner.sandbox.engine import ContainerInfo, DockerEngine, VolumeInfo

#: This test session's group: every container and volume its runs make (in this process,
#: the callers it starts and Ray's workers, which inherit the environment) carries it,
#: and the tests look at and remove only those, never another user's on the same engine.
GROUP = os.environ.setdefault("RUNNER_GROUP", f"tests-{uuid.uuid4().hex[:12]}")
OURS = f"{LABEL_GROUP}={GROUP}"


def our_containers(engine: DockerEngine) -> list[ContainerInfo]:
    """The containers this session's runs made (and have not removed yet)."""
    return engine.containers(OURS)


def our_volumes(engine: DockerEngine) -> list[VolumeInfo]:
    """The volumes this session's runs made, but the session's support volume (kept, as
    every runner's is, for the next run)."""
    return [v for v in engine.volumes(OURS) if v.labels.get(LABEL) != "support"]


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The engine the integration and adversarial suites run against: "local" (default),
#: "dind" (Docker-in-Docker, which cannot see this machine's files) or "podman"
#: (Podman's Docker-compatible service, started for the session).
TEST_ENGINE = os.environ.get("RUNNER_TEST_ENGINE", "local")


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerEngine]:
    """A reachable engine with the pinned image, or a skip (a failure in CI).

    ``RUNNER_TEST_ENGINE=dind`` (or ``podman``) runs the suite against a
    Docker-in-Docker engine (or a Podman service) started for the session
    (``tests/engines.py``): ``DOCKER_HOST`` points at it for the runner and for
    every caller process a test starts.
    """
    with contextlib.ExitStack() as stack:
        if TEST_ENGINE == "dind":
            from tests.engines import dind_engine

            os.environ["DOCKER_HOST"] = stack.enter_context(dind_engine())
        elif TEST_ENGINE == "podman":
            from tests.engines import podman_engine

            os.environ["DOCKER_HOST"] = stack.enter_context(podman_engine())
        elif TEST_ENGINE != "local":
            pytest.fail(f"unknown RUNNER_TEST_ENGINE {TEST_ENGINE!r}: local, dind or podman")
        try:
            engine = DockerEngine()
            engine.image_id(ExperimentDefaults().image)
        except ExperimentExecutionError as e:
            if IN_CI:
                pytest.fail(f"CI needs Docker and the sandbox image: {e}")
            pytest.skip(f"needs Docker and the sandbox image: {e}")
        yield engine
        # The session's support volume goes too: a test session leaves nothing of its own.
        for volume in engine.volumes(OURS):
            with contextlib.suppress(ExperimentExecutionError):
                engine.remove_volume(volume.name)
