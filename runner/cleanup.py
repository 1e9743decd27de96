"""Removing containers that a crashed or interrupted caller left behind."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

from runner.engine import ContainerInfo, DockerEngine
from runner.sandbox import LABEL, LABEL_DEADLINE, LABEL_OWNER, process_start_time
from runner.telemetry import CgroupTelemetry


def is_abandoned(labels: Mapping[str, str], now: float | None = None) -> bool:
    """True when no live caller owns the container, or its deadline has passed."""
    now = time.time() if now is None else now
    try:
        if float(labels.get(LABEL_DEADLINE, "0")) < now:
            return True
    except ValueError:
        return True
    host, _, rest = labels.get(LABEL_OWNER, "").partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        # Another machine's caller: only its deadline tells.
        return False
    if not pid_text.isdigit():
        return True
    return process_start_time(int(pid_text)) != start


def cleanup(
    engine: DockerEngine | None = None,
    *,
    everything: bool = False,
    telemetry: CgroupTelemetry | None = None,
) -> list[ContainerInfo]:
    """Remove the project's abandoned containers (all of them with ``everything``).

    Containers of runs still in progress in a live process are left alone
    unless ``everything`` is set. With ``telemetry``, empty per-run cgroup
    parents left by crashed callers go too.
    """
    engine = engine or DockerEngine()
    removed = []
    for container in engine.containers(f"{LABEL}=1"):
        if everything or is_abandoned(container.labels):
            engine.remove(container.id)
            removed.append(container)
    if telemetry is not None:
        telemetry.release_stale()
    return removed
