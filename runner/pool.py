"""A pool of single-use warm containers: started ahead, libraries imported, used once.

Each slot is a container with every control of a cold run, plus its own host
directory mounted read-only at the pool root (the experiments directory). To
hand a script over, the runner links (or copies) the script's directory into
the slot's directory, so inside the container it appears at its own absolute
path, and writes the path to the container's stdin. After the run the container
is removed, never reused; a background thread starts replacements.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.bootstrap import READY
from runner.engine import OutputStream
from runner.exceptions import ExperimentExecutionError


@dataclass
class Slot:
    """One started pool container, waiting for a script."""

    container_id: str
    host_dir: Path
    stream: OutputStream
    frames: Iterator[tuple[bytes | None, bytes | None]]
    cgroup_parent: str | None
    cpu_before: float = 0.0
    staged: list[Path] = field(default_factory=list)


class _Remainder:
    """The rest of a slot's output stream, after the ready line was consumed."""

    def __init__(self, slot: Slot) -> None:
        self._slot = slot

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        return self._slot.frames

    def close(self) -> None:
        self._slot.stream.close()


def remainder(slot: Slot) -> OutputStream:
    return _Remainder(slot)


def wait_ready(slot: Slot) -> bool:
    """Read the slot's output until the bootstrap says it is ready; False if it died."""
    pending = b""
    for out, _err in slot.frames:
        pending += out or b""
        if READY in pending:
            return True
        if len(pending) > 4096:
            return False
    return False


def stage(source_dir: Path, root: Path, slot_dir: Path) -> Path:
    """Mirror ``source_dir`` (under ``root``) into ``slot_dir``, by hard link where possible."""
    target = slot_dir / source_dir.relative_to(root)
    for directory, subdirs, files in os.walk(source_dir):
        here = Path(directory)
        destination = target / here.relative_to(source_dir)
        destination.mkdir(parents=True, exist_ok=True)
        destination.chmod(here.stat().st_mode & 0o7777)
        for name in files:
            try:
                os.link(here / name, destination / name)
            except OSError:
                shutil.copy2(here / name, destination / name)
        subdirs[:] = [d for d in subdirs if not (here / d).is_symlink()]
    for parent in target.relative_to(slot_dir).parents:
        (slot_dir / parent).chmod(0o755)  # the way down must be open to the sandbox user
    return target


class WarmPool:
    """Keeps ``size`` started slots ready; ``take`` hands one out, never twice."""

    def __init__(
        self, size: int, create_slot: Callable[[], Slot], destroy_slot: Callable[[Slot], None]
    ) -> None:
        self.size = size
        self._create = create_slot
        self._destroy = destroy_slot
        self._ready: list[Slot] = []
        self._starting = 0
        self._lock = threading.Condition()
        self._closed = False
        self.error: ExperimentExecutionError | None = None
        self._threads: list[threading.Thread] = []
        self._refill()

    def take(self) -> Slot | None:
        """A ready slot, or None when none is ready (the caller then runs cold)."""
        with self._lock:
            slot = self._ready.pop(0) if self._ready else None
        self._refill()
        return slot

    def wait_ready(self, timeout: float) -> bool:
        """Block until the pool is full (or closed, or failing); True when full."""
        with self._lock:
            return (
                self._lock.wait_for(
                    lambda: len(self._ready) >= self.size or self._closed or self.error is not None,
                    timeout,
                )
                and len(self._ready) >= self.size
            )

    def close(self) -> None:
        """Stop refilling and destroy every slot; returns once nothing is left."""
        with self._lock:
            self._closed = True
            slots, self._ready = self._ready, []
            self._lock.notify_all()
        for slot in slots:
            self._destroy(slot)
        for thread in self._threads:
            thread.join(timeout=60)

    def _refill(self) -> None:
        with self._lock:
            if self._closed:
                return
            missing = self.size - len(self._ready) - self._starting
            self._starting += max(missing, 0)
            self._threads = [t for t in self._threads if t.is_alive()]
            for _ in range(max(missing, 0)):
                thread = threading.Thread(target=self._start_one, name="runner-pool", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _start_one(self) -> None:
        slot: Slot | None = None
        try:
            slot = self._create()
            ok = wait_ready(slot)
        except ExperimentExecutionError as e:
            ok = False
            self.error = e
        with self._lock:
            self._starting -= 1
            keep = ok and slot is not None and not self._closed
            if keep and slot is not None:
                self._ready.append(slot)
            self._lock.notify_all()
        if slot is not None and not keep:
            self._destroy(slot)


def new_slot_dir(base: Path) -> Path:
    directory = base / uuid.uuid4().hex
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    return directory
