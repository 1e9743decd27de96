"""Ownership and clean-up: the labels every container and volume carries, and removing
what a crashed or interrupted caller left behind."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.sandbox import identity
from runner.sandbox.engine import ContainerInfo, DockerEngine, Engine
from runner.sandbox.lifeline import OWNER_LABEL
from runner.sandbox.telemetry import CgroupTelemetry

#: Every container the project starts carries this label (value: "1").
LABEL = "io.experiment-runner.managed"
LABEL_OWNER = OWNER_LABEL
LABEL_DEADLINE = "io.experiment-runner.deadline"
#: A warm pool container's host directory (its name under the pool directory).
LABEL_SLOT = "io.experiment-runner.slot"
#: The group of the process that made it (``RUNNER_GROUP``), where one was set.
LABEL_GROUP = "io.experiment-runner.group"


def current_group() -> str | None:
    """This process's group (``RUNNER_GROUP``, checked as the setting checks it), if any."""
    raw = os.environ.get("RUNNER_GROUP") or None
    return _checked_group(raw) if raw is not None else None


@functools.cache
def _checked_group(raw: str) -> str:
    return ExperimentDefaults(group=raw).group or raw


def in_group(labels: Mapping[str, str], group: str | None) -> bool:
    """Whether something with ``labels`` is the group's (everything is, without a group)."""
    return group is None or labels.get(LABEL_GROUP) == group


def owner_label() -> str:
    """Who started a container: host, PID and the PID's start time (against PID reuse)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def process_start_time(pid: int) -> str:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    # Field 22 (starttime) follows the parenthesised command name.
    return stat_line.rsplit(")", 1)[1].split()[19]


def build_labels(deadline: float, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels of everything a run makes: the project's, its owner, its deadline, and
    this process's group where one is set."""
    labels = {LABEL: "1", LABEL_OWNER: owner_label(), LABEL_DEADLINE: f"{deadline:.0f}"}
    group = current_group()
    if group is not None:
        labels[LABEL_GROUP] = group
    labels.update(extra or {})
    return labels


def deadline_after(timeout: float, grace: float = 30.0) -> float:
    """The wall-clock time after which a container is fair game for cleanup."""
    return time.time() + timeout + grace


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
    engine: Engine | None = None,
    *,
    everything: bool = False,
    telemetry: CgroupTelemetry | None = None,
    slots_dir: Path | None = None,
    group: str | None = None,
) -> list[ContainerInfo]:
    """Remove the project's abandoned containers (all of them with ``everything``).

    Containers of runs still in progress in a live process are left alone
    unless ``everything`` is set; the same goes for volumes of copied files
    (a warm pool slot's volume and its never-started helper container too).
    With a ``group`` (default: this process's, ``RUNNER_GROUP``), only that
    group's containers and volumes are touched, ``everything`` included.
    Warm pool directories under ``slots_dir`` (default: the cache directory's
    ``pool``) that no remaining container uses go too, and so do user ID leases
    no live process holds. With ``telemetry``, empty
    per-run cgroup parents left by crashed callers go as well.
    """
    engine = engine or DockerEngine()
    group = group if group is not None else current_group()
    removed = []
    kept: set[str] = set()
    for container in engine.containers(f"{LABEL}=1"):
        if in_group(container.labels, group) and (everything or is_abandoned(container.labels)):
            engine.remove(container.id)
            removed.append(container)
        elif LABEL_SLOT in container.labels:
            kept.add(container.labels[LABEL_SLOT])  # any group's live slot keeps its directory
    volumes = engine.volumes(f"{LABEL}=1")
    # Shared by the engine's runners (of a group), with no owner: only ``everything`` takes it.
    shared = engine.volumes(f"{LABEL}=support") if everything else []
    for volume in volumes + shared:
        if in_group(volume.labels, group) and (everything or is_abandoned(volume.labels)):
            # A volume still mounted by a container that stays is refused: it goes later.
            with contextlib.suppress(ExperimentExecutionError):
                engine.remove_volume(volume.name)
    remove_stale_slot_dirs(slots_dir or ExperimentDefaults().cache_dir / "pool", kept)
    identity.release_stale()
    if telemetry is not None:
        telemetry.release_stale()
    return removed


def remove_stale_slot_dirs(slots_dir: Path, in_use: set[str], min_age: float = 60.0) -> int:
    """Remove pool slot directories no container uses; how many went.

    Directories younger than ``min_age`` seconds may belong to a slot whose
    container is being created right now, and are left alone.
    """
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(slots_dir))
    except OSError:
        return 0
    for entry in entries:
        try:
            young = now - entry.stat(follow_symlinks=False).st_mtime < min_age
        except OSError:
            continue
        if entry.name in in_use or young or not entry.is_dir(follow_symlinks=False):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)  # never follows a symlink out
        removed += 1
    return removed
