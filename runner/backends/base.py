"""What a backend is to the front: the ``Backend`` protocol, the warm pool a runner asks
for, how many sandboxes a machine holds, and which backend serves a runner.

``ExperimentRunner`` talks to its backend through ``Backend`` alone. The backends
themselves are found by name and imported when first asked for (as fsspec finds
its file systems), so a runner on this machine never imports the Ray backend.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runner.core.settings import Transfer
from runner.core.sizes import parse_size
from runner.sandbox.artifacts import OutputLimits
from runner.sandbox.engine import Engine
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback


@dataclass(frozen=True)
class PoolSpec:
    """A warm pool as a runner asks for it (on a cluster: on each node)."""

    #: Containers kept started ahead (a backend keeps no more than it holds at once).
    size: int
    #: The runs' timeout: a slot waits for its script at most an hour, then runs this long.
    timeout: float
    #: Slots serve runs with outputs within these limits (None: runs without outputs).
    outputs: OutputLimits | None
    #: Where slots mount their directory; scripts and inputs below it can run warm.
    root: Path
    #: The caller chose ``root``: it stays put (a default one moves to where scripts are).
    root_fixed: bool
    #: The modules a slot imports before its script.
    preload: tuple[str, ...]


class Backend(Protocol):
    """Executes prepared runs; all that ``ExperimentRunner`` knows of where they run."""

    def execute(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        """Run ``request``; ``token`` names it for ``abort``."""
        ...

    def abort(self, tokens: Iterable[object]) -> None:
        """Remove the containers of the runs ``tokens`` name; those not started never start."""
        ...

    def default_workers(self) -> int:
        """Runs at once that never book more CPU cores or memory than there are."""
        ...

    def close(self) -> None:
        """End the warm pool, if any; later runs are cold."""
        ...

    @property
    def pool_size(self) -> int:
        """Containers the warm pool keeps ready (0: no pool); on a cluster, per node."""
        ...

    @property
    def preload(self) -> tuple[str, ...]:
        """The modules a warm container imports ahead of its script."""
        ...

    @property
    def pool_root(self) -> Path | None:
        """Scripts and inputs below this directory can run warm now (None: not yet)."""
        ...

    @property
    def pool_unavailable(self) -> str | None:
        """Why a warm pool that was asked for is not kept, if it is not."""
        ...

    def wait_for_warm(self, timeout: float) -> bool:
        """Block until every pool slot is ready; False on timeout or without a pool."""
        ...

    def keep_warm(self, root: Path, outputs: OutputLimits | None) -> None:
        """With a warm pool, also keep slots for runs below ``root`` (a directory of the
        runner's own, which never moves) with ``outputs``; a backend may do nothing."""
        ...

    def describe_files(self) -> str:
        """How files reach the sandboxes, in words (for ``runner doctor``)."""
        ...

    @property
    def telemetry_available(self) -> bool:
        """Whether peak memory and CPU time are read from the kernel."""
        ...

    @property
    def engine(self) -> Engine:
        """This machine's engine; ``ValueError`` where the sandboxes run elsewhere."""
        ...


def sandboxes_that_fit(policy: SandboxPolicy, cores: float, memory: int) -> int:
    """Sandboxes of ``policy`` a machine of ``cores`` and ``memory`` bytes holds at once (>= 1)."""
    by_cpu = math.floor(cores / policy.cpu_limit)
    by_memory = memory // parse_size(policy.memory_limit)
    return max(1, min(by_cpu, by_memory))


@dataclass(frozen=True)
class BackendOptions:
    """What a backend is opened with: the runner's options as the backends need them."""

    policy: SandboxPolicy
    python_executable: str
    transfer: Transfer
    #: Where the runner's own files live (a local pool's slot directories).
    cache_dir: Path
    #: The runner's own image (the one a cluster's nodes may build: ``build_missing``).
    default_image: str
    pool: PoolSpec | None = None
    #: This machine's engine, if the caller has one (the local backend's only).
    engine: Engine | None = None
    #: A Ray cluster's address, or ``auto``: runs go there (None: this machine's engine).
    cluster: str | None = None
    #: On a cluster, a node that lacks the runner's own image builds it.
    build_missing: bool = False


#: The backends by name: the module whose ``open(BackendOptions)`` makes one.
BACKENDS = {"local": "runner.backends.local", "ray": "runner.backends.ray.backend"}


def open_backend(options: BackendOptions) -> Backend:
    """The backend for ``options``: a Ray cluster's when one is named, else this machine's
    engine; its module is imported only now (Ray's is an optional extra)."""
    name = "ray" if options.cluster else "local"
    opened: Backend = importlib.import_module(BACKENDS[name]).open(options)
    return opened
