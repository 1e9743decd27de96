"""A pool of single-use warm containers: started ahead, libraries imported, used once.

Each slot is a container with every control of a cold run, plus its own host
directory mounted read-only at the pool root (the experiments directory). To
hand a script over, the runner links (or copies) the script's directory into
the slot's directory, so inside the container it appears at its own absolute
path, and writes the path to the container's stdin. After the run the container
is removed, never reused; a background thread starts replacements.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from runner.artifacts import OutputLimits
from runner.bootstrap import READY
from runner.cleanup import LABEL_SLOT, build_labels, deadline_after
from runner.engine import Engine
from runner.exceptions import ExperimentExecutionError
from runner.identity import lease_uid
from runner.lifecycle import Resources, Sandbox
from runner.sandbox import PodmanSupport, Run, SandboxPolicy, self_limited
from runner.telemetry import CgroupTelemetry
from runner.tree import Budget, Entry, TreeRefused, read_chunks, walk


@dataclass
class Slot:
    """One started pool container, waiting for a script, and its host directory."""

    sandbox: Sandbox
    host_dir: Path

    @property
    def image_id(self) -> str:
        """The image the container was created from: what a run in it reports."""
        return self.sandbox.image_id


@dataclass(frozen=True)
class SlotMaker:
    """Everything needed to start a pool container and to take it down again."""

    engine: Engine
    image: str
    policy: SandboxPolicy
    #: The command that preloads and waits (``python -c SOURCE modules...``).
    command: list[str]
    #: The directory the slot's host directory is mounted at, read-only.
    pool_root: Path
    #: Where the slots' host directories live.
    slots_dir: Path
    #: How long a slot may wait plus run, before it ends itself.
    lifetime: float
    telemetry: CgroupTelemetry | None = None
    user_kernel: bool = False
    #: Slots for runs with outputs (the bootstrap links the script's files in).
    outputs: OutputLimits | None = None
    podman: PodmanSupport | None = None

    def make(self) -> Slot:
        """Create, attach and start one slot (its readiness is read by ``wait_ready``)."""
        host_dir = new_slot_dir(self.slots_dir)
        resources = Resources(
            lease=lease_uid(),
            cgroup_parent=self.telemetry.new_parent() if self.telemetry is not None else None,
            telemetry=self.telemetry,
            extra=[lambda: shutil.rmtree(host_dir, ignore_errors=True)],
        )
        deadline = deadline_after(self.lifetime)
        run = Run(
            command=self_limited(self.command, self.lifetime, outputs=self.outputs),
            workdir=self.pool_root,
            read_only_paths=(),
            deadline=deadline,
            uid=resources.lease.uid,
            labels=build_labels(deadline, {LABEL_SLOT: host_dir.name}),
            cgroup_parent=resources.cgroup_parent,
            relocated=((host_dir, self.pool_root),),
            stdin_open=True,
            user_kernel=self.user_kernel,
            outputs=self.outputs,
            podman=self.podman,
        )
        try:
            image_id = self.engine.image_id(self.image)
        except BaseException:
            resources.release()
            raise
        sandbox = Sandbox.create(self.engine, image_id, self.policy, run, resources)
        try:
            sandbox.attach()
            sandbox.start()
        except BaseException:
            sandbox.destroy()
            raise
        return Slot(sandbox, host_dir)

    @staticmethod
    def drop(slot: Slot) -> None:
        slot.sandbox.destroy()


def wait_ready(slot: Slot) -> bool:
    """Read the slot's output until the bootstrap says it is ready; False if it died."""
    pending = b""
    for out, _err in slot.sandbox.frames:
        pending += out or b""
        if READY in pending:
            return True
        if len(pending) > 4096:
            return False
    return False


def stage(source_dir: Path, root: Path, slot_dir: Path, *, budget: Budget | None = None) -> Path:
    """Mirror ``source_dir`` (under ``root``) into ``slot_dir`` as a bind mount would show it.

    Regular files are hard-linked (copied where linking fails, say across
    filesystems), symlinks are recreated with the same target text, and
    directories keep their modes. Nothing on the host is read through a symlink
    and no device, FIFO or socket is opened (``runner.tree``): a directory that
    holds one, or is over ``budget``, raises ``TreeRefused`` (a cold run shows
    it exactly); past the budget's deadline, ``TreeExpired``.
    """
    budget = budget or Budget()
    target = slot_dir / source_dir.relative_to(root)
    target.mkdir(parents=True, exist_ok=True)
    directories = [(target, source_dir.lstat())]
    for entry in walk(source_dir, budget):
        here = target / entry.path
        if entry.kind == "symlink":
            # The target text only: it resolves inside the sandbox, as in a cold run.
            here.symlink_to(entry.link_target())
        elif entry.kind == "dir":
            here.mkdir()
            directories.append((here, entry.stat))
        else:
            _link_or_copy(entry, here, budget)
    for directory, st in reversed(directories):
        _copy_owner_and_mode(st, directory)
    for parent in target.relative_to(slot_dir).parents:
        (slot_dir / parent).chmod(0o755)  # the way down must be open to the sandbox user
    return target


def _link_or_copy(entry: Entry, here: Path, budget: Budget) -> None:
    try:
        # linkat() without AT_SYMLINK_FOLLOW: should the entry have become a symlink
        # meanwhile, the link is to the symlink itself, never to its target.
        os.link(entry.name, here, src_dir_fd=entry.dir_fd, follow_symlinks=False)
    except OSError:
        pass
    else:
        mode = here.lstat().st_mode
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            return
        here.unlink()
        raise TreeRefused(f"{str(entry.path)!r} changed into a special file meanwhile")
    src = entry.open()
    try:
        dst = os.open(here, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            for chunk in read_chunks(src, budget):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
        finally:
            os.close(dst)
        _copy_owner_and_mode(os.fstat(src), here)
    finally:
        os.close(src)


def _copy_owner_and_mode(st: os.stat_result, path: Path) -> None:
    """Give a mirrored file or directory the original's owner (where we may) and mode."""
    # Not root: the sandbox reads it through its mode bits alone.
    with contextlib.suppress(PermissionError):
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    path.chmod(stat.S_IMODE(st.st_mode) & 0o777)


class WarmPool:
    """Keeps ``size`` started slots ready; ``take`` hands one out, never twice."""

    def __init__(self, size: int, maker: SlotMaker) -> None:
        self.size = size
        self._create = maker.make
        self._destroy = maker.drop
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
