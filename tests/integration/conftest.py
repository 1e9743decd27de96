"""Integration tests run real containers. Without Docker they skip; with CI=true they fail."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.engine import DockerEngine
from runner.sandbox import LABEL
from runner.settings import ExperimentDefaults

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The runtime this session of the suite runs under (RUNNER_RUNTIME picks it).
RUNTIME = ExperimentDefaults().runtime or "runc"
SPEC = ExperimentSpec(experiment_name="probe", model_type="LogisticRegression")
#: The engine the suites run against: "local" (default) or "dind" (Docker-in-Docker,
#: which cannot see this machine's files: every run's files are copied to it).
TEST_ENGINE = os.environ.get("RUNNER_TEST_ENGINE", "local")
LOCAL_ENGINE = TEST_ENGINE == "local"
#: For what only an engine on this machine offers (README: "Where the engine is").
needs_local_engine = pytest.mark.skipif(
    not LOCAL_ENGINE,
    reason="needs an engine that sees this machine's files and cgroups (the warm pool, "
    "telemetry, host cgroup files); documented as unavailable elsewhere",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerEngine]:
    """A reachable engine with the pinned image, or a skip (a failure in CI).

    ``RUNNER_TEST_ENGINE=dind`` runs the suite against a Docker-in-Docker engine
    started for the session (``tests/engines.py``): ``DOCKER_HOST`` points at it
    for the runner and for every caller process a test starts.
    """
    with contextlib.ExitStack() as stack:
        if TEST_ENGINE == "dind":
            from tests.engines import dind_engine

            os.environ["DOCKER_HOST"] = stack.enter_context(dind_engine())
        elif TEST_ENGINE != "local":
            pytest.fail(f"unknown RUNNER_TEST_ENGINE {TEST_ENGINE!r}: local or dind")
        try:
            engine = DockerEngine()
            engine.image_id(ExperimentDefaults().image)
        except ExperimentExecutionError as e:
            if IN_CI:
                pytest.fail(f"CI needs Docker and the sandbox image: {e}")
            pytest.skip(f"needs Docker and the sandbox image: {e}")
        yield engine


@pytest.fixture(autouse=True)
def no_leftover_containers(engine: DockerEngine) -> Iterator[None]:
    """Every integration test must leave no project container or volume behind."""
    yield
    left = engine.containers(f"{LABEL}=1")
    for container in left:
        engine.remove(container.id)
    volumes = engine.volumes(f"{LABEL}=1")
    for volume in volumes:
        engine.remove_volume(volume.name)
    assert left == [], f"containers left behind: {[c.name for c in left]}"
    assert volumes == [], f"volumes left behind: {[v.name for v in volumes]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory the sandbox's non-root user can read (tmp_path itself is 0700)."""
    directory = tmp_path / "exp"
    directory.mkdir()
    directory.chmod(0o755)
    return directory


@pytest.fixture
def write_script(workdir: Path) -> Callable[..., Path]:
    def write(code: str, name: str = "script.py") -> Path:
        path = workdir / name
        path.write_text(textwrap.dedent(code))
        path.chmod(0o644)
        return path

    return write


@pytest.fixture
def runner(engine: DockerEngine) -> ExperimentRunner:
    return ExperimentRunner(timeout=30, engine=engine)
