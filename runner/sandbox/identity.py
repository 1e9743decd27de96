"""A user ID of its own for each sandbox, so that runs never share per-user kernel quotas.

The kernel counts some limits per user ID, not per container: inotify instances
and watches, ``RLIMIT_NPROC``, keys, POSIX message queues. Were every sandbox
the same user, one run could use up a quota that a concurrent run needs. So
each container runs as a user ID drawn from a range no account uses, and a
lease (an ``flock`` on a file named after it, in a directory every process on
this host shares) keeps two live containers of this host from drawing the same
one. The lease is held until the container is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import stat
import tempfile
from pathlib import Path

#: The sandbox user IDs: far above the accounts, system users and the
#: subordinate ranges (100000+) that rootless containers map.
UID_FIRST = 2_000_000_000
UID_COUNT = 1 << 20
#: Where the leases live: shared by every process on this host.
LEASE_DIR = Path(tempfile.gettempdir()) / "experiment-runner-uids"

_random = random.SystemRandom()


class UidLease:
    """One sandbox user ID, held until ``release()``."""

    def __init__(self, uid: int, fd: int | None, path: Path | None) -> None:
        self.uid = uid
        self._fd = fd
        self._path = path

    def release(self) -> None:
        """Give the ID back; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()  # while still locked: no one else can hold this file
        os.close(fd)


def lease_uid(directory: Path = LEASE_DIR, attempts: int = 64) -> UidLease:
    """A user ID no other live sandbox of this host holds.

    Where the lease directory cannot be used (say, another user made it
    private), the ID is drawn at random without a lease: with a million IDs,
    two concurrent runs meeting is still very unlikely.
    """
    if not _usable(directory):
        return UidLease(_draw(), None, None)
    for _ in range(attempts):
        uid = _draw()
        path = directory / f"{uid}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        if _lock_current(fd, path):
            return UidLease(uid, fd, path)
        os.close(fd)
    return UidLease(_draw(), None, None)


def release_stale(directory: Path = LEASE_DIR) -> int:
    """Remove lease files no one holds (left by callers that were killed); how many went."""
    removed = 0
    try:
        paths = list(directory.glob("*.lock"))
    except OSError:
        return 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # another user's, or gone already
        try:
            # Unlinked while locked, as a release does: a concurrent leaser who opened
            # it meanwhile sees the inode change and draws again.
            if _lock_current(fd, path):
                path.unlink()
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _lock_current(fd: int, path: Path) -> bool:
    """Lock ``fd`` without waiting; True only if no one holds it and it is still ``path``.

    A holder that released (unlinking the file) after we opened it leaves us a lock
    on an unlinked file, which guards nothing.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.fstat(fd).st_ino == path.lstat().st_ino
    except OSError:
        return False  # held by a live sandbox, or gone


def _draw() -> int:
    return UID_FIRST + _random.randrange(UID_COUNT)


def _usable(directory: Path) -> bool:
    try:
        directory.mkdir(mode=0o1777, exist_ok=True)
        st = directory.lstat()
        if not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o1777:
            directory.chmod(0o1777)  # shared by every user on the host, like /tmp
        return os.access(directory, os.W_OK | os.X_OK)
    except OSError:
        return False
