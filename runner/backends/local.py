"""The execution seam: a prepared run goes in, what happened comes out.

``ExperimentRunner`` checks what it is asked, interprets the output and keeps
the results; a backend only executes. ``DockerBackend`` runs each script in a
fresh hardened container of one engine, cold or from its warm pool, through
the one container lifecycle of ``runner.sandbox.lifecycle``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runner.backends.bootstrap import DEFAULT_PRELOAD, SOURCE, hand_over_line
from runner.backends.pool import (
    Slot,
    SlotMaker,
    WarmPool,
    fits_pool,
    may_be_pool_root,
    pool_root_for,
)
from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.core.sizes import parse_size
from runner.sandbox.artifacts import COLLECT_SECONDS, OutputLimits, Outputs
from runner.sandbox.cleanup import build_labels, cleanup, deadline_after
from runner.sandbox.engine import DockerEngine, Engine, SandboxRefused, SandboxStartError
from runner.sandbox.files.transfer import (
    TRANSFERS,
    Transfer,
    copy_to_engine,
    engine_sees_local_files,
    unpack_here,
)
from runner.sandbox.files.tree import TreeExpired, TreeRefused
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import ActiveRuns, Execution, Resources, Sandbox, registered
from runner.sandbox.policy import Run, SandboxPolicy, SupportFiles, self_limited
from runner.sandbox.streams import OutputCallback
from runner.sandbox.support import ensure_support, support_gone
from runner.sandbox.telemetry import CgroupTelemetry

__all__ = ["Backend", "DockerBackend", "RunRequest", "fits_pool"]

#: How long a warm pool container may wait for a script before it ends itself.
POOL_IDLE_MAX = 3600


@dataclass(frozen=True)
class RunRequest:
    """One checked run: the script, what must be visible beside it, and its bounds."""

    script: Path
    #: Absolute paths mounted read-only at the same place: the script's directory first.
    mounts: tuple[Path, ...]
    timeout: float
    output_limit: int
    #: Why the sandbox user could not read the files in place (then they are copied).
    unreadable: str | None = None
    #: The script's command-line arguments (``sys.argv[1:]``), checked by ``check_args``.
    args: tuple[str, ...] = ()
    #: Where the script's outputs go, if anywhere (None: outputs off).
    outputs: Outputs | None = None
    #: The mounts already packed (``runner.sandbox.files.transfer.pack``), one archive each,
    #: when they were made on another machine (a Ray task's caller): copied in, never bound.
    packed: tuple[bytes, ...] = ()
    #: Labels the run's container and volumes carry besides the project's own
    #: (a Ray batch marks its runs so that cancelling it finds them on every node).
    labels: tuple[tuple[str, str], ...] = ()


class Backend(Protocol):
    """Executes prepared runs; what ``ExperimentRunner`` stands on."""

    def execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution: ...

    def abort(self, tokens: Iterable[object]) -> None: ...

    def default_workers(self) -> int: ...

    def close(self) -> None: ...


class _SlotUnusable(Exception):
    """A pool slot could not take its script; the run goes cold instead."""


class DockerBackend:
    """Fresh hardened containers on one Docker engine, cold or from a warm pool."""

    def __init__(
        self,
        policy: SandboxPolicy,
        *,
        engine: Engine | None = None,
        python_executable: str = "python",
        settings: ExperimentDefaults | None = None,
        preload: Sequence[str] | None = None,
        pool_root: Path | str | None = None,
        transfer: Transfer | None = None,
        node: str | None = None,
    ) -> None:
        defaults = settings or ExperimentDefaults()
        #: What ``result.node`` says ran the script (default: this machine's host name).
        self.node = node or socket.gethostname()
        self.transfer: Transfer = transfer or defaults.transfer
        if self.transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}, not {transfer!r}")
        self.policy = policy
        self.python_executable = python_executable
        self.preload = tuple(DEFAULT_PRELOAD if preload is None else preload)
        #: An explicit ``pool_root`` stays put; the default (the experiments directory) moves.
        self.pool_root_fixed = pool_root is not None
        self._pool_root = Path(pool_root or defaults.experiments_dir).resolve()
        self.slots_dir = defaults.cache_dir / "pool"
        self._engine = engine
        self._lock = threading.Lock()
        self._ready = False
        self._telemetry: CgroupTelemetry | None = None
        self._user_kernel = False
        self._shares_files = True
        self._engine_cpus = 1
        self._engine_memory = 0
        self._active = ActiveRuns()
        self._support: SupportFiles | None = None
        #: Counts the times the support volume was made again (see ``_support_back``).
        self._support_remade = 0
        self._support_lock = threading.Lock()
        self._podman = False
        self._pool: WarmPool | None = None
        self._pool_outputs: OutputLimits | None = None
        #: Why a warm pool that was asked for is not kept, if it is not.
        self.pool_unavailable: str | None = None

    @property
    def engine(self) -> Engine:
        """The Docker seam, connected on first use."""
        with self._lock:
            if self._engine is None:
                self._engine = DockerEngine()
            return self._engine

    def prepare(self) -> None:
        """Once per backend: check the runtime, find telemetry, sweep abandoned containers."""
        engine = self.engine
        with self._lock:
            if self._ready:
                return
            info = engine.info()
            runtime = self.policy.runtime
            registered_runtimes = set(info.get("Runtimes") or {})
            if runtime is not None and runtime not in registered_runtimes:
                raise ExperimentExecutionError(
                    f"Runtime {runtime!r} is not registered with the Docker engine "
                    f"(registered: {', '.join(sorted(registered_runtimes)) or 'none'}).",
                    hint="register it in /etc/docker/daemon.json and reload the engine, or "
                    "choose one of the registered runtimes; the runner never falls back.",
                )
            self._user_kernel = runtime is not None and is_user_kernel(info, runtime)
            image_id = engine.image_id(self.policy.image)
            helper_labels = build_labels(deadline_after(60))
            if self.transfer != "bind":
                self._shares_files = engine_sees_local_files(engine, image_id, helper_labels)
            # The sandbox's hosts and resolv.conf (and Podman's seccomp profile) are files
            # on the engine's machine.
            self._support = ensure_support(engine, image_id, helper_labels)
            self._podman = engine.kind() == "podman"
            self._engine_cpus = int(info.get("NCPU") or 1)
            self._engine_memory = int(info.get("MemTotal") or 0)
            telemetry = CgroupTelemetry()
            # The engine's cgroups are readable here only if it runs on this machine.
            local = self._shares_files and telemetry.available(info)
            self._telemetry = telemetry if local else None
            # Containers of callers that crashed (or outlived their deadline) go now, and
            # so do the slot directories of pools that went with them.
            cleanup(engine, telemetry=self._telemetry, slots_dir=self.slots_dir)
            self._ready = True

    def capacity(self) -> tuple[int, int]:
        """CPU cores and bytes of memory of the machine the engine runs on."""
        self.prepare()
        if self._shares_files:
            cores = len(os.sched_getaffinity(0))
            return cores, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return self._engine_cpus, self._engine_memory

    def default_workers(self) -> int:
        """Runs at once that never book more CPU cores or memory than the engine has."""
        cores, memory = self.capacity()
        return sandboxes_that_fit(self.policy, cores, memory)

    def describe_files(self) -> str:
        """How files reach this engine's sandboxes, in words (for ``runner doctor``)."""
        self.prepare()
        if self.transfer == "copy" or not self._shares_files:
            why = "asked for" if self.transfer == "copy" else "it does not see this machine's files"
            return f"copied through the engine's API into a volume ({why})"
        if self.transfer == "bind":
            return "bind-mounted in place (transfer=bind); files others cannot read are refused"
        return "bind-mounted in place; files others cannot read are copied"

    @property
    def telemetry_available(self) -> bool:
        """Whether peak memory and CPU time can be read from the engine's cgroups."""
        self.prepare()
        return self._telemetry is not None

    # the warm pool ---------------------------------------------------------

    @property
    def pool_root(self) -> Path | None:
        """Where the warm pool's slots are mounted now (scripts below it can run warm);
        without a pool, where one would start; None while a pool waits for a root."""
        return self._pool.root if self._pool is not None else self._pool_root

    def start_pool(self, size: int, timeout: float, outputs: OutputLimits | None = None) -> None:
        """Keep ``size`` containers started ahead, the ``preload`` modules imported.

        Files reach a slot as they reach a cold run: on an engine that sees this
        machine's files through a directory here (hard links), elsewhere (or with
        ``transfer="copy"``) through a volume filled over the engine's API. An
        explicit ``pool_root`` that would hide the image's own files raises
        ``ValueError``; a default one that would is noted in ``pool_unavailable``,
        and the pool starts where the first script's files are. With ``outputs``,
        the pool serves runs with outputs within those limits (and only those).
        """
        self.prepare()
        root: Path | None = self._pool_root
        if not may_be_pool_root(self._pool_root):
            why = (
                f"{self._pool_root} cannot be the warm pool's root: mounted there, a slot's "
                "directory would hide the image's own files"
            )
            if self.pool_root_fixed:
                raise ValueError(f"{why}; choose another pool_root.")
            self.pool_unavailable = f"{why}; the pool starts where the first script is"
            root = None
        self.engine.image_id(self.policy.image)  # fail now, with a hint, if it is missing
        maker = SlotMaker(
            engine=self.engine,
            image=self.policy.image,
            policy=self.policy,
            command=[self.python_executable, "-c", SOURCE, *self.preload],
            outputs=outputs,
            slots_dir=self.slots_dir,
            lifetime=POOL_IDLE_MAX + timeout,
            telemetry=self._telemetry,
            user_kernel=self._user_kernel,
            support=self._support,
            podman=self._podman,
            through_engine=not self._shares_files or self.transfer == "copy",
        )
        pool = WarmPool(size, maker, root)
        self._pool = pool
        self._pool_outputs = outputs
        # The pool goes with the backend, or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, pool.close)

    @property
    def pool(self) -> WarmPool | None:
        return self._pool

    def close(self) -> None:
        """Remove the warm pool's containers; runs are cold from then on."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    # running ---------------------------------------------------------------

    def execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        """Run the request in a warm slot if one fits and is ready, else in a cold container."""
        try:
            execution = self._execute(request, on_output, token)
        finally:
            self._active.forget(token)
        return dataclasses.replace(execution, node=self.node)

    def _execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        self.prepare()
        copies = self._copies(request)  # with transfer="bind", unreadable files raise here
        slot = self._warm_slot(request)
        if slot is not None:
            try:
                return self._execute_warm(slot, request, copies, on_output, token)
            except _SlotUnusable:
                pass  # run cold instead
        image_id = self.engine.image_id(self.policy.image)
        for attempt in (1, 2):
            remade = self._support_remade
            try:
                return self._execute_cold(image_id, request, on_output, token)
            except (SandboxStartError, SandboxRefused) as e:
                # Nothing ran, so one fresh attempt is safe: worth it when the support
                # volume went (`runner cleanup --all` under this runner; it is made
                # again), and after any failure to start (gVisor occasionally fails to
                # set a sandbox up). A refusal for another reason stands.
                if attempt == 2 or self._active.aborted(token):
                    raise  # a cancelled run is never tried again
                back = self._support_back(image_id, remade, e)
                if not (back or isinstance(e, SandboxStartError)):
                    raise
        raise AssertionError("unreachable")

    def _support_back(self, image_id: str, remade: int, error: Exception) -> bool:
        """After a sandbox that was refused or failed to start: True if it may have
        been for want of the support volume, which is now made again (here, or by
        another run of this backend since ``remade`` was read).

        Another runner of the engine may be making it again at the same time: then
        the volume is there, but the error names one of its files, and filling it
        once more is harmless (it is rewritten only when its content differs).
        """
        support = self._support
        if support is None:
            return False
        with self._support_lock:
            if self._support_remade != remade:
                return True
            if support.mountpoint not in str(error) and not support_gone(self.engine, support):
                return False  # refused for another reason: the error stands
            # Same name, same content: the same paths on the engine's machine (the warm
            # pool's slot maker keeps them), so slots work again too.
            helper_labels = build_labels(deadline_after(60))
            self._support = ensure_support(self.engine, image_id, helper_labels)
            self._support_remade += 1
            return True

    def _warm_slot(self, request: RunRequest) -> Slot | None:
        """A ready slot that can show the request's files, if any.

        When the pool's root cannot show them and was not chosen explicitly, the
        pool moves (``pool_root_for``) and this run is cold while it refills.
        """
        pool = self._pool
        if pool is None:
            return None
        if self._pool_outputs != (request.outputs.limits if request.outputs else None):
            return None  # the slots were made for runs with (or without) these outputs
        root = pool.root
        if root is not None and fits_pool(root, request.script, request.mounts[1:]):
            return pool.take()
        if not self.pool_root_fixed and "\n" not in str(request.script):
            moved = pool_root_for(request.mounts, root)
            if moved is not None:
                pool.retarget(moved)
        return None

    def _copies(self, request: RunRequest) -> bool:
        """Whether the request's files travel through the engine rather than a bind mount."""
        if request.packed:
            return True
        if self.transfer == "bind":
            if request.unreadable is not None:
                raise ExperimentExecutionError(
                    request.unreadable,
                    hint="make it readable by others, or let the runner copy the files "
                    "(transfer='auto' or 'copy').",
                )
            return False
        return self.transfer == "copy" or not self._shares_files or request.unreadable is not None

    def abort(self, tokens: Iterable[object]) -> None:
        """Remove the containers of the runs ``tokens`` name; those not started never start."""
        for container_id in self._active.abort(tokens):
            self.engine.remove(container_id)

    def _execute_cold(
        self,
        image_id: str,
        request: RunRequest,
        on_output: OutputCallback | None,
        token: object,
    ) -> Execution:
        telemetry = self._telemetry
        resources = Resources(
            lease=lease_uid(),
            cgroup_parent=telemetry.new_parent() if telemetry is not None else None,
            telemetry=telemetry,
        )
        outputs = request.outputs.limits if request.outputs is not None else None
        # Collecting the outputs may take the sandbox past the script's deadline.
        deadline = deadline_after(request.timeout + (COLLECT_SECONDS if outputs else 0))
        labels = build_labels(deadline, dict(request.labels))
        engine = self.engine
        bound: tuple[Path, ...] = request.mounts
        copied: tuple[tuple[Path, Path], ...] = ()
        if self._copies(request):
            try:
                bound, copied = (), self._copy(engine, image_id, request, labels, resources)
            except BaseException:
                resources.release()
                raise
        run = Run(
            command=self_limited(
                [self.python_executable, str(request.script), *request.args],
                request.timeout,
                outputs=outputs,
                links=request.script.parent,
            ),
            workdir=request.script.parent,
            read_only_paths=bound,
            deadline=deadline,
            uid=resources.lease.uid,
            labels=labels,
            cgroup_parent=resources.cgroup_parent,
            relocated=copied,
            user_kernel=self._user_kernel,
            outputs=outputs,
            support=self._support,
            podman=self._podman,
        )
        with (
            Sandbox.create(engine, image_id, self.policy, run, resources) as sandbox,
            registered(self._active, token, sandbox),
        ):
            sandbox.attach()
            return sandbox.run(
                request.timeout, request.output_limit, on_output, outputs=request.outputs
            )

    def _copy(
        self,
        engine: Engine,
        image_id: str,
        request: RunRequest,
        labels: Mapping[str, str],
        resources: Resources,
    ) -> tuple[tuple[Path, Path], ...]:
        """The request's files put where the engine binds them from; removed on release.

        Packed files (from another machine) are unpacked here when the engine sees
        this machine's files and copies are not asked for: no volume, no helper.
        """
        if request.packed and self._shares_files and self.transfer != "copy":
            unpacked = unpack_here(request.packed, request.mounts)
            if unpacked is not None:
                resources.extra.append(unpacked.remove)
                return unpacked.binds()
        files = copy_to_engine(engine, image_id, request.mounts, labels, packed=request.packed)
        resources.extra.append(lambda: engine.remove_volume(files.volume))
        return files.binds()

    def _execute_warm(
        self,
        slot: Slot,
        request: RunRequest,
        copies: bool,
        on_output: OutputCallback | None,
        token: object,
    ) -> Execution:
        sandbox = slot.sandbox
        with sandbox, registered(self._active, token, sandbox):
            if not sandbox.running:
                raise _SlotUnusable  # it died while waiting (say, its idle deadline passed)
            # The hand-over counts against the run's deadline.
            started = time.monotonic()
            try:
                if request.packed:  # files from another machine (a Ray task's)
                    slot.files.put_packed(request.packed, slot.root)
                else:
                    slot.files.put(
                        request.mounts, slot.root, started + request.timeout, readable=copies
                    )
            except (TreeRefused, ExperimentExecutionError) as e:
                # A cold run shows these files exactly, or says why it cannot.
                raise _SlotUnusable from e
            except TreeExpired:
                return _expired_in_hand_over(sandbox, time.monotonic() - started)
            cpu_before = sandbox.resources.usage().cpu_seconds or 0.0
            return sandbox.run(
                request.timeout,
                request.output_limit,
                on_output,
                hand_over=hand_over_line(str(request.script), request.args),
                started=started,
                cpu_before=cpu_before,
                outputs=request.outputs,
            )


def sandboxes_that_fit(policy: SandboxPolicy, cores: float, memory: int) -> int:
    """Sandboxes of ``policy`` a machine of ``cores`` and ``memory`` bytes holds at once (>= 1)."""
    by_cpu = math.floor(cores / policy.cpu_limit)
    by_memory = memory // parse_size(policy.memory_limit)
    return max(1, min(by_cpu, by_memory))


def is_user_kernel(engine_info: dict[str, Any], runtime: str) -> bool:
    """True when ``runtime`` is gVisor's runsc (by its program, whatever its name)."""
    entry = (engine_info.get("Runtimes") or {}).get(runtime) or {}
    program = Path(str(entry.get("path") or runtime)).name
    return program == "runsc" or runtime == "runsc"


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
        duration=duration,
        image_id=sandbox.image_id,
        warm=True,
    )
