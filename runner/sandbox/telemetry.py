"""Resource telemetry read from the kernel, not reported by the script.

Each run's container is placed under a cgroup parent of its own
(``/experiment-runner/<run>``). The container's cgroup is deleted when it
stops, but the parent keeps the hierarchical totals: peak memory
(``memory.max_usage_in_bytes``) and CPU time (``cpuacct.usage``). The runner
reads them after the container has exited, then removes the parent.

Works where the runner shares the engine's cgroup v1 filesystem (a local engine
with the cgroupfs driver, as here); elsewhere the fields stay ``None``.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A run's cgroups still busy when it is released are tried again, for about a second.
RELEASE_ATTEMPTS = 10
RELEASE_RETRY_DELAY = 0.1
PARENT = "experiment-runner"


@dataclass(frozen=True)
class Usage:
    peak_memory_bytes: int | None
    cpu_seconds: float | None


class CgroupTelemetry:
    """Per-run cgroup parents under ``/sys/fs/cgroup/*/experiment-runner``."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root

    def available(self, engine_info: dict[str, object]) -> bool:
        """True when this process can read the engine's cgroups directly."""
        host = os.environ.get("DOCKER_HOST", "")
        return (
            (not host or host.startswith("unix://"))
            and engine_info.get("CgroupDriver") == "cgroupfs"
            and str(engine_info.get("CgroupVersion", "1")) == "1"
            and (self.root / "memory").is_dir()
            and (self.root / "cpuacct").is_dir()
            and os.access(self.root / "memory", os.W_OK)
        )

    @staticmethod
    def new_parent() -> str:
        """A cgroup parent path (as Docker's ``cgroup_parent`` takes it) for one run."""
        return f"/{PARENT}/{uuid.uuid4().hex}"

    def read(self, parent: str) -> Usage:
        relative = parent.strip("/")
        memory = _read_int(self.root / "memory" / relative / "memory.max_usage_in_bytes")
        cpu = _read_int(self.root / "cpuacct" / relative / "cpuacct.usage")
        return Usage(memory, cpu / 1e9 if cpu is not None else None)

    def release(self, parent: str) -> None:
        """Remove the run's cgroup directories in every hierarchy.

        Docker has emptied them when the container is removed; Podman's clean-up
        process may still be leaving them for a moment, so a busy one is tried
        again briefly (``release_stale`` takes any that stay).
        """
        relative = parent.strip("/")
        left = [hierarchy / relative for hierarchy in self._hierarchies()]
        for _ in range(RELEASE_ATTEMPTS):
            left = [d for d in left if d.is_dir() and not _remove_tree(d)]
            if not left:
                return
            time.sleep(RELEASE_RETRY_DELAY)

    def release_stale(self, min_age: float = 60.0) -> int:
        """Remove per-run parents that no container uses any more; how many went.

        Parents younger than ``min_age`` seconds are left to the run that is
        about to read them.
        """
        removed = 0
        now = time.time()
        for hierarchy in self._hierarchies():
            base = hierarchy / PARENT
            if not base.is_dir():
                continue
            for run in base.iterdir():
                try:
                    young = now - run.stat().st_mtime < min_age
                except OSError:
                    continue
                if run.is_dir() and not young and _remove_tree(run):
                    removed += 1
        return removed

    def _hierarchies(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            return []


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _remove_tree(directory: Path) -> bool:
    """rmdir a cgroup directory and its sub-cgroups; False if any still holds tasks."""
    if not directory.is_dir():
        return False
    for child in directory.iterdir():
        if child.is_dir():
            _remove_tree(child)
    try:
        directory.rmdir()
    except OSError:
        return False
    return True
