"""Module paths from before the layers keep working (``runner._moved``)."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import pytest

from runner._moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_module_name_is_the_moved_module_itself(old: str, new: str) -> None:
    """Importing an old name gives the new module object, which keeps its own spec."""
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__ is not None and module.__spec__.name == new


def test_documented_imports_of_the_old_layout_work() -> None:
    """The imports the documentation showed still give the same objects."""
    from runner.engine import DockerEngine
    from runner.mcp_server import build_server

    from runner.image import build_image, build_user_image, verify_image
    from runner.sandbox.engine import DockerEngine as Moved

    assert DockerEngine is Moved
    assert callable(build_image) and callable(build_user_image) and callable(verify_image)
    assert callable(build_server)


def test_python_dash_m_runs_a_moved_module_by_its_old_name() -> None:
    """``python -m runner.lock`` finds the moved module's code (checked without running it)."""
    code = (
        "import importlib.util, sys; spec = importlib.util.find_spec('runner.lock'); "
        "sys.exit(0 if spec.loader.get_code('runner.lock') is not None else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
