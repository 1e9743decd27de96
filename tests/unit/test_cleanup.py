import os
import socket

from runner.cleanup import is_abandoned
from runner.sandbox import LABEL_DEADLINE, LABEL_OWNER, owner_label

FUTURE = "9999999999"


def test_container_of_a_live_caller_is_kept() -> None:
    """A run in progress in a live process is not cleaned up."""
    assert not is_abandoned({LABEL_OWNER: owner_label(), LABEL_DEADLINE: FUTURE})


def test_container_of_a_dead_caller_is_abandoned() -> None:
    """A container whose owning process is gone is abandoned."""
    labels = {LABEL_OWNER: f"{socket.gethostname()}:999999999:1", LABEL_DEADLINE: FUTURE}
    assert is_abandoned(labels)


def test_reused_pid_does_not_keep_a_container() -> None:
    """A live PID with a different start time is another process: abandoned."""
    labels = {LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}:1", LABEL_DEADLINE: FUTURE}
    assert is_abandoned(labels)


def test_past_deadline_is_abandoned_even_if_owner_lives() -> None:
    """Nothing outlives its deadline."""
    assert is_abandoned({LABEL_OWNER: owner_label(), LABEL_DEADLINE: "1"})


def test_other_hosts_containers_wait_for_their_deadline() -> None:
    """Another machine's live run (shared engine) is kept until its deadline."""
    assert not is_abandoned({LABEL_OWNER: "elsewhere:1:1", LABEL_DEADLINE: FUTURE})
