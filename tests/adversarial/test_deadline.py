"""Escaping the deadline: ignoring SIGTERM, sleeping, children and daemons left behind."""

from __future__ import annotations

import pytest

from tests.adversarial.conftest import Hostile, report


@pytest.mark.parametrize(
    "code",
    [
        "import time\ntime.sleep(600)\n",
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "import os, signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\nos.setsid()\nwhile True:\n    pass\n",
    ],
    ids=["sleeping", "sigterm-ignored", "all-signals-ignored-own-session"],
)
def test_a_script_that_will_not_stop_is_killed_at_the_deadline(hostile: Hostile, code: str) -> None:
    """Whatever the script does with signals, the container is SIGKILLed at the deadline."""
    result = hostile(code, timeout=3)
    assert result.timed_out
    assert result.error_message == "Experiment timed out after 3 seconds"


def test_children_left_running_do_not_keep_the_run_alive(hostile: Hostile) -> None:
    """A script that exits while its children run gets its result at once."""
    result = hostile(
        """
        import json, subprocess, sys
        for _ in range(3):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
        print(json.dumps({"success": True, "metrics": {"accuracy": 1.0}}))
        """,
        timeout=60,
    )
    assert result.success
    assert result.execution_time < 10


def test_double_forked_daemon_dies_with_the_run(hostile: Hostile) -> None:
    """A daemon (fork, setsid, fork) does not outlive the script's exit."""
    result = hostile(
        """
        import json, os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    time.sleep(0.1)
            os._exit(0)
        os.wait()
        print(json.dumps({"success": True}))
        """,
        timeout=60,
    )
    assert result.success
    assert result.execution_time < 10


def test_killing_its_own_watchdog_ends_the_run(hostile: Hostile) -> None:
    """Killing the in-container deadline (its parent) stops the container, not the limits."""
    result = hostile(
        """
        import os, signal, time
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(600)
        """,
        timeout=60,
    )
    assert not result.success
    assert not result.timed_out
    assert result.execution_time < 10


def test_killing_the_exit_recorder_is_reported_as_the_sandbox_ending_first(
    hostile: Hostile,
) -> None:
    """A script that kills the shell recording its exit gets no verdict of its own."""
    result = hostile(
        """
        import json, os, signal, time
        recorder = int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1])
        print(json.dumps({"success": True, "metrics": {"accuracy": 1.0}}), flush=True)
        os.kill(recorder, signal.SIGKILL)
        time.sleep(600)
        """,
        timeout=60,
    )
    assert not result.success
    assert not result.timed_out
    assert (result.error_message or "").startswith("The sandbox ended before the script did")
    assert result.execution_time < 10


def test_orphaned_children_are_reaped(hostile: Hostile) -> None:
    """Orphans that exit are reaped by the sandbox's init, not left as zombies."""
    result = hostile(
        """
        import json, os, time
        for _ in range(50):
            if os.fork() == 0:
                if os.fork() == 0:
                    os._exit(0)     # the grandchild exits at once, an orphan
                os._exit(0)
            os.wait()
        time.sleep(1)
        zombies = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                state = open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
                zombies += state == "Z"
            except OSError:
                pass
        print(json.dumps({"success": True, "zombies": zombies}))
        """
    )
    assert report(result)["zombies"] == 0
