"""The lifeline: what a process made goes once the process is gone, nothing else does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.sandbox.lifeline import SOURCE, Lifeline, address_of, helpers, owned

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


def its_helper(line: Lifeline) -> list[int]:
    """The helper ``line`` started (this process may have another: the runner's own)."""
    assert line._helper is not None
    code = line.command[-1].encode()
    found = []
    for pid in helpers(os.getpid()):
        with contextlib.suppress(OSError):
            if code + b"\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    assert len(found) == 1, found
    return found


def end_of(line: Lifeline) -> None:
    """This process's end, as the helper sees it: the pipe closes; then the helper is gone."""
    started = line._helper
    assert started is not None and started.stdin is not None
    started.wait(timeout=30)  # what was started exits at once: the helper is its child
    found = its_helper(line)
    started.stdin.close()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{found[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{found[0]}").exists()


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


def test_a_caller_whose_children_are_killed_as_it_ends_still_has_its_lifeline(
    tmp_path: Path,
) -> None:
    """A Ray worker that exits kills its children first: the helper is none of them (its
    grandchild, reparented), so what the worker left is still removed."""
    log = tmp_path / "log"
    package = tmp_path / "fake" / "docker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_DOCKER)
    (package / "errors.py").write_text("from docker import NotFound\n")
    caller = textwrap.dedent(
        f"""
        import os, signal, sys, textwrap
        from runner.sandbox.lifeline import SOURCE, Lifeline
        boot = "import sys; sys.path.insert(0, {str(package.parent)!r})\\n"
        line = Lifeline([sys.executable, "-c", boot + textwrap.dedent(SOURCE)])
        line.hold({{"base_url": "unix:///run/engine.sock"}}, "c", "c1")
        line._helper.wait(timeout=30)
        for entry in os.listdir("/proc"):  # as Ray's KillChildProcs: every child, SIGKILL
            try:
                with open(f"/proc/{{entry}}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if parent == os.getpid():
                os.kill(int(entry), signal.SIGKILL)
        print("ended", flush=True)
        """
    )
    env = {**os.environ, "FAKE_DOCKER_LOG": str(log)}
    done = subprocess.run(
        [sys.executable, "-c", caller], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ended\n"
    deadline = time.monotonic() + 30
    while not (log.exists() and "container c1" in log.read_text()):
        assert time.monotonic() < deadline, "the helper did not remove what was left"
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["connect unix:///run/engine.sock", "container c1"]


def test_the_helper_ignores_the_signals_of_a_terminal() -> None:
    """SIGINT, SIGHUP and SIGTERM to the helper leave it watching (only the pipe ends it)."""
    line = Lifeline([sys.executable, "-I", "-c", SOURCE + "\n# the signals test's\n"])
    line.hold({"base_url": "unix:///nonexistent.sock"}, "c", "c1")
    assert line._helper is not None and line._helper.stdin is not None
    line._helper.wait(timeout=30)
    (helper,) = its_helper(line)
    time.sleep(0.5)  # its handlers are set before it forks: the grandchild has them
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        os.kill(helper, sig)
    time.sleep(0.3)
    assert Path(f"/proc/{helper}").exists()
    line._helper.stdin.close()  # an engine it cannot reach: it gives up and exits
    deadline = time.monotonic() + 30
    while Path(f"/proc/{helper}").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
