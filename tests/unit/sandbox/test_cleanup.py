import os
import socket
import time
from pathlib import Path

import pytest

from runner.sandbox.cleanup import (
    LABEL,
    LABEL_DEADLINE,
    LABEL_GROUP,
    LABEL_OWNER,
    build_labels,
    cleanup,
    is_abandoned,
    owner_label,
    remove_stale_slot_dirs,
)
from runner.sandbox.engine import ContainerInfo
from tests.unit.fakes import FakeEngine

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


def test_stale_slot_directories_go_and_used_or_young_ones_stay(tmp_path: Path) -> None:
    """Slot directories no container uses are removed, unless just made."""
    old = time.time() - 3600
    for name in ("stale", "used", "young"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    for name in ("stale", "used"):
        os.utime(tmp_path / name, (old, old))
    assert remove_stale_slot_dirs(tmp_path, {"used"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used", "young"]


def test_slot_cleanup_never_follows_a_symlink(tmp_path: Path) -> None:
    """A symlink in the pool directory is not a slot: neither it nor its target is removed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "link").symlink_to(outside)
    old = time.time() - 3600
    os.utime(pool / "link", (old, old), follow_symlinks=False)
    remove_stale_slot_dirs(pool, set())
    assert (outside / "keep").exists()


def test_a_group_cleans_up_its_own_runs_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With RUNNER_GROUP, everything made carries it, and cleanup (even everything=True)
    removes that group's containers alone: another's, or a user's without a group, stay."""
    monkeypatch.setenv("RUNNER_GROUP", "ci-job-7")
    assert build_labels(0)[LABEL_GROUP] == "ci-job-7"
    live = {LABEL: "1", LABEL_OWNER: owner_label(), LABEL_DEADLINE: FUTURE}
    engine = FakeEngine(
        listed=[
            ContainerInfo("mine", "a", "Up", {**live, LABEL_GROUP: "ci-job-7"}),
            ContainerInfo("theirs", "b", "Up", {**live, LABEL_GROUP: "ci-job-8"}),
            ContainerInfo("users", "c", "Up", live),
        ]
    )
    removed = cleanup(engine, everything=True, slots_dir=tmp_path)
    assert [c.id for c in removed] == ["mine"] and engine.removed == ["mine"]
    assert [
        c.id for c in cleanup(engine, everything=True, group="ci-job-8", slots_dir=tmp_path)
    ] == ["theirs"]


def test_a_group_name_must_be_label_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group that could not be a label value or part of a volume's name is refused."""
    monkeypatch.setenv("RUNNER_GROUP", "bad group/../x")
    with pytest.raises(ValueError, match="group"):
        build_labels(0)
