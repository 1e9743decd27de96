"""The lifeline: what a process made goes once the process is gone, nothing else does."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.sandbox.lifeline import SOURCE, Lifeline, address_of, owned

#: A stand-in for docker-py that writes down what the helper asks of the engine.
FAKE_DOCKER = """
import os

LOG = os.environ["FAKE_DOCKER_LOG"]


class NotFound(Exception):
    pass


def _note(*words):
    with open(LOG, "a") as log:
        log.write(" ".join(words) + "\\n")


class APIClient:
    def __init__(self, base_url, tls=None, timeout=None):
        _note("connect", base_url)

    def ping(self):
        return True

    def remove_container(self, ident, force, v):
        _note("container", ident)

    def remove_volume(self, ident, force):
        _note("volume", ident)


class _Errors:
    NotFound = NotFound


errors = _Errors()
tls = None
"""


def helper_with_fake_docker(tmp_path: Path) -> tuple[Lifeline, Path]:
    package = tmp_path / "fake" / "docker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_DOCKER)
    (package / "errors.py").write_text("from docker import NotFound\n")
    log = tmp_path / "log"
    boot = f"import sys; sys.path.insert(0, {str(package.parent)!r})\n" + textwrap.dedent(SOURCE)
    line = Lifeline([sys.executable, "-c", boot])
    return line, log


def end_of(line: Lifeline) -> None:
    """This process's end, as the helper sees it: the pipe closes."""
    helper = line._helper
    assert helper is not None and helper.stdin is not None
    helper.stdin.close()
    helper.wait(timeout=30)


def test_what_is_left_at_the_end_is_removed_containers_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line, log = helper_with_fake_docker(tmp_path)
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    engine = {"base_url": "unix:///run/engine.sock"}
    line.hold(engine, "v", "vol1")
    line.hold(engine, "c", "c1")
    line.hold(engine, "c", "c2")
    line.release(engine, "c", "c2")  # removed by the process itself
    end_of(line)
    assert log.read_text().splitlines() == [
        "connect unix:///run/engine.sock",
        "container c1",
        "volume vol1",
    ]


def test_a_process_that_removed_everything_leaves_the_engine_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing left: the helper exits without even connecting (or importing docker-py)."""
    line, log = helper_with_fake_docker(tmp_path)
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    engine = {"base_url": "tcp://10.0.0.1:2376"}
    line.hold(engine, "c", "c1")
    line.release(engine, "c", "c1")
    end_of(line)
    assert not log.exists()


def test_only_what_carries_an_owner_is_announced() -> None:
    """A caller's containers and volumes carry their owner; the shared support volume not."""
    assert owned({"io.experiment-runner.owner": "host:1:2"})
    assert not owned({"io.experiment-runner.managed": "support"})
    assert not owned(None)


def test_the_engines_address_is_the_socket_docker_py_connects_to() -> None:
    unix = SimpleNamespace(
        base_url="http+docker://localhost",
        _custom_adapter=SimpleNamespace(socket_path="/var/run/docker.sock"),
    )
    assert address_of(unix) == {"base_url": "unix:///var/run/docker.sock"}
    tcp = SimpleNamespace(base_url="https://10.0.0.2:2376", cert=("c.pem", "k.pem"), verify="ca")
    assert address_of(tcp) == {
        "base_url": "https://10.0.0.2:2376",
        "tls": {"cert": ["c.pem", "k.pem"], "ca": "ca", "verify": True},
    }
