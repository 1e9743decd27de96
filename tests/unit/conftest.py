from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.core.settings import ExperimentDefaults
from tests.unit.fakes import FakeEngine


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """An existing script in a directory the sandbox user could read."""
    directory = tmp_path / "exp"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    path = directory / "script.py"
    path.write_text("print('hi')\n")
    path.chmod(0o644)
    return path


@pytest.fixture(autouse=True)
def bind_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake engine stands for a local one: files are bind-mounted unless a test says not.

    (With "auto", every runner would first probe the engine with a container of its own.)
    """
    monkeypatch.setenv("RUNNER_TRANSFER", "bind")


@pytest.fixture
def warm_runner(tmp_path: Path) -> Iterator[tuple[ExperimentRunner, FakeEngine, Path]]:
    """A runner with a one-slot pool on the fake engine, and a script below its root."""
    engine = FakeEngine(wait_results=[0, 0])
    root = tmp_path / "experiments"
    script = root / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    runner = ExperimentRunner(
        timeout=5,
        engine=engine,
        warm_pool=1,
        pool_root=root,
        settings=ExperimentDefaults(cache_dir=tmp_path / "cache"),
    )
    assert runner.wait_for_warm(10)
    yield runner, engine, script
    runner.close()
