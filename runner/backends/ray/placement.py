"""Where Ray may place sandboxes: each node's capacity for a policy, the leases of a
runner's warm sandboxes, pinning a task to a node, and reaching the cluster at all."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.backends.base import sandboxes_that_fit
from runner.core.exceptions import ExperimentExecutionError
from runner.core.sizes import parse_size
from runner.sandbox.policy import SandboxPolicy

if TYPE_CHECKING:
    from types import ModuleType

RAY_HINT = (
    "install the Ray extra on this machine and every node: pip install 'experiment-runner[ray]'."
)

#: Seconds to reach an explicit cluster address before Ray is asked to connect.
CONNECT_TIMEOUT = 5.0

#: A cluster on this machine alone: no usage statistics, and a driver keeps the loopback
#: addresses (without the second, it swaps 127.0.0.1 for the machine's own address when
#: it connects, where a cluster bound to the loopback does not listen). Ray reads both
#: when it is imported.
LOCAL_RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

LOOPBACK = "127.0.0.1"


def import_ray() -> ModuleType:
    """Ray, imported on first use: it is an optional extra."""
    # Nothing of this process's data leaves for Ray's usage statistics.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise ExperimentExecutionError("The Ray backend needs Ray.", hint=RAY_HINT) from e
    return ray


@dataclass(frozen=True)
class NodeCapacity:
    """One alive node of the cluster, and how many sandboxes of the policy it holds."""

    node_id: str
    host: str
    cpus: float
    memory: int
    sandboxes: int


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


class Leases:
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


def pinned_task(ray: ModuleType, task: Any, node: NodeCapacity) -> Any:
    """``task`` as a Ray remote function pinned to ``node``, taking no CPU."""
    return ray.remote(task).options(num_cpus=0, scheduling_strategy=pinned(node))


def pinned(node: NodeCapacity) -> Any:
    """Ray's strategy that places a task or actor on ``node`` and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


def host_and_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of an explicit ``HOST:PORT`` (``auto`` and the like: None)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    found = host_and_port(address)
    return found is not None and found[0] in ("127.0.0.1", "localhost", "::1")


def check_reachable(address: str) -> None:
    """Fail fast, with a hint, where nothing listens (Ray's own connect retries for minutes)."""
    found = host_and_port(address)
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
