"""Resource exhaustion: memory, swap, processes, CPU, /tmp, /dev/shm, descriptors, huge files."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.adversarial.conftest import Hostile, report
from tests.integration.conftest import LOCAL_ENGINE, RUNTIME, SPEC

MIB = 1024 * 1024


def test_memory_hog_is_oom_killed(hostile: Hostile) -> None:
    """Allocating far past the cap ends in an OOM kill, reported as such."""
    result = hostile(
        "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 1024 * 1024))\n",
        memory_limit="192m",
    )
    assert not result.success
    assert not result.timed_out
    assert result.oom_killed
    assert "192m" in (result.error_message or "")


def test_no_swap_beyond_the_memory_cap(hostile: Hostile) -> None:
    """Memory plus swap never exceeds the cap: peak usage stays at the limit."""
    result = hostile(
        "blocks = []\nfor _ in range(40):\n    blocks.append(bytearray(16 * 1024 * 1024))\n",
        memory_limit="256m",
    )
    assert not result.success
    if LOCAL_ENGINE:  # telemetry comes from this machine's cgroups
        assert result.peak_memory_bytes is not None
        assert result.peak_memory_bytes <= 256 * MIB * 1.02


def test_fork_bomb_is_capped(hostile: Hostile) -> None:
    """Forking without end fails inside the script at the PID cap, under runc and gVisor."""
    result = hostile(
        """
        import json, os, time
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
        except OSError as e:
            print(json.dumps({"success": True, "children": children, "error": e.errno}))
        """,
        pids_limit=64,
        timeout=20,
    )
    seen = report(result)
    assert 8 < seen["children"] < 64
    assert seen["error"] == errno.EAGAIN
    assert result.success, result.error_message
    assert not result.timed_out


def test_thread_bomb_is_capped_inside_the_script(hostile: Hostile) -> None:
    """Starting threads without end fails inside the script at the cap; the script reports it."""
    result = hostile(
        """
        import json, threading, time
        threads = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                threads += 1
        except RuntimeError as e:
            print(json.dumps({"success": True, "threads": threads}))
        """,
        pids_limit=64,
        timeout=20,
    )
    assert result.success, result.error_message
    assert 8 < report(result)["threads"] < 64


def test_exhausting_a_per_user_quota_leaves_a_concurrent_run_alone(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """One run holding every inotify instance its user may have does not starve another run."""
    hog = write_script(
        """
        import ctypes, json, time
        libc = ctypes.CDLL(None, use_errno=True)
        held = 0
        while libc.inotify_init1(0) >= 0:
            held += 1
        time.sleep(6)  # the other run starts its inotify while these are held
        print(json.dumps({"success": True, "held": held}))
        """,
        "hog.py",
    )
    probe = write_script(
        """
        import ctypes, json, os, time
        time.sleep(3)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(0)
        errno = ctypes.get_errno()
        print(json.dumps({"success": True, "fd": fd, "errno": errno, "uid": os.getuid()}))
        """,
        "probe.py",
    )
    runner = ExperimentRunner(timeout=30, engine=engine)
    hogged, probed = runner.run_many([(hog, SPEC, 0), (probe, SPEC, 1)], max_workers=2)
    assert report(hogged)["held"] > 8
    seen = report(probed)
    assert seen["fd"] >= 0, f"inotify_init1 failed with errno {seen['errno']}"
    assert seen["uid"] not in (0, 10001)


def test_cpu_spin_on_every_core_is_held_to_the_quota(hostile: Hostile) -> None:
    """Spinning on four processes gets at most cpu_limit CPUs, and the deadline ends it."""
    result = hostile(
        """
        import multiprocessing
        def spin():
            while True:
                pass
        for _ in range(3):
            multiprocessing.Process(target=spin).start()
        spin()
        """,
        timeout=4,
        cpu_limit=0.5,
    )
    assert result.timed_out
    if LOCAL_ENGINE:  # telemetry comes from this machine's cgroups
        assert result.cpu_seconds is not None
        # Half a CPU for about four seconds, with slack for start-up and accounting.
        assert result.cpu_seconds <= 0.5 * result.execution_time * 1.25 + 0.3


FILL = """
import json, os
written = 0
try:
    with open({path!r}, "wb") as f:
        block = b"x" * (1024 * 1024)
        while True:
            f.write(block)
            f.flush()
            written += len(block)
except OSError as e:
    error = e.strerror
print(json.dumps({{"success": True, "written": written, "error": error}}))
"""


def test_filling_tmp_stops_at_its_size(hostile: Hostile) -> None:
    """Writing to /tmp fails with "No space left" at the tmpfs size."""
    result = hostile(FILL.format(path="/tmp/fill"), tmpfs_size="32m")
    seen = report(result)
    assert seen["error"] == "No space left on device"
    assert seen["written"] <= 32 * MIB


def test_filling_dev_shm_stops_at_its_size(hostile: Hostile) -> None:
    """/dev/shm is a small tmpfs too (64 MiB), counted against the memory cap."""
    result = hostile(FILL.format(path="/dev/shm/fill"))
    seen = report(result)
    assert seen["error"] == "No space left on device"
    assert seen["written"] <= 64 * MIB


def test_one_huge_sparse_file_cannot_grow_past_tmp(hostile: Hostile) -> None:
    """A 1 TB sparse file costs nothing; filling it stops at the tmpfs size."""
    result = hostile(
        """
        import json
        with open("/tmp/huge", "wb") as f:
            f.truncate(10**12)
        written = 0
        try:
            with open("/tmp/huge", "r+b") as f:
                while True:
                    f.write(b"y" * (1024 * 1024))
                    f.flush()
                    written += 1024 * 1024
        except OSError as e:
            error = e.strerror
        print(json.dumps({"success": True, "written": written, "error": error}))
        """,
        tmpfs_size="32m",
    )
    seen = report(result)
    assert seen["error"] == "No space left on device"
    assert seen["written"] <= 32 * MIB


def test_inode_exhaustion_in_tmp_is_bounded(hostile: Hostile) -> None:
    """Creating empty files stops at the tmpfs inode cap (16384; gVisor: memory or deadline)."""
    result = hostile(
        """
        import json, os
        made = 0
        try:
            while True:
                open(f"/tmp/f{made}", "w").close()
                made += 1
        except OSError as e:
            error = e.strerror
        print(json.dumps({"success": True, "made": made, "error": error}))
        """,
        timeout=10,
        memory_limit="256m",
    )
    if RUNTIME == "runsc":
        # gVisor's tmpfs does not enforce nr_inodes: its inodes live in the sandbox's
        # memory, so the memory cap or the deadline ends the run instead.
        assert not result.success or report(result)["made"] <= 16384
        return
    seen = report(result)
    assert seen["error"] == "No space left on device"
    assert seen["made"] <= 16384


def test_file_descriptor_exhaustion_stops_at_the_ulimit(hostile: Hostile) -> None:
    """Opening descriptors without end stops at 1024 (EMFILE)."""
    result = hostile(
        """
        import json, os
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            error = e.strerror
        print(json.dumps({"success": True, "fds": len(fds), "error": error}))
        """
    )
    seen = report(result)
    assert seen["error"] == "Too many open files"
    assert seen["fds"] <= 1024
