"""Reading a directory tree nobody has checked: no symlink followed, no special file opened.

Both ways a run's files reach a sandbox other than a bind mount (the warm
pool's mirror and a copy through the engine's API) read the script's directory
on the host. Whatever it holds, they must show what a bind mount would show and
nothing more: a symlink is a symlink (its target text, never its target), a
device, FIFO or socket is never opened, and the walk is bounded.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal


class TreeRefused(Exception):
    """The tree holds something that cannot be shown exactly, or is over the limits."""


class TreeExpired(Exception):
    """The deadline passed while the tree was being read."""


@dataclass
class Budget:
    """What one walk may still read: entries, bytes of file content, time."""

    entries: int = 10_000
    bytes: int = 256 * 1024 * 1024
    deadline: float = float("inf")

    def entry(self) -> None:
        self.entries -= 1
        if self.entries < 0:
            raise TreeRefused("more files than the limit")
        self.check_time()

    def spend(self, count: int) -> None:
        self.bytes -= count
        if self.bytes < 0:
            raise TreeRefused("more bytes to copy than the limit")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TreeExpired


@dataclass(frozen=True)
class Entry:
    """One entry of the tree, read through its directory's descriptor."""

    path: PurePosixPath
    kind: Literal["dir", "file", "symlink"]
    stat: os.stat_result
    dir_fd: int
    name: str

    def link_target(self) -> str:
        return os.readlink(self.name, dir_fd=self.dir_fd)

    def open(self) -> int:
        """A descriptor of the regular file; refused if it changed into anything else."""
        # O_NONBLOCK: a file swapped for a FIFO meanwhile cannot make the open hang.
        fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise TreeRefused(f"{str(self.path)!r} is not a regular file")
        return fd


def walk(top: str | os.PathLike[str], budget: Budget) -> Iterator[Entry]:
    """Entries under ``top`` (a directory, not followed if a symlink), parents first.

    Raises ``TreeRefused`` at a device, FIFO or socket, or past the budget.
    """
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        yield from _walk(fd, PurePosixPath(), budget)
    finally:
        os.close(fd)


def _walk(dir_fd: int, here: PurePosixPath, budget: Budget) -> Iterator[Entry]:
    with os.scandir(dir_fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        budget.entry()
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        path = here / name
        if stat.S_ISLNK(st.st_mode):
            yield Entry(path, "symlink", st, dir_fd, name)
        elif stat.S_ISREG(st.st_mode):
            yield Entry(path, "file", st, dir_fd, name)
        elif stat.S_ISDIR(st.st_mode):
            yield Entry(path, "dir", st, dir_fd, name)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                yield from _walk(sub, path, budget)
            finally:
                os.close(sub)
        else:
            raise TreeRefused(f"{str(path)!r} is a device, FIFO or socket")


def read_chunks(fd: int, budget: Budget, size: int = 1024 * 1024) -> Iterator[bytes]:
    """The content of an open file, counted against the budget as it is read."""
    while chunk := os.read(fd, size):
        budget.spend(len(chunk))
        yield chunk
