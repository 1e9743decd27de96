"""Integration tests run real containers. Without Docker they skip; with CI=true they fail."""

from __future__ import annotations

import itertools
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner import ExperimentRunner, ExperimentSpec
from runner.core.settings import ExperimentDefaults
from runner.sandbox.engine import DockerEngine
from tests.conftest import TEST_ENGINE, our_containers, our_volumes

#: Run first in a caller the tests interrupt: SIGINT raises KeyboardInterrupt again. A
#: shell that started the test run in the background (no job control) leaves SIGINT
#: ignored, every child inherits that, and Python keeps an inherited SIG_IGN.
INTERRUPTIBLE = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"


def interruptible_cli(*args: str) -> list[str]:
    """The command line of ``python -m runner ARGS`` that Ctrl-C interrupts (``INTERRUPTIBLE``)."""
    code = (
        INTERRUPTIBLE
        + "import runpy\nrunpy.run_module('runner', run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code, *args]


#: This checkout: the caller's own files, which no sandbox may see (unless it holds the
#: test's files, which it never does: they are below the temporary directory).
CHECKOUT = Path(__file__).resolve().parents[2]


def ways_down(directory: Path) -> dict[str, list[str]]:
    """Each directory on the way from ``/`` down to ``directory`` (``/`` left out), and
    the one entry a sandbox that mounts ``directory`` may see in it: the next step."""
    steps = [directory, *directory.parents][::-1][1:]
    return {str(here): [below.name] for here, below in itertools.pairwise(steps)}


#: The runtime this session of the suite runs under (RUNNER_RUNTIME picks it).
RUNTIME = ExperimentDefaults().runtime or "runc"
SPEC = ExperimentSpec(experiment_name="probe", model_type="LogisticRegression")
#: The engine runs on this machine (Docker here, or the Podman service the tests start).
LOCAL_ENGINE = TEST_ENGINE in ("local", "podman")
#: Constant variables Podman puts in every container's environment (nothing of the caller's).
ENGINE_ENVIRONMENT = {"container": "podman", "TERM": "xterm"} if TEST_ENGINE == "podman" else {}
#: The init process the engine runs as PID 1 (tini as Docker names it, or catatonit).
INIT_COMMANDS = {"/sbin/docker-init", "/run/podman-init"}
#: For what only an engine on this machine offers (README: "Where the engine is").
needs_local_engine = pytest.mark.skipif(
    not LOCAL_ENGINE,
    reason="needs an engine that sees this machine's files and cgroups (bind mounts, "
    "telemetry, host cgroup files); documented as unavailable elsewhere",
)


#: Tests of the image and the host side, not of the engine or the runtime (building
#: user images, scikit-learn's gallery): they run in the first pass only, the runc pass
#: on the local engine, which keeps the whole CI run short.
run_once = pytest.mark.skipif(
    not (TEST_ENGINE == "local" and RUNTIME == "runc"),
    reason="tests the image, not the engine or runtime: runs in the runc pass on the "
    "local engine only",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


#: Seconds a run's container may take to go after its result (removed in the background).
REMOVAL_GRACE = 30.0
#: Seconds more for a container the engine is removing still (a loaded engine can take
#: that long to kill and unmount one): the runner did its part, the engine finishes it.
ENGINE_REMOVAL_GRACE = 120.0


@pytest.fixture(autouse=True)
def no_leftover_containers(engine: DockerEngine) -> Iterator[None]:
    """Every integration test must leave no project container or volume behind (once the
    removals its runs left to the background are done: seconds at most)."""
    yield
    deadline = time.monotonic() + REMOVAL_GRACE
    while (our_containers(engine) or our_volumes(engine)) and time.monotonic() < deadline:
        time.sleep(0.1)
    removing = time.monotonic()
    deadline = removing + ENGINE_REMOVAL_GRACE
    while (
        any(c.status == "Removal In Progress" for c in our_containers(engine))
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    if time.monotonic() - removing > 1:
        warnings.warn(
            f"the engine took {REMOVAL_GRACE + time.monotonic() - removing:.0f} s to remove "
            "a container after the test",
            stacklevel=1,
        )
    left = our_containers(engine)
    for container in left:
        engine.remove(container.id)
    volumes = our_volumes(engine)
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
