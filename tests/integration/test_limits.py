"""Bounded runs: memory, processes, deadlines and output floods."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import RUNTIME, SPEC


def test_memory_cap_kills_and_says_so(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """Allocating past the memory cap ends in an OOM kill named in the result."""
    script = write_script(
        """
        blocks = []
        for _ in range(100):
            blocks.append(bytearray(16 * 1024 * 1024))  # touched: bytearray zero-fills
        print('{"success": true}')
        """
    )
    runner = ExperimentRunner(timeout=60, engine=engine, memory_limit="128m")
    result = runner.run(script, SPEC, 0)
    assert not result.success
    assert result.oom_killed
    assert not result.timed_out
    assert result.exit_code == 137
    assert "128m" in (result.error_message or "")


def test_pid_cap_stops_thread_bombs(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A script cannot start more tasks than pids_limit (gVisor: the bomb ends the sandbox)."""
    script = write_script(
        """
        import json, threading
        stop = threading.Event()
        started = 0
        try:
            for _ in range(500):
                threading.Thread(target=stop.wait, daemon=True).start()
                started += 1
        except RuntimeError as e:
            error = str(e)
        else:
            error = None
        stop.set()
        print(json.dumps({"success": True, "metrics": {"threads": started}, "error": error}))
        """
    )
    if RUNTIME == "runsc":
        # gVisor's threads are not host tasks: pids.max caps the sandbox's own host
        # threads. A bomb is bounded by the memory cap, and one that needs more host
        # threads than the cap allows ends the whole sandbox: either way it ends.
        result = ExperimentRunner(timeout=60, engine=engine).run(script, SPEC, 0)
        assert not result.timed_out
        assert result.exit_code is not None
        assert result.success or result.exit_code != 0
        return
    runner = ExperimentRunner(timeout=60, engine=engine, pids_limit=32)
    result = runner.run(script, SPEC, 0)
    assert result.success, result.error_message
    assert 0 < result.metrics["threads"] < 32
    assert "can't start new thread" in result.stdout


@pytest.mark.parametrize(
    "body",
    [
        "import time\ntime.sleep(600)\n",
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",
    ],
    ids=["sleeping", "ignoring-sigterm-and-spinning"],
)
def test_deadline_kills_the_container(
    engine: DockerEngine, write_script: Callable[..., Path], body: str
) -> None:
    """Past its timeout a script is killed, and run returns within timeout + 2 s."""
    script = write_script("print('started', flush=True)\n" + body)
    runner = ExperimentRunner(timeout=2, engine=engine)
    runner.backend.prepare()  # once per runner, before any deadline (a second on Podman)
    started = time.monotonic()
    result = runner.run(script, SPEC, 0)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert not result.success
    assert result.error_message == "Experiment timed out after 2 seconds"
    assert result.stdout == "started\n"  # output printed before the kill is kept
    assert elapsed < 2 + 2, elapsed


def test_output_flood_keeps_a_capped_tail(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """Tens of MB on both streams are capped to the tail; the final result still parses."""
    script = write_script(
        """
        import json, sys
        chunk = "x" * 1023 + "\\n"
        for _ in range(20 * 1024):
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        sys.stderr.write("stderr-end\\n")
        print(json.dumps({"success": True, "metrics": {"accuracy": 1.0}}))
        """
    )
    limit = 64 * 1024
    runner = ExperimentRunner(timeout=60, engine=engine, output_limit=limit)
    result = runner.run(script, SPEC, 0)
    assert result.success, result.error_message
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout.encode()) == limit
    assert len(result.stderr.encode()) == limit
    assert result.stderr.endswith("stderr-end\n")
    assert result.metrics == {"accuracy": 1.0}


def test_a_gigabyte_of_output_does_not_grow_the_runner(workdir: Path) -> None:
    """Streaming 1 GB of output raises the calling process's peak memory by only a few MB."""
    flood = workdir / "flood.py"
    flood.write_text(
        "import sys\nblock = b'y' * (1 << 20)\n"
        "for _ in range(1024):\n    sys.stdout.buffer.write(block)\n"
    )
    flood.chmod(0o644)
    caller = textwrap.dedent(
        f"""
        import json, resource
        from runner import ExperimentRunner
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        raw = ExperimentRunner(timeout=120).run_script_directly({str(flood)!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"growth_kb": after - before, "kept": len(raw["stdout"]),
                          "returncode": raw["returncode"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", caller], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["returncode"] == 0
    assert report["kept"] == 1024 * 1024
    assert report["growth_kb"] < 20 * 1024, report
