"""A Ray cluster on this machine alone, for trying the Ray backend and for its tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.backends.ray.placement import LOCAL_RAY_ENVIRONMENT, LOOPBACK, import_ray

#: Each node of ``local_cluster``, unless told otherwise (``Cluster.add_node``'s arguments).
LOCAL_NODE: dict[str, Any] = {
    "num_cpus": 2,
    "memory": 8 * 1024**3,
    "object_store_memory": 150 * 1024**2,
}


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
    ray = import_ray()
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
