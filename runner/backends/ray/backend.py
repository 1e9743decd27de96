"""Ray as a backend: each run is a Ray task that runs the same sandbox on its node's engine.

``RayBackend`` stands where ``DockerBackend`` does, behind ``ExperimentRunner``:
it packs a run's files (``runner.sandbox.files.transfer.pack``) and puts them in Ray's object
store (each directory or input once, shared by every task that needs it), and
sends a task to the cluster. On the node, the task hands the archives and the
run to a ``DockerBackend`` of that node's engine: the one hardened lifecycle,
with the files copied into a volume there (never a path of the caller's
machine), and sends back the ``Execution`` with the node's ID.

Capacity is Ray's own accounting: each task asks for ``cpu_limit`` CPUs and
``memory_limit`` bytes of Ray's ``memory`` resource, so no node runs more
sandboxes than its CPUs and memory hold (what ``default_workers()`` counts for
one machine), and what does not fit queues. A task whose node dies is run again
once, elsewhere (Ray's ``max_retries=1``: only system failures are retried; what
a script does is a result, never an exception). Cancelling removes the runs'
containers on every node: each carries a label with its run's ID.

With a warm pool (``start_pool``), each node keeps its own: one ``NodePool``
actor per node, pinned there, holds a ``DockerBackend`` with the pool and runs
that node's jobs. The actor books the node's sandboxes (their CPUs and memory)
for as long as the runner lives, so Ray places nothing else on them; each run
takes one of those sandboxes (``Leases``: a free one on the node with the most, or
it waits), and a node that dies takes its sandboxes away, its runs going once
more to another node. Files reach a warm slot packed, through the node's
engine, as they reach a cold run there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import secrets
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.backends.base import Backend, BackendOptions, PoolSpec
from runner.backends.ray.node import (
    NodeJob,
    NodeOutcome,
    NodePool,
    build_node,
    check_node,
    run_on_node,
    sweep_node,
)
from runner.backends.ray.placement import (
    Leases,
    NodeCapacity,
    check_reachable,
    cluster_capacity,
    import_ray,
    is_loopback,
    pinned,
    pinned_task,
)
from runner.core.exceptions import ExperimentExecutionError
from runner.core.sizes import parse_size
from runner.sandbox.artifacts import OutputLimits, Outputs, extract
from runner.sandbox.engine import Engine
from runner.sandbox.files.transfer import pack
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback

if TYPE_CHECKING:
    from types import ModuleType


#: Archives of directories and inputs kept in the object store for reuse, at most.
PACKED_KEPT = 256

#: How long cancelling waits for the cancelled tasks to end before sweeping again.
CANCEL_WAIT = 15.0


def open(options: BackendOptions) -> RayBackend:
    """The backend of ``options`` on the Ray cluster it names (``BACKENDS["ray"]``)."""
    if options.cluster is None:
        raise ValueError("a Ray backend needs a cluster's address, or auto")
    if options.engine is not None:
        raise ValueError(
            "on a Ray cluster each node runs sandboxes on its own engine: "
            "engine= is for this machine's engine"
        )
    return RayBackend(
        options.policy,
        address=options.cluster,
        python_executable=options.python_executable,
        build_missing=options.build_missing,
        default_image=options.default_image,
        pool=options.pool,
    )


class RayBackend:
    """Runs each request as a Ray task on a cluster; the node's engine runs the sandbox."""

    def __init__(
        self,
        policy: SandboxPolicy,
        *,
        address: str,
        python_executable: str = "python",
        build_missing: bool = False,
        default_image: str | None = None,
        pool: PoolSpec | None = None,
    ) -> None:
        self.policy = policy
        self.address = address
        self.python_executable = python_executable
        #: A node that lacks the image builds it (only the runner's own: ``default_image``).
        self.build_missing = build_missing
        self.default_image = default_image
        #: Why a warm pool that was asked for is not kept (None: it is, or none was asked).
        self.pool_unavailable: str | None = None
        #: A warm pool on each node, started when the backend connects (``prepare``).
        self._pool = pool
        self._pools: dict[str, Any] = {}
        self._leases: Leases | None = None
        self._pools_finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()
        self._nodes: list[NodeCapacity] | None = None
        #: Each run under way: its ID, its Ray reference and (warm) the pool running it.
        self._runs: dict[object, tuple[str, Any, Any]] = {}
        self._aborted: set[object] = set()
        self._packed: OrderedDict[tuple[Path, str], Any] = OrderedDict()
        self._remote: Any = None

    # the cluster -------------------------------------------------------------

    def prepare(self) -> list[NodeCapacity]:
        """Connect once; check every node can run the policy's sandboxes and has the image."""
        with self._lock:
            if self._nodes is not None:
                return self._nodes
            check_reachable(self.address)
            if is_loopback(self.address) and "ray" not in sys.modules:
                # A driver swaps a loopback address for the machine's own when it connects,
                # where a cluster bound to 127.0.0.1 does not listen; Ray's switch for a
                # cluster on one machine keeps it (read when Ray is imported).
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray = import_ray()
            if not ray.is_initialized():
                try:
                    ray.init(
                        address=self.address,
                        logging_level=logging.WARNING,
                        log_to_driver=False,
                        # This driver's own servers listen on the loopback too.
                        **({"_node_ip_address": "127.0.0.1"} if is_loopback(self.address) else {}),
                    )
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise ExperimentExecutionError(
                        f"No Ray cluster answered at {self.address!r}: {e}",
                        hint="start one (`ray start --head --node-ip-address=127.0.0.1` "
                        "for this machine alone) or pass its address (--ray HOST:PORT, "
                        "RUNNER_CLUSTER).",
                    ) from e
            self._remote = ray.remote(run_on_node)
            nodes = cluster_capacity(ray.nodes(), self.policy)
            usable = [node for node in nodes if node.sandboxes > 0]
            if not usable:
                described = "; ".join(
                    f"{n.host} {n.node_id[:12]}: {n.cpus:g} CPUs, {n.memory / 2**30:.1f} GiB"
                    for n in nodes
                )
                raise ExperimentExecutionError(
                    f"No node of the Ray cluster can hold a sandbox of {self.policy.cpu_limit:g} "
                    f"CPUs and {self.policy.memory_limit} ({described or 'no alive nodes'}).",
                    hint="lower cpu_limit or memory_limit, or add a larger node.",
                )
            self._check_images(ray, usable)
            if self._pool is not None:
                self._start_pools(ray, usable, self._pool)
            self._nodes = usable
            return usable

    def _check_images(self, ray: ModuleType, nodes: Sequence[NodeCapacity]) -> None:
        """The image on every node's engine: a clear error naming each node that lacks it,
        or (``build_missing``) built there first."""
        lacking = self._lacking_image(ray, nodes)
        hint = (
            "build it on each of them (`runner image build`, or `runner image build "
            "--requirements ... --tag NAME` for a user image)"
        )
        if lacking and self.build_missing:
            if self.policy.image != self.default_image:
                hint += (
                    f"; build_missing builds only the runner's own image ({self.default_image}), "
                    "whose definition ships with the package"
                )
            else:
                failed = self._build(ray, lacking)
                lacking = failed or self._lacking_image(ray, [node for node, _, _ in lacking])
        if lacking:
            raise ExperimentExecutionError(
                f"The sandbox image {self.policy.image} cannot run on every node: "
                + "; ".join(f"node {n.host} {n.node_id[:12]}: {problem}"
                            for n, problem, _ in lacking),
                hint=hint + (" (or pass build_missing / --build-missing)." if not
                             self.build_missing else "."),
            )  # fmt: skip

    def _lacking_image(
        self, ray: ModuleType, nodes: Sequence[NodeCapacity]
    ) -> list[tuple[NodeCapacity, str, str]]:
        """Each node whose engine lacks the image: what is wrong, and the engine's ID."""
        found = ray.get(
            [pinned_task(ray, check_node, node).remote(self.policy.image) for node in nodes]
        )
        return [
            (node, problem, engine_id)
            for node, (problem, engine_id) in zip(nodes, found, strict=True)
            if problem is not None
        ]

    def _build(
        self, ray: ModuleType, lacking: Sequence[tuple[NodeCapacity, str, str]]
    ) -> list[tuple[NodeCapacity, str, str]]:
        """Build the image on one node of each engine that lacks it (nodes on one machine
        may share one), all engines at once; the nodes whose build failed, and why."""
        builders = {engine_id: node for node, _, engine_id in reversed(lacking)}
        done = ray.get(
            [
                pinned_task(ray, build_node, node).remote(self.policy.image)
                for node in builders.values()
            ]
        )
        failed = dict(zip(builders, done, strict=True))
        return [
            (node, failed[engine_id] or "", engine_id)
            for node, _, engine_id in lacking
            if failed[engine_id] is not None
        ]

    def default_workers(self) -> int:
        """Sandboxes the cluster's nodes hold at once, each node counted as one machine."""
        return sum(node.sandboxes for node in self.prepare())

    def describe_files(self) -> str:
        return "packed here, sent through Ray's object store, copied into a volume on each node"

    @property
    def telemetry_available(self) -> bool:
        return False

    def close(self) -> None:
        """Forget the archives kept in the object store and end each node's warm pool
        (the cluster stays; later runs are cold)."""
        with self._lock:
            self._packed.clear()
            pools, self._pools = self._pools, {}
            # As on one machine: once closed, the runner's runs go cold.
            self._leases = None
            self._pool = None
            if self._pools_finalizer is not None:
                self._pools_finalizer.detach()
        _end_pools(pools)

    # warm pools, one per node ------------------------------------------------

    @property
    def pool_size(self) -> int:
        """Warm sandboxes kept on each node (0: no pools)."""
        return self._pool.size if self._pool is not None else 0

    @property
    def preload(self) -> tuple[str, ...]:
        return self._pool.preload if self._pool is not None else ()

    @property
    def pool_root(self) -> Path | None:
        """Where each node's pool starts (it moves there as on one machine)."""
        return self._pool.root if self._pool is not None else None

    @property
    def engine(self) -> Engine:
        raise ValueError("on a Ray cluster, each node's own engine runs the sandboxes")

    def wait_for_warm(self, timeout: float) -> bool:
        """Block until every node's pool is full; False on timeout or without pools."""
        ray = import_ray()
        self.prepare()
        pools = list(self._pools.values())
        if not pools:
            return False
        ready = ray.get([pool.wait_ready.remote(timeout) for pool in pools], timeout=timeout + 30)
        return all(ready)

    def keep_warm(self, root: Path, outputs: OutputLimits | None) -> None:
        """Nothing: a node's pool serves the runs whose files it can show; the runner's own
        runs there are cold."""

    def _start_pools(self, ray: ModuleType, nodes: Sequence[NodeCapacity], pool: PoolSpec) -> None:
        """One ``NodePool`` actor on each node, booking the node's sandboxes."""
        actor = ray.remote(NodePool)
        memory = parse_size(self.policy.memory_limit)
        pools = {
            node.node_id: actor.options(
                num_cpus=node.sandboxes * self.policy.cpu_limit,
                memory=node.sandboxes * memory,
                scheduling_strategy=pinned(node),
                # Its runs, and room to be told to abort or close while they go on.
                max_concurrency=node.sandboxes + 4,
                max_restarts=0,
            ).remote(
                self.policy,
                self.python_executable,
                node.node_id,
                replace(pool, size=min(pool.size, node.sandboxes)),
            )
            for node in nodes
        }
        try:
            ray.get([handle.started.remote() for handle in pools.values()])
        except ray.exceptions.RayError as e:
            _end_pools(pools)
            raise ExperimentExecutionError(
                f"A node's warm pool could not start: {e}",
                hint="see the Ray logs of that node; without warm_pool the runs go cold.",
            ) from e
        self._pools = pools
        self._leases = Leases({node.node_id: node.sandboxes for node in nodes})
        # The pools go with the backend, or at interpreter exit, whichever comes first.
        self._pools_finalizer = weakref.finalize(self, _end_pools, dict(pools))

    # running -----------------------------------------------------------------

    def execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        """Run ``request`` as a Ray task; wait for its node's record."""
        if on_output is not None:
            raise ExperimentExecutionError(
                "Live output (on_output) is not available on a Ray cluster.",
                hint="read result.stdout and result.stderr once the run is over.",
            )
        ray = import_ray()
        self.prepare()
        packed = [self._put(ray, path) for path in request.mounts]
        run_id = secrets.token_hex(8)
        job = NodeJob(
            run_id=run_id,
            policy=self.policy,
            python_executable=self.python_executable,
            script=request.script,
            mounts=request.mounts,
            timeout=request.timeout,
            output_limit=request.output_limit,
            args=request.args,
            outputs=request.outputs.limits if request.outputs is not None else None,
            environment=request.environment,
        )
        if self._leases is not None:
            return self._execute_pooled(ray, request, job, packed, token)
        with self._lock:
            if token in self._aborted:
                raise ExperimentExecutionError("The run was cancelled before it started.")
            ref = self._remote.options(
                num_cpus=self.policy.cpu_limit,
                memory=parse_size(self.policy.memory_limit),
                scheduling_strategy="SPREAD",
                # Ray retries only system failures (a dead node or worker): once, elsewhere.
                max_retries=1,
                retry_exceptions=False,
            ).remote(job, *packed)
            self._runs[token] = (run_id, ref, None)
        try:
            outcome: NodeOutcome = ray.get(ref)
        except ray.exceptions.TaskCancelledError as e:
            raise ExperimentExecutionError("The run was cancelled.") from e
        except ray.exceptions.RayError as e:
            raise _ray_failed(e) from e
        finally:
            with self._lock:
                self._runs.pop(token, None)
                self._aborted.discard(token)
        return _received(outcome, request)

    def _execute_pooled(
        self, ray: ModuleType, request: RunRequest, job: NodeJob, packed: list[Any], token: object
    ) -> Execution:
        """Run on the first node with a free sandbox, by its pool; once more elsewhere if
        the node dies."""
        leases = self._leases
        if leases is None:
            raise ExperimentExecutionError("The runner's warm pools were closed.")
        try:
            return self._run_pooled(ray, leases, request, job, packed, token)
        finally:
            with self._lock:
                self._aborted.discard(token)

    def _run_pooled(
        self,
        ray: ModuleType,
        leases: Leases,
        request: RunRequest,
        job: NodeJob,
        packed: list[Any],
        token: object,
    ) -> Execution:
        for attempt in (1, 2):
            node = leases.take()
            with self._lock:
                if token in self._aborted:
                    leases.give_back(node)
                    raise ExperimentExecutionError("The run was cancelled before it started.")
                pool = self._pools.get(node)
                if pool is None:  # closed meanwhile
                    raise ExperimentExecutionError("The runner's warm pools were closed.")
                ref = pool.run.remote(job, *packed)
                self._runs[token] = (job.run_id, ref, pool)
            try:
                outcome: NodeOutcome = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                leases.lose(node)  # the node (or its pool) is gone: so are its sandboxes
                if attempt == 2 or token in self._aborted:
                    raise ExperimentExecutionError(
                        f"The run's node died twice (last: {node[:12]}): {e}",
                        hint="see the Ray logs of those nodes.",
                    ) from e
                continue
            except ray.exceptions.RayError as e:
                leases.give_back(node)
                raise _ray_failed(e) from e
            finally:
                with self._lock:
                    self._runs.pop(token, None)
            leases.give_back(node)
            return _received(outcome, request)
        raise AssertionError("unreachable")

    def _put(self, ray: ModuleType, path: Path) -> Any:
        """The object store's copy of ``path`` packed; put once while it is unchanged."""
        key = (path, fingerprint(path))
        with self._lock:
            ref = self._packed.get(key)
            if ref is not None:
                self._packed.move_to_end(key)
                return ref
        ref = ray.put(pack([path]))
        with self._lock:
            self._packed[key] = ref
            while len(self._packed) > PACKED_KEPT:
                self._packed.popitem(last=False)
        return ref

    def abort(self, tokens: Iterable[object]) -> None:
        """Cancel the runs' tasks and remove their containers on every node."""
        ray = import_ray()
        with self._lock:
            found = []
            for token in tokens:
                self._aborted.add(token)
                if token in self._runs:
                    found.append(self._runs[token])
        if not found or not ray.is_initialized():
            return
        run_ids = [run_id for run_id, _, _ in found]
        refs = [ref for _, ref, _ in found]
        for run_id, ref, pool in found:
            with contextlib.suppress(Exception):
                if pool is not None:
                    pool.abort.remote([run_id])  # its slot carries no run label
                else:
                    ray.cancel(ref)
        # A running task waits on its container: removing it ends the task.
        self._sweep(ray, run_ids)
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT)
        self._sweep(ray, run_ids)  # anything a task made while the first sweep ran

    def _sweep(self, ray: ModuleType, run_ids: Sequence[str]) -> None:
        refs = [
            pinned_task(ray, sweep_node, node).remote(run_ids)
            for node in cluster_capacity(ray.nodes(), self.policy)
        ]
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT)


def _end_pools(pools: dict[str, Any]) -> None:
    """Close each node's pool (its slots removed), then end its actor."""
    if not pools or "ray" not in sys.modules:
        return
    ray = sys.modules["ray"]
    if not ray.is_initialized():
        return
    closing = [pool.close.remote() for pool in pools.values()]
    with contextlib.suppress(Exception):
        ray.wait(closing, num_returns=len(closing), timeout=CANCEL_WAIT)
    for pool in pools.values():
        with contextlib.suppress(Exception):
            ray.kill(pool)


def _ray_failed(error: Exception) -> ExperimentExecutionError:
    """A Ray failure of a run (not the script's: that is a result), for the caller."""
    return ExperimentExecutionError(
        f"The Ray task of this run failed: {type(error).__name__}: {error}",
        hint="see the Ray logs of the node it ran on.",
    )


def _received(outcome: NodeOutcome, request: RunRequest) -> Execution:
    """The node's record of the run, or the error that kept it from running there."""
    if outcome.execution is None:
        raise ExperimentExecutionError(
            f"On node {outcome.node[:12]}: {outcome.error}", hint=outcome.hint
        )
    execution = outcome.execution.model_copy(update={"node": outcome.node})
    if request.outputs is None or outcome.artifacts is None:
        return execution
    return _with_artifacts(execution, outcome.artifacts, request.outputs)


def _with_artifacts(execution: Execution, archive: bytes, outputs: Outputs) -> Execution:
    """The node's record, with the files it collected written here (checked again)."""
    collected = extract(
        io.BytesIO(archive), outputs.destination, outputs.limits, below=outputs.below
    )
    messages = [m for m in (execution.artifacts_message, collected.message()) if m]
    return execution.model_copy(
        update={
            "artifacts": tuple(collected.artifacts),
            "artifacts_message": " ".join(messages) or None,
        }
    )


def fingerprint(path: Path) -> str:
    """Changes when anything below ``path`` is added, removed, resized or modified."""
    entries = []
    for entry in _entries(path):
        st = entry.stat(follow_symlinks=False)
        entries.append(f"{entry.path}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}")
    st = path.stat()
    entries.append(f"\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode(errors="surrogateescape")).hexdigest()


def _entries(path: Path) -> Iterator[os.DirEntry[str]]:
    if not path.is_dir() or path.is_symlink():
        return
    with os.scandir(path) as listing:
        for entry in listing:
            yield entry
            if entry.is_dir(follow_symlinks=False):
                yield from _entries(Path(entry.path))


# mypy checks here that the class meets the protocol the front talks to.
_MEETS_THE_PROTOCOL: type[Backend] = RayBackend
