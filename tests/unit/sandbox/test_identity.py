import os
from pathlib import Path

from runner.sandbox.identity import UID_COUNT, UID_FIRST, lease_uid, release_stale


def test_live_leases_never_share_a_uid(tmp_path: Path) -> None:
    """Many leases held at once each get a different user ID, all in the sandbox range."""
    leases = [lease_uid(tmp_path) for _ in range(200)]
    uids = [lease.uid for lease in leases]
    assert len(set(uids)) == len(uids)
    assert all(UID_FIRST <= uid < UID_FIRST + UID_COUNT for uid in uids)
    for lease in leases:
        lease.release()


def test_a_held_uid_is_skipped_and_a_released_one_freed(tmp_path: Path, monkeypatch) -> None:
    """A user ID another holder has locked is not handed out again until released."""
    draws = iter([UID_FIRST + 1, UID_FIRST + 1, UID_FIRST + 2, UID_FIRST + 1])
    monkeypatch.setattr("runner.sandbox.identity._draw", lambda: next(draws))
    first = lease_uid(tmp_path)
    second = lease_uid(tmp_path)
    assert (first.uid, second.uid) == (UID_FIRST + 1, UID_FIRST + 2)
    first.release()
    assert not (tmp_path / f"{UID_FIRST + 1}.lock").exists()
    assert lease_uid(tmp_path).uid == UID_FIRST + 1


def test_lease_directory_is_shared_by_every_user(tmp_path: Path) -> None:
    """The lease directory is world-writable and sticky, like /tmp."""
    directory = tmp_path / "uids"
    lease_uid(directory).release()
    assert directory.stat().st_mode & 0o7777 == 0o1777


def test_an_unusable_lease_directory_still_gives_a_sandbox_uid(tmp_path: Path) -> None:
    """Without a usable lease directory the ID is drawn at random, never root or 10001."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    lease = lease_uid(blocker)
    assert UID_FIRST <= lease.uid < UID_FIRST + UID_COUNT
    lease.release()
    lease.release()  # releasing twice is harmless
    assert os.geteuid() != lease.uid


def test_stale_leases_are_removed_and_held_ones_kept(tmp_path: Path) -> None:
    """A lease file nobody holds (its caller was killed) goes; a held one stays."""
    held = lease_uid(tmp_path)
    (tmp_path / f"{UID_FIRST + 7}.lock").write_text("")  # left by a killed caller
    assert release_stale(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{held.uid}.lock"]
    held.release()
