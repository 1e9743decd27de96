from pathlib import Path

import pytest


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
