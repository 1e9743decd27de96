"""A pool of single-use warm containers: started ahead, libraries imported, used once.

Each slot is a container with every control of a cold run, plus an empty
directory of its own mounted read-only at the pool root. To hand a script over,
the runner puts the script's directory (and any inputs) into that directory at
their places below the root, so inside the container they appear at their own
absolute paths, and writes the script's path to the container's stdin. After
the run the container is removed, never reused; a background thread starts
replacements.

How the files get in depends on the engine, as for cold runs (``transfer``):

- ``LinkedFiles``: on an engine that sees this machine's files, the slot's
  directory is on this machine; files are hard-linked in (copied across
  filesystems, or with read permission added when the sandbox user could not
  read them in place).
- ``VolumeFiles``: elsewhere (or with ``transfer="copy"``), a labelled volume
  filled through a never-started helper container's archive API
  (``runner.sandbox.files.transfer.FileDrop``), as a cold run's copied files are.

The pool root can move (``WarmPool.retarget``) so that any script can run
warm; ``pool_root_for`` says where, and ``may_be_pool_root`` where never.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from runner.backends.bootstrap import READY, hand_over_line
from runner.core.exceptions import ExperimentExecutionError
from runner.core.provenance import SandboxFacts
from runner.sandbox import facts
from runner.sandbox.artifacts import OutputLimits
from runner.sandbox.cleanup import LABEL_SLOT, build_labels, deadline_after
from runner.sandbox.engine import Engine
from runner.sandbox.files.transfer import FileDrop, copy_budget, reroot, unpack
from runner.sandbox.files.tree import Budget, Entry, TreeExpired, TreeRefused, read_chunks, walk
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import (
    ActiveRuns,
    Execution,
    Reaper,
    Resources,
    Sandbox,
    registered,
)
from runner.sandbox.policy import Run, SandboxPolicy, SupportFiles, self_limited
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback
from runner.sandbox.telemetry import CgroupTelemetry

#: Top-level directories of the image (``lib*`` too) a pool root may neither be nor
#: lie below: mounted there, a slot's directory would hide the image's own files.
IMAGE_DIRS = frozenset({"bin", "boot", "dev", "etc", "proc", "run", "sbin", "sys", "usr", "var"})
#: The image's Python, which a pool root may neither hide nor lie in.
IMAGE_VENV = Path("/opt/venv")
#: The sandbox's own scratch file systems: a pool root may lie below them, not be them.
SCRATCH = (Path("/tmp"), Path("/dev/shm"))  # noqa: S108


def may_be_pool_root(root: Path) -> bool:
    """Whether a slot's directory may be mounted at ``root`` (absolute) without hiding
    the image's own files: never ``/``, a system directory or the image's Python, nor
    anything below them, but for what lies below the sandbox's own ``/tmp`` and
    ``/dev/shm`` (not those themselves)."""
    parts = root.parts
    if not root.is_absolute() or len(parts) < 2 or root in SCRATCH:
        return False
    if any(root.is_relative_to(scratch) for scratch in SCRATCH):
        return True
    top = parts[1]
    if top in IMAGE_DIRS or top.startswith("lib"):
        return False
    return not (root in IMAGE_VENV.parents or root.is_relative_to(IMAGE_VENV))


def fits_pool(pool_root: Path, script: Path, inputs: Sequence[Path]) -> bool:
    """Whether a slot at ``pool_root`` can show the script's directory and ``inputs``
    at their own paths: each must lie strictly below the root."""
    return (
        script.parent.is_relative_to(pool_root)
        and script.parent != pool_root
        and all(path.is_relative_to(pool_root) and path != pool_root for path in inputs)
        and "\n" not in str(script)
    )


def pool_root_for(paths: Sequence[Path], current: Path | None) -> Path | None:
    """Where a pool at ``current`` should move to show ``paths`` (the script's directory,
    then inputs): the nearest common ancestor of ``current`` and the paths' parents, so
    that what ran warm before still does; failing that (``/``, say), of the paths'
    parents alone; None when neither may be a pool root (``may_be_pool_root``)."""
    parents = [str(path.parent) for path in paths]
    candidates = [os.path.commonpath(parents)]
    if current is not None:
        candidates.insert(0, os.path.commonpath([str(current), *parents]))
    for candidate in candidates:
        if may_be_pool_root(Path(candidate)):
            return Path(candidate)
    return None


def outermost(paths: Sequence[Path]) -> list[Path]:
    """``paths`` without those inside another of them (already shown by that one)."""
    return [
        path
        for i, path in enumerate(paths)
        if not any(
            path.is_relative_to(other) and (path != other or j < i)
            for j, other in enumerate(paths)
            if j != i
        )
    ]


class SlotFiles(Protocol):
    """How a slot's read-only directory at the pool root is filled at hand-over."""

    @property
    def source(self) -> Path:
        """The engine-side source of the slot's read-only mount at the pool root."""
        ...

    def put(self, paths: Sequence[Path], root: Path, deadline: float, *, readable: bool) -> None:
        """Show ``paths`` (absolute, below ``root``) at their places below ``root``.

        ``readable``: the sandbox user could not read them in place; they must
        arrive readable (as a cold run's copied files do). Raises ``TreeRefused``
        (what a cold run would show differently, or over the limits) and
        ``TreeExpired`` (past ``deadline``, a ``time.monotonic()``).
        """
        ...

    def put_packed(self, archives: Sequence[bytes], root: Path) -> None:
        """Show the files of ``archives`` (made by ``pack`` on another machine) at their
        places below ``root``; raises ``TreeRefused`` where that cannot be done."""
        ...

    def remove(self) -> None: ...


@dataclass(frozen=True)
class LinkedFiles:
    """A directory on this machine, for an engine that sees this machine's files.

    ``source`` (mounted at the pool root) sits in ``base``, a directory only
    this machine's caller may enter: copies made readable for the sandbox user
    are then readable by no other user of this machine.
    """

    base: Path
    source: Path

    @classmethod
    def create(cls, slots_dir: Path) -> LinkedFiles:
        base = new_slot_dir(slots_dir)
        source = base / "root"
        source.mkdir()
        source.chmod(0o755)  # the pool root, as the sandbox user sees it
        return cls(base, source)

    def put(self, paths: Sequence[Path], root: Path, deadline: float, *, readable: bool) -> None:
        budget = Budget(deadline=deadline)
        for path in outermost(paths):
            stage(path, root, self.source, budget=budget, readable=readable)

    def put_packed(self, archives: Sequence[bytes], root: Path) -> None:
        unpack((reroot(packed, root) for packed in archives), self.source)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass(frozen=True)
class VolumeFiles:
    """A labelled volume filled through the engine's API (``runner.sandbox.files.FileDrop``)."""

    drop: FileDrop

    @property
    def source(self) -> Path:
        return Path(self.drop.mountpoint)

    def put(self, paths: Sequence[Path], root: Path, deadline: float, *, readable: bool) -> None:
        # Copied files are always readable by the sandbox user, as in a cold copy.
        self.drop.put(outermost(paths), copy_budget(deadline), root=root)

    def put_packed(self, archives: Sequence[bytes], root: Path) -> None:
        self.drop.put_packed([reroot(packed, root) for packed in archives])

    def remove(self) -> None:
        self.drop.remove()


@dataclass
class Slot:
    """One started pool container, waiting for a script, its root and its files."""

    sandbox: Sandbox
    #: Where the slot's directory is mounted: what it can show lies below.
    root: Path
    files: SlotFiles
    #: What the bootstrap said of its machine before it was ready (``runner.sandbox.facts``).
    facts: SandboxFacts | None = None

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
    #: Where the slots' host directories live (``LinkedFiles``).
    slots_dir: Path
    #: How long a slot may wait plus run, before it ends itself.
    lifetime: float
    telemetry: CgroupTelemetry | None = None
    user_kernel: bool = False
    #: Slots for runs with outputs (the bootstrap links the script's files in).
    outputs: OutputLimits | None = None
    support: SupportFiles | None = None
    podman: bool = False
    #: Files reach the slots through the engine's API (``VolumeFiles``), not this
    #: machine's filesystem: the engine cannot see it, or ``transfer="copy"``.
    through_engine: bool = False

    def make(self, root: Path) -> Slot:
        """Create, attach and start one slot whose directory is mounted read-only at
        ``root`` (its readiness is read by ``wait_ready``)."""
        image_id = self.engine.image_id(self.image)
        deadline = deadline_after(self.lifetime)
        files: SlotFiles
        if self.through_engine:
            files = VolumeFiles(FileDrop.create(self.engine, image_id, build_labels(deadline)))
            labels = build_labels(deadline)
        else:
            linked = LinkedFiles.create(self.slots_dir)
            files = linked
            labels = build_labels(deadline, {LABEL_SLOT: linked.base.name})
        try:
            resources = Resources(
                lease=lease_uid(),
                cgroup_parent=self.telemetry.new_parent() if self.telemetry is not None else None,
                telemetry=self.telemetry,
                extra=[files.remove],
            )
        except BaseException:
            files.remove()
            raise
        run = Run(
            command=self_limited(self.command, self.lifetime, outputs=self.outputs),
            workdir=root,
            read_only_paths=(),
            deadline=deadline,
            uid=resources.lease.uid,
            labels=labels,
            cgroup_parent=resources.cgroup_parent,
            relocated=((files.source, root),),
            stdin_open=True,
            user_kernel=self.user_kernel,
            outputs=self.outputs,
            support=self.support,
            podman=self.podman,
        )
        sandbox = Sandbox.create(self.engine, image_id, self.policy, run, resources)
        try:
            sandbox.attach()
            sandbox.open_stdin()  # the hand-over then costs no request
            sandbox.start()
        except BaseException:
            sandbox.destroy()
            raise
        return Slot(sandbox, root, files)

    @staticmethod
    def drop(slot: Slot) -> None:
        slot.sandbox.destroy()


def wait_ready(slot: Slot) -> bool:
    """Read the slot's output until the bootstrap says it is ready; False if it died."""
    pending = b""
    for out, _err in slot.sandbox.frames:
        pending += out or b""
        if READY in pending:
            slot.facts = facts.take(pending[: pending.find(READY)])[0]
            return True
        if len(pending) > facts.MAX_LINE + 4096:
            return False
    return False


def stage(
    source: Path,
    root: Path,
    slot_dir: Path,
    *,
    budget: Budget | None = None,
    readable: bool = False,
) -> Path:
    """Mirror ``source`` (a directory or file below ``root``) into ``slot_dir`` at its
    place below ``root``, as a bind mount would show it.

    Regular files are hard-linked (copied where linking fails, say across
    filesystems), symlinks are recreated with the same target text, and
    directories keep their modes. With ``readable`` (the sandbox user could not
    read them in place) files are always copied, never linked, and gain read
    permission (directories, search), as in a cold run's copy. Nothing on the
    host is read through a symlink and no device, FIFO or socket is opened
    (``runner.sandbox.files.tree``): a directory that holds one, or is over ``budget``, raises
    ``TreeRefused`` (a cold run shows it exactly); past the budget's deadline,
    ``TreeExpired``.
    """
    budget = budget or Budget()
    target = slot_dir / source.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_dir() or source.is_symlink():
        _stage_file(source, target, budget, readable)
    else:
        target.mkdir(exist_ok=True)
        directories = [(target, source.lstat())]
        for entry in walk(source, budget):
            here = target / entry.path
            if entry.kind == "symlink":
                # The target text only: it resolves inside the sandbox, as in a cold run.
                here.symlink_to(entry.link_target())
            elif entry.kind == "dir":
                here.mkdir()
                directories.append((here, entry.stat))
            else:
                _link_or_copy(entry, here, budget, readable)
        for directory, st in reversed(directories):
            _copy_owner_and_mode(st, directory, readable)
    for parent in target.relative_to(slot_dir).parents:
        (slot_dir / parent).chmod(0o755)  # the way down must be open to the sandbox user
    return target


def _stage_file(path: Path, here: Path, budget: Budget, readable: bool) -> None:
    """Mirror the input file ``path`` (resolved by the caller) at ``here``."""
    budget.entry()
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise TreeRefused(f"{str(path)!r} is not a regular file or directory")
        entry = Entry(PurePosixPath(path.name), "file", st, parent, path.name)
        _link_or_copy(entry, here, budget, readable)
    finally:
        os.close(parent)


def _link_or_copy(entry: Entry, here: Path, budget: Budget, readable: bool = False) -> None:
    try:
        if readable:
            raise OSError  # a link shares the original's mode: the sandbox could not read it
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
        _copy_owner_and_mode(os.fstat(src), here, readable)
    finally:
        os.close(src)


def _copy_owner_and_mode(st: os.stat_result, path: Path, readable: bool = False) -> None:
    """Give a mirrored file or directory the original's owner (where we may) and mode;
    with ``readable``, this caller's and the mode with read (and search) added."""
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if readable:
        mode |= 0o555 if stat.S_ISDIR(st.st_mode) else 0o444
    else:
        # Not root: the sandbox reads it through its mode bits alone.
        with contextlib.suppress(PermissionError):
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    path.chmod(mode)


class WarmPool:
    """Keeps ``size`` started slots ready at ``root``; ``take`` hands one out, never twice.

    With ``root`` None no slot starts until ``retarget`` gives the pool a root.
    """

    def __init__(self, size: int, maker: SlotMaker, root: Path | None) -> None:
        self.size = size
        self._create = maker.make
        self._destroy = maker.drop
        self._root = root
        self._ready: list[Slot] = []
        self._starting = 0
        self._lock = threading.Condition()
        self._closed = False
        #: Why the last attempt to start a slot failed, until the pool tries again.
        self.error: ExperimentExecutionError | None = None
        #: Counts the refills that started attempts: an older attempt's failure is stale.
        self._round = 0
        self._threads: list[threading.Thread] = []
        self._refill()

    @property
    def root(self) -> Path | None:
        """Where new slots mount their directory: what they can show lies below."""
        with self._lock:
            return self._root

    def take(self) -> Slot | None:
        """A ready slot, or None when none is ready (the caller then runs cold)."""
        with self._lock:
            slot = self._ready.pop(0) if self._ready else None
        self._refill()
        return slot

    def retarget(self, root: Path) -> None:
        """Move the pool to ``root``: ready slots elsewhere go, replacements start there."""
        with self._lock:
            if root == self._root or self._closed:
                return
            self._root = root
            stale, self._ready = self._ready, []
        for slot in stale:
            self._destroy(slot)
        self._refill()

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
            if self._closed or self._root is None:
                return
            missing = self.size - len(self._ready) - self._starting
            self._starting += max(missing, 0)
            self._threads = [t for t in self._threads if t.is_alive()]
            if missing > 0:
                self.error = None  # these attempts say anew whether slots start
                self._round += 1
            for _ in range(max(missing, 0)):
                thread = threading.Thread(
                    target=self._start_one, args=(self._round,), name="runner-pool", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _start_one(self, round_: int) -> None:
        slot: Slot | None = None
        error: ExperimentExecutionError | None = None
        root = self.root
        if root is None:
            raise AssertionError("a slot is started only once the pool has a root")
        try:
            slot = self._create(root)
            ok = wait_ready(slot)
        except ExperimentExecutionError as e:
            ok = False
            error = e
        except Exception as e:  # noqa: BLE001 - a background thread: say why, keep the count
            ok = False
            error = ExperimentExecutionError(
                f"A warm pool container could not be started: {type(e).__name__}: {e}",
                hint="runs are cold meanwhile; `runner doctor` checks the engine.",
            )
        with self._lock:
            if error is not None and round_ == self._round:
                self.error = error
            self._starting -= 1
            moved = self._root != root  # retargeted while this one started
            keep = ok and slot is not None and not self._closed and not moved
            if keep and slot is not None:
                self._ready.append(slot)
            self._lock.notify_all()
        if slot is not None and not keep:
            self._destroy(slot)
        if moved:
            self._refill()


def new_slot_dir(base: Path) -> Path:
    """A new slot's own directory: only this caller may enter it (the engine is root)."""
    directory = base / uuid.uuid4().hex
    directory.mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)
    return directory


class SlotUnusable(Exception):
    """A pool slot could not take its script; the run goes cold instead."""


def run_in_slot(
    slot: Slot,
    request: RunRequest,
    on_output: OutputCallback | None,
    token: object,
    active: ActiveRuns,
    *,
    readable: bool,
    reaper: Reaper | None = None,
) -> Execution:
    """Hand ``request`` to a started slot and see it through; the slot goes with it.

    ``readable``: the sandbox user could not read the files in place (they arrive
    readable, as a cold run's copied files do). ``SlotUnusable`` when the slot
    cannot show the files exactly as a cold run would, or died while it waited.
    ``reaper`` removes the slot once the run is over, in the background.
    """
    sandbox = slot.sandbox
    with sandbox, registered(active, token, sandbox):
        if not sandbox.running:
            raise SlotUnusable  # it died while waiting (say, its idle deadline passed)
        # The hand-over counts against the run's deadline.
        started = time.monotonic()
        try:
            if request.packed:  # files from another machine (a Ray task's)
                slot.files.put_packed(request.packed, slot.root)
            else:
                slot.files.put(
                    request.mounts, slot.root, started + request.timeout, readable=readable
                )
        except (TreeRefused, ExperimentExecutionError) as e:
            # A cold run shows these files exactly, or says why it cannot.
            raise SlotUnusable from e
        except TreeExpired:
            return _expired_in_hand_over(sandbox, time.monotonic() - started)
        cpu_before = sandbox.resources.usage().cpu_seconds or 0.0
        execution = sandbox.run(
            request.timeout,
            request.output_limit,
            on_output,
            hand_over=hand_over_line(str(request.script), request.args, request.environment),
            started=started,
            cpu_before=cpu_before,
            outputs=request.outputs,
            reaper=reaper,
            trusted=request.ends_with_result,
        )
        return execution.model_copy(update={"facts": slot.facts})


def _expired_in_hand_over(sandbox: Sandbox, duration: float) -> Execution:
    """The record of a run whose deadline passed before its script was handed over."""
    return Execution(
        exit_code=None,
        timed_out=True,
        oom_killed=False,
        stdout="",
        stderr="[runner] the deadline passed while the script's directory was handed over\n",
        stdout_truncated=False,
        stderr_truncated=False,
        execution_time=duration,
        image_id=sandbox.image_id,
        warm_start=True,
    )
