"""Files over the engine's API: a copied run sees what a bind-mounted one sees, read-only."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import SPEC, needs_local_engine

PROBE = """
import json, os
def attempt(fn):
    try:
        return fn()
    except OSError as e:
        return type(e).__name__
print(json.dumps({
    "cwd": os.getcwd(),
    "listing": sorted(os.listdir(".")),
    "data": open("data.csv").read(),
    "input": open(INPUT).read(),
    "link": os.readlink("secret"),
    "through_link": attempt(lambda: open("secret").read()),
    "write": attempt(lambda: open("new.txt", "w")),
    "success": True,
}))
"""


@pytest.fixture
def private_experiment(tmp_path: Path) -> Callable[[], tuple[Path, Path]]:
    """A script in a 0700 directory with a 0600 data file, a symlink out, and an input."""

    def make() -> tuple[Path, Path]:
        directory = tmp_path / "private-exp"
        directory.mkdir(mode=0o700)
        (directory / "data.csv").write_text("a,b\n1,2\n")
        (directory / "data.csv").chmod(0o600)
        (directory / "secret").symlink_to(tmp_path / "host-secret.txt")
        (tmp_path / "host-secret.txt").write_text("host secret")
        train = tmp_path / "inputs" / "train.csv"
        train.parent.mkdir(mode=0o700)
        train.write_text("x\n3\n")
        train.chmod(0o600)
        script = directory / "experiment.py"
        script.write_text(textwrap.dedent(PROBE).replace("INPUT", repr(str(train))))
        return script, train

    return make


def test_a_private_directory_just_works(
    engine: DockerEngine, private_experiment: Callable[[], tuple[Path, Path]]
) -> None:
    """0700 directories and 0600 files run as they are: copied, read-only, at their paths."""
    script, train = private_experiment()
    result = ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0, inputs=[train])
    assert result.success, result.error_message + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["cwd"] == str(script.parent)
    assert seen["listing"] == ["data.csv", "experiment.py", "secret"]
    assert seen["data"] == "a,b\n1,2\n"
    assert seen["input"] == "x\n3\n"
    # The symlink is a symlink: its target is not on the sandbox's side.
    assert seen["link"] == str(script.parent.parent / "host-secret.txt")
    assert seen["through_link"] == "FileNotFoundError"
    assert seen["write"] in ("OSError", "PermissionError")  # EROFS


@needs_local_engine
def test_copy_and_bind_show_the_same_files(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """transfer='copy' on the local engine gives the script the view a bind mount gives."""
    script = write_script(
        """
        import json, os
        print(json.dumps({"cwd": os.getcwd(), "files": sorted(os.listdir(".")),
                          "me": open(__file__).read()[:12], "success": True}))
        """
    )
    views = []
    for transfer in ("bind", "copy"):
        runner = ExperimentRunner(timeout=30, engine=engine, transfer=transfer)
        result = runner.run(script, SPEC, 0)
        assert result.success, result.error_message
        views.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert views[0] == views[1]
