"""The local backend: fresh hardened containers on one engine, cold or from a warm pool.

``DockerBackend`` finds out once what its engine is (``runner.sandbox.probe``),
sweeps what crashed callers left there, and runs each request in a warm slot
when one fits and is ready (``runner.backends.pool``), else cold
(``runner.sandbox.cold``). It serves this machine's engine (any engine
``DOCKER_HOST`` names: a local one, Docker-in-Docker, Podman) and, on a Ray
cluster, each node's.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, BackendOptions, PoolSpec, sandboxes_that_fit
from runner.backends.bootstrap import DEFAULT_PRELOAD, SOURCE
from runner.backends.pool import (
    Slot,
    SlotMaker,
    SlotUnusable,
    WarmPool,
    fits_pool,
    may_be_pool_root,
    pool_root_for,
    run_in_slot,
)
from runner.core.provenance import EngineRecord
from runner.core.settings import TRANSFERS, ExperimentDefaults, Transfer
from runner.sandbox.artifacts import OutputLimits
from runner.sandbox.cleanup import cleanup
from runner.sandbox.cold import ColdRuns
from runner.sandbox.engine import DockerEngine, Engine, EngineError, EngineUnavailable
from runner.sandbox.lifecycle import ActiveRuns, Execution, Reaper
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.probe import EngineFacts, FileRoute, engine_record, probe
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback

__all__ = ["DockerBackend", "open"]

#: How long a warm pool container may wait for a script before it ends itself.
POOL_IDLE_MAX = 3600
#: How often a run asks an engine that stopped answering whether it is back (seconds).
ENGINE_POLL = 0.5
#: How long after an engine error (or a sandbox that ended before its script) the engine
#: is watched: one that stops answering meanwhile was going away, and caused it.
OUTAGE_GRACE = 3.0
#: The last line of the stderr of a run that ran again after an engine outage.
RERUN_NOTE = (
    "\n[runner] the engine stopped answering while the script ran; it ran again, once, "
    "in a fresh sandbox, and this is that run's output\n"
)


def open(options: BackendOptions) -> DockerBackend:
    """The backend of ``options`` on this machine's engine (``BACKENDS["local"]``)."""
    if options.build_missing:
        raise ValueError(
            "build_missing builds the image on a cluster's nodes; on this machine's "
            "engine: runner image build"
        )
    backend = DockerBackend(
        options.policy,
        engine=options.engine,
        python_executable=options.python_executable,
        transfer=options.transfer,
        slots_dir=options.cache_dir / "pool",
    )
    if options.pool is not None:
        backend.start_pool(options.pool)
    return backend


class DockerBackend:
    """Fresh hardened containers on one Docker engine, cold or from a warm pool."""

    def __init__(
        self,
        policy: SandboxPolicy,
        *,
        engine: Engine | None = None,
        python_executable: str = "python",
        transfer: Transfer | None = None,
        node: str | None = None,
        slots_dir: Path | None = None,
    ) -> None:
        self.transfer: Transfer = transfer or ExperimentDefaults().transfer
        if self.transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}, not {transfer!r}")
        self.policy = policy
        self.python_executable = python_executable
        #: What ``result.node`` says ran the script (default: this machine's host name).
        self.node = node or socket.gethostname()
        self.slots_dir = slots_dir or ExperimentDefaults().cache_dir / "pool"
        self._engine = engine
        self._lock = threading.Lock()
        self._facts: EngineFacts | None = None
        self._engine_record: EngineRecord | None = None
        self._cold: ColdRuns | None = None
        self._active = ActiveRuns()
        self._spec: PoolSpec | None = None
        self._pool: WarmPool | None = None
        #: Pools of slots for runs below a fixed root with given outputs (``keep_warm``).
        self._kept: dict[tuple[Path, OutputLimits | None], WarmPool] = {}
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        #: Why a warm pool that was asked for is not kept, if it is not.
        self.pool_unavailable: str | None = None
        self._reaper = Reaper()
        # Removals still under way finish before the interpreter exits.
        weakref.finalize(self, self._reaper.drain)

    @property
    def engine(self) -> Engine:
        """The Docker seam, connected on first use."""
        with self._lock:
            if self._engine is None:
                self._engine = DockerEngine()
            return self._engine

    def prepare(self) -> EngineFacts:
        """Once per backend: find out what the engine is, sweep abandoned containers."""
        engine = self.engine
        with self._lock:
            if self._facts is None:
                facts = probe(engine, self.policy, self.transfer)
                # Containers of callers that crashed (or outlived their deadline) go now,
                # and so do the slot directories of pools that went with them.
                cleanup(engine, telemetry=facts.telemetry, slots_dir=self.slots_dir)
                self._cold = ColdRuns(
                    engine, self.policy, facts, self.route(facts), self._active,
                    self.python_executable, self._reaper,
                )  # fmt: skip
                self._facts = facts
            return self._facts

    def route(self, facts: EngineFacts) -> FileRoute:
        return FileRoute(self.transfer, facts.shares_files)

    def default_workers(self) -> int:
        """Runs at once that never book more CPU cores or memory than the engine has."""
        cores, memory = self.prepare().capacity()
        return sandboxes_that_fit(self.policy, cores, memory)

    def describe_files(self) -> str:
        """How files reach this engine's sandboxes, in words (for ``runner doctor``)."""
        return self.route(self.prepare()).describe()

    @property
    def telemetry_available(self) -> bool:
        """Whether peak memory and CPU time can be read from the engine's cgroups."""
        return self.prepare().telemetry is not None

    # the warm pool ---------------------------------------------------------

    @property
    def pool_size(self) -> int:
        return self._pool.size if self._pool is not None else 0

    @property
    def preload(self) -> tuple[str, ...]:
        return self._spec.preload if self._spec is not None else DEFAULT_PRELOAD

    @property
    def pool_root(self) -> Path | None:
        """Where the warm pool's slots are mounted now (scripts below it can run warm);
        None while a pool waits for a root, or without a pool."""
        return self._pool.root if self._pool is not None else None

    @property
    def pool(self) -> WarmPool | None:
        return self._pool

    def start_pool(self, spec: PoolSpec) -> None:
        """Keep ``spec.size`` containers started ahead (no more than the engine holds at
        once), the ``preload`` modules imported.

        Files reach a slot as they reach a cold run: on an engine that sees this
        machine's files through a directory here (hard links), elsewhere (or with
        ``transfer="copy"``) through a volume filled over the engine's API. A
        fixed root that would hide the image's own files raises ``ValueError``; a
        default one that would is noted in ``pool_unavailable``, and the pool
        starts where the first script's files are. With ``spec.outputs``, the
        pool serves runs with outputs within those limits (and only those).
        """
        self.prepare()
        root: Path | None = spec.root
        if not may_be_pool_root(spec.root):
            why = (
                f"{spec.root} cannot be the warm pool's root: mounted there, a slot's "
                "directory would hide the image's own files"
            )
            if spec.root_fixed:
                raise ValueError(f"{why}; choose another pool_root.")
            self.pool_unavailable = f"{why}; the pool starts where the first script is"
            root = None
        self.engine.image_id(self.policy.image)  # fail now, with a hint, if it is missing
        pool = WarmPool(
            min(spec.size, self.default_workers()), self._slot_maker(spec, spec.outputs), root
        )
        self._spec = spec
        self._pool = pool
        # The pool goes with the backend, or at interpreter exit, whichever comes first.
        self._finalizers = [weakref.finalize(self, pool.close)]

    def _slot_maker(self, spec: PoolSpec, outputs: OutputLimits | None) -> SlotMaker:
        facts = self.prepare()
        return SlotMaker(
            engine=self.engine,
            image=self.policy.image,
            policy=self.policy,
            command=[self.python_executable, "-c", SOURCE, *spec.preload],
            outputs=outputs,
            slots_dir=self.slots_dir,
            lifetime=POOL_IDLE_MAX + spec.timeout,
            telemetry=facts.telemetry,
            user_kernel=facts.user_kernel,
            support=facts.support.files,
            podman=facts.podman,
            through_engine=self.route(facts).through_engine,
        )

    def keep_warm(self, root: Path, outputs: OutputLimits | None) -> None:
        """Also keep slots ready for runs whose files lie below ``root`` (which never
        moves), with ``outputs`` (None: runs without outputs), as many as the pool has.

        For the runs a runner makes for itself (a held-out split's script and its
        scorer, in a directory of the runner's): they never move the caller's pool.
        Without a warm pool, nothing; the run that first asks is cold.
        """
        spec, main = self._spec, self._pool
        if spec is None or main is None or not may_be_pool_root(root):
            return
        with self._lock:
            if (root, outputs) in self._kept:
                return
        maker = self._slot_maker(spec, outputs)  # takes the lock itself (prepare)
        with self._lock:
            if (root, outputs) in self._kept:
                return
            pool = WarmPool(main.size, maker, root)
            self._kept[(root, outputs)] = pool
        self._finalizers.append(weakref.finalize(self, pool.close))

    def wait_for_warm(self, timeout: float) -> bool:
        """Block until every slot is ready; False on timeout or without a pool. A pool
        whose slots fail to start raises why."""
        if self._pool is None:
            return False
        until = time.monotonic() + timeout
        for pool in (self._pool, *self._kept.values()):
            ready = pool.wait_ready(max(until - time.monotonic(), 0.0))
            if not ready:
                if pool.error is not None:
                    raise pool.error
                return False
        return True

    def close(self) -> None:
        """Remove the warm pool's containers, and wait for the removals of finished runs
        left to the background (what an engine outage kept from going goes now, if the
        engine answers); runs are cold from then on."""
        if self._pool is not None:
            for finalizer in self._finalizers:
                finalizer()
            self._pool = None
            self._kept.clear()
        self._reaper.drain()
        if self._engine is not None:
            self._engine.remove_leftovers()

    # running ---------------------------------------------------------------

    def execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        """Run the request in a warm slot if one fits and is ready, else in a cold container."""
        try:
            execution = self._execute(request, on_output, token)
        finally:
            self._active.forget(token)
        return execution.model_copy(update={"node": self.node, "engine": self.engine_record()})

    def engine_record(self) -> EngineRecord:
        """The engine and runtime as the engine reports them, asked once (provenance)."""
        if self._engine_record is None:
            self._engine_record = engine_record(self.engine, self.policy.runtime)
        return self._engine_record

    def _execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        """One run through an engine that may go away meanwhile (a restart, say).

        A run that had not started waits for the engine to answer again, within its
        own timeout, then runs; a run whose script the outage cut off runs again, once,
        in a fresh sandbox, and says so in its stderr. Either way, what the outage left
        (containers, volumes the engine could not remove then) goes once it answers.
        """
        waits_until = time.monotonic() + request.timeout
        rerun = False
        while True:
            try:
                try:
                    execution = self._attempt(request, on_output, token)
                except EngineError as e:
                    # An engine on its way down still answers, with errors ("database
                    # not open"): one that stops answering right after was going away.
                    if self._active.aborted(token) or not self._going_away():
                        raise
                    raise self._outage(e, cut_off=e.after_start) from e
                if self._ended_by_the_engine(execution):
                    raise self._outage(None, cut_off=True)
            except EngineUnavailable as e:
                if self._active.aborted(token) or (e.cut_off and rerun):
                    raise
                self._await_engine(e, waits_until, request.timeout)
                rerun = rerun or e.cut_off
                continue
            if not rerun:
                return execution
            return execution.model_copy(update={"stderr": execution.stderr + RERUN_NOTE})

    def _ended_by_the_engine(self, execution: Execution) -> bool:
        """A sandbox that ended before its script did, on an engine that then went away:
        the engine stopped it (a restart stops every container first)."""
        ended_early = not (execution.exit_reported or execution.timed_out or execution.oom_killed)
        return ended_early and self._going_away()

    def _going_away(self) -> bool:
        """Whether the engine stops answering within ``OUTAGE_GRACE`` seconds."""
        until = time.monotonic() + OUTAGE_GRACE
        while True:
            if not self.engine.answers():
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(ENGINE_POLL / 5)

    def _outage(self, error: Exception | None, *, cut_off: bool) -> EngineUnavailable:
        what = f" (as it went, it answered: {error})" if error is not None else ""
        return EngineUnavailable(
            f"The Docker engine at {self.engine.describe()} stopped answering{what}",
            cut_off=cut_off,
        )

    def _await_engine(self, outage: EngineUnavailable, until: float, timeout: float) -> None:
        """Wait for the engine to answer again, then remove what the outage left."""
        while time.monotonic() < until:
            if self.engine.answers():
                self.engine.remove_leftovers()
                return
            time.sleep(ENGINE_POLL)
        raise EngineUnavailable(
            f"{outage.message} It did not answer again within {timeout:g} s, the run's "
            "timeout; the run did not run to its end.",
            hint=outage.hint,
        ) from outage

    def _attempt(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        facts = self.prepare()
        copies = self.route(facts).copies(request)  # transfer="bind": unreadable files raise
        slot = self._warm_slot(request)
        if slot is not None:
            try:
                return run_in_slot(
                    slot, request, on_output, token, self._active, readable=copies,
                    reaper=self._reaper,
                )  # fmt: skip
            except SlotUnusable:
                pass  # run cold instead
        if self._cold is None:
            raise AssertionError("prepare() makes the cold runs")
        return self._cold.run(request, on_output, token)

    def _warm_slot(self, request: RunRequest) -> Slot | None:
        """A ready slot that can show the request's files, if any.

        When the pool's root cannot show them and was not chosen explicitly, the
        pool moves (``pool_root_for``) and this run is cold while it refills.
        """
        pool, spec = self._pool, self._spec
        if pool is None or spec is None:
            return None
        outputs = request.outputs.limits if request.outputs else None
        for (kept_root, kept_for), kept in list(self._kept.items()):
            if kept_for == outputs and fits_pool(kept_root, request.script, request.mounts[1:]):
                return kept.take()  # the runner's own runs never move the caller's pool
        if spec.outputs != outputs:
            return None  # the slots were made for runs with (or without) these outputs
        root = pool.root
        if root is not None and fits_pool(root, request.script, request.mounts[1:]):
            return pool.take()
        if not spec.root_fixed and "\n" not in str(request.script):
            moved = pool_root_for(request.mounts, root)
            if moved is not None:
                pool.retarget(moved)
        return None

    def abort(self, tokens: Iterable[object]) -> None:
        """Remove the containers of the runs ``tokens`` name; those not started never start."""
        for container_id in self._active.abort(tokens):
            with contextlib.suppress(EngineUnavailable):  # it goes once the engine answers
                self.engine.remove(container_id)


# mypy checks here that the class meets the protocol the front talks to.
_MEETS_THE_PROTOCOL: type[Backend] = DockerBackend
