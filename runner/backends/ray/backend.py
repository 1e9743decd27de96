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
takes one of those sandboxes (``_Leases``: the first free one on any node, or
it waits), and a node that dies takes its sandboxes away, its runs going once
more to another node. Files reach a warm slot packed, through the node's
engine, as they reach a cold run there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import secrets
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.backends.local import DockerBackend, RunRequest, sandboxes_that_fit
from runner.core.exceptions import ExperimentExecutionError
from runner.core.sizes import parse_size
from runner.sandbox.artifacts import OutputLimits, Outputs, extract
from runner.sandbox.engine import DockerEngine, Engine
from runner.sandbox.files.transfer import pack
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.streams import OutputCallback

if TYPE_CHECKING:
    from types import ModuleType

#: Each run's container and volumes carry this label, valued with the run's ID.
LABEL_RUN = "io.experiment-runner.ray-run"
RAY_HINT = (
    "install the Ray extra on this machine and every node: pip install 'experiment-runner[ray]'."
)
#: Archives of directories and inputs kept in the object store for reuse, at most.
PACKED_KEPT = 256
#: How long cancelling waits for the cancelled tasks to end before sweeping again.
CANCEL_WAIT = 15.0
#: Seconds to reach an explicit cluster address before Ray is asked to connect.
CONNECT_TIMEOUT = 5.0


#: A cluster on this machine alone: no usage statistics, and a driver keeps the loopback
#: addresses (without the second, it swaps 127.0.0.1 for the machine's own address when
#: it connects, where a cluster bound to the loopback does not listen). Ray reads both
#: when it is imported.
LOCAL_RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK = "127.0.0.1"
#: Each node of ``local_cluster``, unless told otherwise (``Cluster.add_node``'s arguments).
LOCAL_NODE: dict[str, Any] = {
    "num_cpus": 2,
    "memory": 8 * 1024**3,
    "object_store_memory": 150 * 1024**2,
}


def _ray() -> ModuleType:
    """Ray, imported on first use: it is an optional extra."""
    # Nothing of this process's data leaves for Ray's usage statistics.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise ExperimentExecutionError("The Ray backend needs Ray.", hint=RAY_HINT) from e
    return ray


def ray_default_temp_dir() -> Path:
    """Where Ray keeps what it shares between sessions on this machine: ``RAY_TMPDIR``,
    else ``TMPDIR``, else ``/tmp``, then ``ray`` (as ``ray._common.utils`` finds it)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # noqa: S108
    return Path(base) / "ray"


@contextlib.contextmanager
def local_cluster(nodes: int = 2, **node: Any) -> Iterator[Any]:
    """A Ray cluster of ``nodes`` nodes on this machine, each bound to 127.0.0.1, with
    this process connected as its driver; yields ``ray.cluster_utils.Cluster``.

    ``node`` holds each node's arguments of ``Cluster.add_node`` (by default
    ``LOCAL_NODE``'s: 2 CPUs, 8 GiB of Ray's memory resource); the address is
    always the loopback.

    For trying the Ray backend, and for its tests: no dashboard, no usage
    statistics (``LOCAL_RAY_ENVIRONMENT``, set unless already set). It needs
    nothing an earlier run left behind: the session's files go to a directory of
    its own (under ``/tmp``: Ray's socket paths must stay short), removed
    afterwards, and the directory where ``Cluster`` notes the head's address
    (``ray_default_temp_dir()``; Ray writes there but never makes it) is made
    when missing and removed again if this call made it.
    """
    if nodes < 1:
        raise ValueError("a cluster needs at least one node")
    for name, value in LOCAL_RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    ray = _ray()
    from ray.cluster_utils import Cluster

    node = {**LOCAL_NODE, **node, "node_ip_address": LOOPBACK}
    shared = ray_default_temp_dir()
    made = not shared.exists()
    shared.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as session:
            cluster: Any = Cluster(
                initialize_head=True,
                head_node_args={**node, "include_dashboard": False, "temp_dir": session},
            )
            try:
                for _ in range(nodes - 1):
                    cluster.add_node(**node)
                ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
                yield cluster
            finally:
                ray.shutdown()
                cluster.shutdown()
    finally:
        if made:
            shutil.rmtree(shared, ignore_errors=True)


@dataclass(frozen=True)
class NodeCapacity:
    """One alive node of the cluster, and how many sandboxes of the policy it holds."""

    node_id: str
    host: str
    cpus: float
    memory: int
    sandboxes: int


@dataclass(frozen=True)
class NodeJob:
    """What a task takes to its node (the files travel beside it, packed)."""

    run_id: str
    policy: SandboxPolicy
    python_executable: str
    script: Path
    mounts: tuple[Path, ...]
    timeout: float
    output_limit: int
    args: tuple[str, ...]
    outputs: OutputLimits | None


@dataclass(frozen=True)
class PoolRequest:
    """A warm pool on each node, as ``start_pool`` was asked for it."""

    size: int
    timeout: float
    outputs: OutputLimits | None
    #: Where the pools start; ``pool_root_fixed``: the caller chose it, it stays put.
    pool_root: Path
    pool_root_fixed: bool
    preload: tuple[str, ...] | None


@dataclass(frozen=True)
class NodeOutcome:
    """What came back from a node: the run, or why it could not run there."""

    node: str
    execution: Execution | None = None
    #: With outputs on, the files the node collected, as a tar archive.
    artifacts: bytes | None = None
    error: str | None = None
    hint: str | None = None


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
    ) -> None:
        self.policy = policy
        self.address = address
        self.python_executable = python_executable
        #: A node that lacks the image builds it (only the runner's own: ``default_image``).
        self.build_missing = build_missing
        self.default_image = default_image
        #: Why a warm pool that was asked for is not kept (None: it is, or none was asked).
        self.pool_unavailable: str | None = None
        self._pool: PoolRequest | None = None
        self._pools: dict[str, Any] = {}
        self._leases: _Leases | None = None
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
            _reachable(self.address)
            if _loopback(self.address) and "ray" not in sys.modules:
                # A driver swaps a loopback address for the machine's own when it connects,
                # where a cluster bound to 127.0.0.1 does not listen; Ray's switch for a
                # cluster on one machine keeps it (read when Ray is imported).
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray = _ray()
            if not ray.is_initialized():
                try:
                    ray.init(
                        address=self.address,
                        logging_level=logging.WARNING,
                        log_to_driver=False,
                        # This driver's own servers listen on the loopback too.
                        **({"_node_ip_address": "127.0.0.1"} if _loopback(self.address) else {}),
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
        found = ray.get([_on(ray, check_node, node).remote(self.policy.image) for node in nodes])
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
            [_on(ray, build_node, node).remote(self.policy.image) for node in builders.values()]
        )
        failed = dict(zip(builders, done, strict=True))
        return [
            (node, failed[engine_id] or "", engine_id)
            for node, _, engine_id in lacking
            if failed[engine_id] is not None
        ]

    @property
    def nodes(self) -> list[NodeCapacity]:
        """The nodes that can hold a sandbox, as found when the backend connected."""
        return self.prepare()

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

    def start_pool(
        self,
        size: int,
        timeout: float,
        outputs: OutputLimits | None = None,
        *,
        pool_root: Path,
        pool_root_fixed: bool = False,
        preload: Sequence[str] | None = None,
    ) -> None:
        """Keep ``size`` warm sandboxes on each node (at most what the node holds at once).

        The pools start when the backend connects (``prepare``); ``pool_root``
        (fixed or not) and ``preload`` mean what they do for one machine's pool.
        """
        self._pool = PoolRequest(
            size, timeout, outputs, pool_root, pool_root_fixed,
            tuple(preload) if preload is not None else None,
        )  # fmt: skip

    @property
    def pool_size(self) -> int:
        """Warm sandboxes kept on each node (0: no pools)."""
        return self._pool.size if self._pool is not None else 0

    def wait_for_warm(self, timeout: float) -> bool:
        """Block until every node's pool is full; False on timeout or without pools."""
        ray = _ray()
        self.prepare()
        pools = list(self._pools.values())
        if not pools:
            return False
        ready = ray.get([pool.wait_ready.remote(timeout) for pool in pools], timeout=timeout + 30)
        return all(ready)

    def _start_pools(
        self, ray: ModuleType, nodes: Sequence[NodeCapacity], pool: PoolRequest
    ) -> None:
        """One ``NodePool`` actor on each node, booking the node's sandboxes."""
        actor = ray.remote(NodePool)
        memory = parse_size(self.policy.memory_limit)
        pools = {
            node.node_id: actor.options(
                num_cpus=node.sandboxes * self.policy.cpu_limit,
                memory=node.sandboxes * memory,
                scheduling_strategy=_pinned(node),
                # Its runs, and room to be told to abort or close while they go on.
                max_concurrency=node.sandboxes + 4,
                max_restarts=0,
            ).remote(
                self.policy,
                self.python_executable,
                node.node_id,
                min(pool.size, node.sandboxes),
                pool,
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
        self._leases = _Leases({node.node_id: node.sandboxes for node in nodes})
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
        ray = _ray()
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
            raise ExperimentExecutionError(
                f"The Ray task of this run failed: {type(e).__name__}: {e}",
                hint="see the Ray logs of the node it ran on.",
            ) from e
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
        leases: _Leases,
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
                raise ExperimentExecutionError(
                    f"The Ray call of this run failed: {type(e).__name__}: {e}",
                    hint="see the Ray logs of the node it ran on.",
                ) from e
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
        ray = _ray()
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
            _on(ray, sweep_node, node).remote(run_ids)
            for node in cluster_capacity(ray.nodes(), self.policy)
        ]
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT)


class _Leases:
    """The sandboxes of each node a runner's pools booked: a run takes a free one on any
    node, or waits for one; a dead node's are lost."""

    def __init__(self, sandboxes: dict[str, int]) -> None:
        self._free = dict(sandboxes)
        self._condition = threading.Condition()

    def take(self) -> str:
        """The node of a free sandbox, the one with the most free (the first, on a tie)."""
        with self._condition:
            while True:
                if not self._free:
                    raise ExperimentExecutionError(
                        "No node of the Ray cluster is left to run on (each died).",
                        hint="add nodes to the cluster and run again.",
                    )
                node = max(self._free, key=lambda n: self._free[n])
                if self._free[node] > 0:
                    self._free[node] -= 1
                    return node
                self._condition.wait()

    def give_back(self, node: str) -> None:
        with self._condition:
            if node in self._free:
                self._free[node] += 1
            self._condition.notify()

    def lose(self, node: str) -> None:
        with self._condition:
            self._free.pop(node, None)
            self._condition.notify_all()


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


def _on(ray: ModuleType, task: Any, node: NodeCapacity) -> Any:
    """``task`` as a Ray remote function pinned to ``node``, taking no CPU."""
    return ray.remote(task).options(num_cpus=0, scheduling_strategy=_pinned(node))


def _pinned(node: NodeCapacity) -> Any:
    """Ray's strategy that places a task or actor on ``node`` and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


def _received(outcome: NodeOutcome, request: RunRequest) -> Execution:
    """The node's record of the run, or the error that kept it from running there."""
    if outcome.execution is None:
        raise ExperimentExecutionError(
            f"On node {outcome.node[:12]}: {outcome.error}", hint=outcome.hint
        )
    execution = replace(outcome.execution, node=outcome.node)
    if request.outputs is None or outcome.artifacts is None:
        return execution
    return _with_artifacts(execution, outcome.artifacts, request.outputs)


def _with_artifacts(execution: Execution, archive: bytes, outputs: Outputs) -> Execution:
    """The node's record, with the files it collected written here (checked again)."""
    collected = extract(io.BytesIO(archive), outputs.destination, outputs.limits)
    messages = [m for m in (execution.artifacts_message, collected.message()) if m]
    return replace(
        execution,
        artifacts=tuple(collected.artifacts),
        artifacts_message=" ".join(messages) or None,
    )


def _address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of an explicit ``HOST:PORT`` (``auto`` and the like: None)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _loopback(address: str) -> bool:
    found = _address(address)
    return found is not None and found[0] in ("127.0.0.1", "localhost", "::1")


def _reachable(address: str) -> None:
    """Fail fast, with a hint, where nothing listens (Ray's own connect retries for minutes)."""
    found = _address(address)
    if found is None:
        return
    try:
        socket.create_connection(found, timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise ExperimentExecutionError(
            f"No Ray cluster answers at {address}: {e}.",
            hint="start one (`ray start --head --node-ip-address=127.0.0.1` for this "
            "machine alone) or pass its address (--ray HOST:PORT, RUNNER_CLUSTER).",
        ) from e


def cluster_capacity(nodes: Iterable[dict[str, Any]], policy: SandboxPolicy) -> list[NodeCapacity]:
    """Each alive node of ``ray.nodes()`` and the sandboxes of ``policy`` it holds.

    As Ray accounts for them: its ``CPU`` and ``memory`` resources against the
    task's request of ``cpu_limit`` and ``memory_limit`` (0 when one does not fit).
    """
    found = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        cpus = float(resources.get("CPU", 0))
        memory = int(resources.get("memory", 0))
        fits = cpus >= policy.cpu_limit and memory >= parse_size(policy.memory_limit)
        found.append(
            NodeCapacity(
                node_id=str(node["NodeID"]),
                host=str(node.get("NodeManagerHostname") or node.get("NodeManagerAddress")),
                cpus=cpus,
                memory=memory,
                sandboxes=sandboxes_that_fit(policy, cpus, memory) if fits else 0,
            )
        )
    return found


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


# on the node -----------------------------------------------------------------


# A Ray worker process runs task after task: its backend (the engine's connection, the
# checks of ``prepare``) is made once, not once per run.
@functools.lru_cache(maxsize=8)
def node_backend(policy: SandboxPolicy, python_executable: str, node: str) -> DockerBackend:
    """The node's backend, made once per Ray worker process (workers run task after task).

    Its engine is the node's own (``DOCKER_HOST`` as the node has it); files
    always arrive packed: unpacked on the node and bound where its engine sees
    the node's files, else copied into a volume there.
    """
    return DockerBackend(policy, python_executable=python_executable, transfer="auto", node=node)


def run_on_node(job: NodeJob, *packed: bytes) -> NodeOutcome:
    """A Ray task: run ``job`` in a fresh sandbox on this node's engine."""
    node = _ray().get_runtime_context().get_node_id()
    backend = node_backend(job.policy, job.python_executable, node)
    _to_the_end(backend.prepare)
    return run_job(job, packed, backend)


def _to_the_end(work: Callable[[], object]) -> None:
    """Do ``work`` in a thread of its own, to its end even if the task is cancelled.

    Cancelling a task raises KeyboardInterrupt in its thread wherever it is; the
    backend's preparation makes helper containers that carry no run's label (the
    sweep would miss one made and not yet removed). The interrupt lands in the
    wait here instead, and the thread finishes and removes them.
    """
    # Leaving the block waits for the thread, interrupted or not.
    with ThreadPoolExecutor(1, thread_name_prefix="runner-prepare") as pool:
        pool.submit(work).result()


class NodePool:
    """A Ray actor on one node: that node's warm pool, and the runs that use it.

    ``RayBackend`` makes one per node (pinned there) when asked for warm pools.
    """

    def __init__(
        self,
        policy: SandboxPolicy,
        python_executable: str,
        node: str,
        size: int,
        pool: PoolRequest,
        engine: Engine | None = None,
    ) -> None:
        self.backend = DockerBackend(
            policy,
            engine=engine,
            python_executable=python_executable,
            transfer="auto",
            node=node,
            pool_root=pool.pool_root,
            preload=pool.preload,
        )
        # The caller's default root (not one it chose) moves to where the scripts are.
        self.backend.pool_root_fixed = pool.pool_root_fixed
        self.backend.start_pool(size, pool.timeout, pool.outputs)
        self._tokens: dict[str, object] = {}
        self._aborted: set[str] = set()
        self._lock = threading.Lock()

    def started(self) -> str:
        """The node's ID, once the pool is starting (its errors raise here)."""
        return self.backend.node

    def wait_ready(self, timeout: float) -> bool:
        pool = self.backend.pool
        return pool is not None and pool.wait_ready(timeout)

    def run(self, job: NodeJob, *packed: bytes) -> NodeOutcome:
        """Run ``job`` in a warm slot of this node (or a cold sandbox, if none fits)."""
        token = object()
        with self._lock:
            if job.run_id in self._aborted:
                return NodeOutcome(node=self.backend.node, error="The run was cancelled.")
            self._tokens[job.run_id] = token
        try:
            return run_job(job, packed, self.backend, token)
        finally:
            with self._lock:
                self._tokens.pop(job.run_id, None)

    def abort(self, run_ids: Sequence[str]) -> None:
        """Remove the runs' containers (the ones not started never start)."""
        with self._lock:
            self._aborted.update(run_ids)
            tokens = [self._tokens[r] for r in run_ids if r in self._tokens]
        self.backend.abort(tokens)
        sweep(self.backend.engine, run_ids)

    def close(self) -> None:
        self.backend.close()


def run_job(
    job: NodeJob, packed: Sequence[bytes], backend: DockerBackend, token: object | None = None
) -> NodeOutcome:
    """Run ``job`` through ``backend`` with its packed files; what goes back to the caller."""
    try:
        # An earlier attempt of this run (its node's task died) may have left its sandbox.
        sweep(backend.engine, [job.run_id])
        with tempfile.TemporaryDirectory(prefix="runner-outputs-") as tmp:
            outputs = (
                Outputs(Path(tmp), job.outputs, links=job.script.parent)
                if job.outputs is not None
                else None
            )
            request = RunRequest(
                script=job.script,
                mounts=job.mounts,
                timeout=job.timeout,
                output_limit=job.output_limit,
                args=job.args,
                outputs=outputs,
                packed=tuple(packed),
                labels=((LABEL_RUN, job.run_id),),
            )
            execution = backend.execute(request, None, token or object())
            artifacts = _repack(Path(tmp), execution) if outputs is not None else None
    except ExperimentExecutionError as e:
        message = str(e).removesuffix(f" Hint: {e.hint}") if e.hint else str(e)
        return NodeOutcome(node=backend.node, error=message, hint=e.hint)
    return NodeOutcome(
        node=backend.node, execution=replace(execution, artifacts=()), artifacts=artifacts
    )


def _repack(directory: Path, execution: Execution) -> bytes:
    """The files the node collected (already checked there), as a tar for the caller."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for artifact in execution.artifacts:
            tar.add(directory / artifact.name, arcname=artifact.name, recursive=False)
    return out.getvalue()


def check_node(image: str) -> tuple[str | None, str]:
    """A Ray task: None when this node's engine has ``image``, else what is wrong; and
    the engine's ID (nodes on one machine may share an engine)."""
    engine = DockerEngine()
    try:
        engine_id = str(engine.info().get("ID") or "")
    except ExperimentExecutionError as e:
        return str(e), ""
    try:
        engine.image_id(image)
    except ExperimentExecutionError as e:
        return str(e), engine_id
    return None, engine_id


def build_node(image: str) -> str | None:
    """A Ray task: build ``image`` from the runner's own definition on this node's engine
    (as ``runner image build`` does); None when it is there, else what went wrong."""
    from runner.image.build import build_image

    try:
        build_image(DockerEngine(), tag=image, log=lambda message: None)
    except (ExperimentExecutionError, OSError, ValueError) as e:
        return f"building it failed: {e}"
    return None


def sweep_node(run_ids: Sequence[str]) -> int:
    """A Ray task: remove the containers and volumes of ``run_ids`` on this node's engine."""
    return sweep(DockerEngine(), run_ids)


def sweep(engine: Engine, run_ids: Iterable[str]) -> int:
    """Remove what carries ``LABEL_RUN`` with one of ``run_ids``: containers, then volumes."""
    removed = 0
    for run_id in run_ids:
        for container in engine.containers(f"{LABEL_RUN}={run_id}"):
            engine.remove(container.id)
            removed += 1
        for volume in engine.volumes(f"{LABEL_RUN}={run_id}"):
            # One a container elsewhere still mounts is refused; the project's cleanup takes it.
            with contextlib.suppress(ExperimentExecutionError):
                engine.remove_volume(volume.name)
    return removed
