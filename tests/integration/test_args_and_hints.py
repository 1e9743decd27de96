"""Script arguments in a real sandbox, and the hints its real failures produce."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import SPEC

#: What a shell, a quoting bug or a line-based protocol would mangle.
AWKWARD_ARGS = [
    "--data", "train data.csv", "", "it's \"quoted\"", "$HOME `id` ; exit 1", "*", "-c",
    "line one\nline two", " ", "caf\u00e9 \u6570\u636e \U0001f600", "\\", "--",
]  # fmt: skip

PRINT_ARGV = "import json, sys\nprint(json.dumps({'success': True, 'argv': sys.argv[1:]}))\n"


def lines(message: str | None) -> list[str]:
    return (message or "").split("\n")


def test_arguments_reach_sys_argv_exactly(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """run(args=) and run_script_directly(args=) give the script exactly those sys.argv[1:]."""
    script = write_script(PRINT_ARGV)
    result = runner.run(script, SPEC, 0, args=AWKWARD_ARGS)
    assert result.success, result.error_message
    assert json.loads(result.stdout)["argv"] == AWKWARD_ARGS
    raw = runner.run_script_directly(script, args=["--data", "train.csv"])
    assert json.loads(raw["stdout"])["argv"] == ["--data", "train.csv"]


def test_argparse_script_gets_its_options(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """A script with argparse (--data FILE) runs with its options instead of exiting 2."""
    script = write_script(
        """
        import argparse, json
        parser = argparse.ArgumentParser()
        parser.add_argument("--data", required=True)
        parser.add_argument("--n", type=int, default=1)
        options = parser.parse_args()
        print(json.dumps({"success": True, "metrics": {"n": options.n}, "data": options.data}))
        """
    )
    result = runner.run(script, SPEC, 0, args=["--data", "train.csv", "--n", "3"])
    assert result.success, result.error_message
    assert result.metrics == {"n": 3.0}


def test_writing_beside_the_script_hints_at_tmp(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """A write into the read-only script directory fails with the error, then a hint about /tmp."""
    script = write_script("import pickle\npickle.dump({'a': 1}, open('model.pkl', 'wb'))\n")
    result = runner.run(script, SPEC, 0)
    first, hint = lines(result.error_message)
    # gVisor answers a write into a read-only mount with EACCES rather than EROFS.
    assert first in (
        "Script exited with code 1: OSError: [Errno 30] Read-only file system: 'model.pkl'",
        "Script exited with code 1: PermissionError: [Errno 13] Permission denied: 'model.pkl'",
    )
    assert hint.startswith("Hint: the sandbox's file system is read-only apart from /tmp")


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.getaddrinfo('example.com', 443)\n",
        "import urllib.request\nurllib.request.urlopen('http://example.com/data.csv', timeout=5)\n",
        "import socket\nsocket.create_connection(('93.184.215.14', 80), timeout=5)\n",
        "from sklearn.datasets import fetch_openml\nfetch_openml('iris', version=1)\n",
    ],
    ids=["resolve", "urlopen", "connect-by-address", "fetch_openml"],
)
def test_network_use_hints_that_there_is_none(
    runner: ExperimentRunner, write_script: Callable[..., Path], code: str
) -> None:
    """Resolving a name or connecting fails inside the sandbox (no network); the hint says so."""
    result = runner.run(write_script(code), SPEC, 0)
    assert not result.success
    first, hint = lines(result.error_message)
    assert first.startswith("Script exited with code 1: ")
    assert hint.startswith("Hint: the sandbox has no network"), result.error_message
    assert "inputs=" in hint


def test_a_missing_module_hints_at_building_an_image(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """ModuleNotFoundError names the module and the image, and says how to build one with it."""
    result = runner.run(write_script("import xgboost\n"), SPEC, 0)
    first, hint = lines(result.error_message)
    assert first == "Script exited with code 1: ModuleNotFoundError: No module named 'xgboost'"
    assert f"no module 'xgboost' in the sandbox image {runner.policy.image}" in hint
    assert "runner image build --requirements FILE --tag NAME" in hint
    assert "runner run --image NAME" in hint


def test_a_file_outside_the_mounts_hints_at_inputs(
    runner: ExperimentRunner, write_script: Callable[..., Path], workdir: Path
) -> None:
    """Reading a host path the sandbox was not given hints at inputs=; a missing local file not."""
    outside = runner.run(write_script("open('/data/train.csv')\n"), SPEC, 0)
    first, hint = lines(outside.error_message)
    assert first.endswith("No such file or directory: '/data/train.csv'")
    assert hint.startswith("Hint: /data/train.csv is outside what the sandbox sees")
    beside = runner.run(write_script(f"open({str(workdir / 'missing.csv')!r})\n"), SPEC, 0)
    assert len(lines(beside.error_message)) == 1  # it is visible: simply not there


def test_no_result_line_says_what_to_print(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """A clean exit without a result line says what the script must print."""
    result = runner.run(write_script("print('accuracy: 0.9')\n"), SPEC, 0)
    first, hint = lines(result.error_message)
    assert first.startswith("Failed to parse JSON output: Expecting value")
    assert hint.startswith("Hint: a script reports its result as its last JSON object line")
    assert '{"success": True, "metrics": {"accuracy": 0.87}}' in hint


def test_run_script_directly_says_it_timed_out(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A script killed at its timeout comes back with a stderr line saying so."""
    runner = ExperimentRunner(timeout=2, engine=engine)
    raw = runner.run_script_directly(write_script("import time\ntime.sleep(60)\n"))
    assert raw["timed_out"] is True
    assert raw["stderr"].endswith("[runner] the script was killed at its timeout of 2 seconds\n")
