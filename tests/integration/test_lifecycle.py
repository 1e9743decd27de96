"""Containers never outlive their run: Ctrl-C, a crashed caller, and `runner cleanup`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from runner import ExperimentDefaults, ExperimentRunner, cleanup
from runner.sandbox import lifeline
from runner.sandbox.cleanup import (
    LABEL,
    LABEL_DEADLINE,
    LABEL_GROUP,
    LABEL_OWNER,
    process_start_time,
)
from runner.sandbox.engine import ContainerInfo, DockerEngine
from runner.sandbox.support import SUPPORT_AT
from tests.conftest import OURS, our_containers, our_volumes
from tests.integration.conftest import INTERRUPTIBLE, LOCAL_ENGINE, SPEC


def wait_for_container(engine: DockerEngine, timeout: float = 30) -> ContainerInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [c for c in our_containers(engine) if c.status.startswith("Up")]
        if running:
            return running[0]
        time.sleep(0.1)
    raise AssertionError("no sandbox container started")


def spawn(code: str) -> subprocess.Popen[str]:
    """A separate caller process running ``code`` (dedented), its output piped.

    SIGINT is set back to raising KeyboardInterrupt: a shell that started the test
    run in the background leaves it ignored, and Python keeps an inherited SIG_IGN.
    """
    return subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE + textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill_with_lifeline(process: subprocess.Popen[str]) -> None:
    """SIGKILL a caller and its lifeline helper (``runner.sandbox.lifeline``) together, as
    a crash of the whole machine would: what it made stays for the sweeps to find."""
    for helper in lifeline.helpers(process.pid):
        os.kill(helper, signal.SIGKILL)
    process.kill()
    process.wait(timeout=30)


def wait_until_none_left(engine: DockerEngine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (our_containers(engine) or our_volumes(engine)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert our_containers(engine) == []
    assert our_volumes(engine) == []


def caller(script: Path) -> subprocess.Popen[str]:
    return spawn(
        f"""
        from runner import ExperimentRunner
        ExperimentRunner(timeout=120).run_script_directly({str(script)!r})
        """
    )


def test_ctrl_c_removes_the_container(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """SIGINT to a caller mid-run removes its container before the caller exits."""
    process = caller(write_script("import time\ntime.sleep(600)\n"))
    wait_for_container(engine)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert our_containers(engine) == []


def test_cleanup_removes_what_a_killed_caller_left(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """After a caller is SIGKILLed with its lifeline, `runner cleanup` removes its orphaned
    container."""
    process = caller(write_script("import time\ntime.sleep(600)\n"))
    orphan = wait_for_container(engine)
    kill_with_lifeline(process)
    assert [c.id for c in our_containers(engine)] == [orphan.id]
    out = subprocess.run(
        [sys.executable, "-m", "runner", "cleanup"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"removed {orphan.name}" in out.stdout
    assert "1 container(s) removed" in out.stdout
    assert our_containers(engine) == []


def test_a_caller_killed_mid_run_takes_its_container_with_it(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """SIGKILL (no handler runs) to a caller mid-run: its lifeline removes the container."""
    process = caller(write_script("import time\ntime.sleep(600)\n"))
    wait_for_container(engine)
    process.kill()
    process.wait(timeout=30)
    wait_until_none_left(engine)


def test_a_caller_killed_right_after_a_result_leaves_no_container(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """The result returns before the container is removed; SIGKILL right after it still
    leaves nothing (the removal the background thread had no time for, the lifeline does)."""
    script = write_script("import json\nprint(json.dumps({'success': True}))\n")
    process = spawn(
        f"""
        import os, signal
        from runner import ExperimentRunner, ExperimentSpec
        runner = ExperimentRunner(timeout=60)
        spec = ExperimentSpec(experiment_name="x", model_type="SVC")
        result = runner.run({str(script)!r}, spec, 0)
        print(result.success, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err
    assert out.strip() == "True", err
    wait_until_none_left(engine)


def test_cleanup_leaves_runs_in_progress_alone(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """cleanup() does not touch the container of a live run in this process."""
    script = write_script(
        "import time, json\ntime.sleep(3)\nprint(json.dumps({'success': True}))\n"
    )
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            ExperimentRunner(timeout=60, engine=engine).run(script, SPEC, 0)
        )
    )
    thread.start()
    live = wait_for_container(engine)
    assert cleanup(engine) == []
    assert [c.id for c in our_containers(engine)] == [live.id]
    thread.join(timeout=60)
    assert results and results[0].success


def test_orphan_stops_itself_and_the_next_runner_removes_it(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """With its caller (and lifeline) SIGKILLed, a container dies at its own deadline; a new
    runner sweeps it."""
    script = write_script("import time\ntime.sleep(600)\n")
    process = spawn(
        f"""
        from runner import ExperimentRunner
        ExperimentRunner(timeout=2).run_script_directly({str(script)!r})
        """
    )
    orphan = wait_for_container(engine)
    kill_with_lifeline(process)
    # The in-container deadline is the runner's timeout plus 10 s of grace.
    deadline = time.monotonic() + 20
    while engine.state(orphan.id).running and time.monotonic() < deadline:
        time.sleep(0.2)
    state = engine.state(orphan.id)
    assert not state.running
    assert state.exit_code == 137
    ExperimentRunner(timeout=30, engine=engine).run_script_directly(write_script("pass\n", "n.py"))
    assert our_containers(engine) == []


def test_cleanup_all_under_a_live_runner_costs_its_next_run_nothing(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """`runner cleanup --all` removes the shared support volume (the group's: the tests have
    one of their own); a live runner makes it again."""
    runner = ExperimentRunner(timeout=30, engine=engine)
    script = write_script("import json\nprint(json.dumps({'success': True}))\n")
    assert runner.run(script, SPEC, 0).success
    cleanup(engine, everything=True)
    assert support_volumes(engine) == []

    result = runner.run(script, SPEC, 1)

    assert result.success, result.error_message
    assert len(support_volumes(engine)) == 1


def test_a_support_volume_in_place_is_read_back_not_written_again(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """Each new runner reads the support files back (in place on an engine that sees this
    machine's files, else through the engine's archive API, whose naming differs between
    engines) and, finding them as expected, writes nothing."""
    script = write_script("import json\nprint(json.dumps({'success': True}))\n")
    assert ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0).success
    written: list[str] = []
    helpers: list[str] = []
    put_archive, create = engine.put_archive, engine.create

    def spied_put(container_id: str, path: str, data: bytes | BinaryIO) -> None:
        written.append(path)
        put_archive(container_id, path, data)

    def spied_create(image: str, command: list[str], **config: Any) -> str:
        if any(m["Target"] == SUPPORT_AT for m in config.get("mounts") or []):
            helpers.append(image)
        return create(image, command, **config)

    engine.put_archive = spied_put  # type: ignore[method-assign]
    engine.create = spied_create  # type: ignore[method-assign]
    try:
        assert ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 1).success
    finally:
        del engine.put_archive, engine.create
    assert SUPPORT_AT not in written
    assert len(helpers) == (0 if LOCAL_ENGINE else 1)


def support_volumes(engine: DockerEngine) -> list[str]:
    """The support volumes of this session's group."""
    return [v.name for v in engine.volumes(OURS) if v.labels.get(LABEL) == "support"]


def test_the_suites_cleanup_leaves_other_peoples_runs_alone(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A run someone else has going on the same engine (their own process, no group or
    another's) survives `cleanup --all` of the suite's group, and the suite's own checks."""
    image_id = engine.image_id(ExperimentDefaults().image)
    owner = subprocess.Popen(["sleep", "120"])  # their caller, alive
    theirs: list[str] = []
    try:
        labels = {
            LABEL: "1",
            LABEL_OWNER: f"{socket.gethostname()}:{owner.pid}:{process_start_time(owner.pid)}",
            LABEL_DEADLINE: f"{time.time() + 600:.0f}",
        }
        for extra in ({}, {LABEL_GROUP: "someone-else"}):
            theirs.append(
                engine.create(image_id, ["true"], labels={**labels, **extra}, network_mode="none")
            )
        mine = ExperimentRunner(timeout=30, engine=engine)
        script = write_script("import json\nprint(json.dumps({'success': True}))\n")
        assert mine.run(script, SPEC, 0).success
        cleanup(engine, everything=True)
        command = [sys.executable, "-m", "runner", "cleanup", "--all"]
        assert (
            subprocess.run(command, capture_output=True, timeout=120, check=False).returncode == 0
        )
        left = {c.id for c in engine.containers(f"{LABEL}=1")}
        assert set(theirs) <= left
        assert our_containers(engine) == []
    finally:
        for container in theirs:
            engine.remove(container)
        owner.kill()
        owner.wait()
