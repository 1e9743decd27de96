"""``RunnerOptions``: everything a runner can be told, declared once.

One typed object for the Python API (``ExperimentRunner(options=...)``, or the
same names as keyword arguments), the command line (one option a field, see
``runner.cli.options``) and the MCP server, so that no option can be dropped
on the way from one to the other. A field left unset (None) takes its setting
(``ExperimentDefaults``, fed from ``RUNNER_*`` variables), else the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runner.core.settings import Transfer


class RunnerOptions(BaseModel):
    """What one runner is told; unset fields take their settings (``RUNNER_*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Seconds before a run's container is killed.
    timeout: float | None = Field(default=None, gt=0)
    #: The image to run in (default: the pinned scikit-learn image).
    image: str | None = None
    #: Memory cap of each run, e.g. ``512m`` or ``2g`` (no swap).
    memory_limit: str | None = None
    #: CPU cap of each run, e.g. ``1.0``.
    cpu_limit: float | None = Field(default=None, gt=0)
    #: Processes and threads a run may have at once.
    pids_limit: int | None = Field(default=None, gt=0)
    #: The OCI runtime registered with the engine (``runc``, ``runsc``).
    runtime: str | None = None
    #: Size of the writable, non-executable ``/tmp`` inside the sandbox.
    tmpfs_size: str | None = None
    #: Bytes of stdout and of stderr kept per run (the tail).
    output_limit: int | None = Field(default=None, gt=0)
    #: Files or directories every run sees read-only at their own paths.
    inputs: tuple[Path, ...] = ()
    #: Where what a script writes to its working directory comes back (unset: outputs off).
    outputs_dir: Path | None = None
    #: How a run's files reach the sandbox (``Transfer``).
    transfer: Transfer | None = None
    #: Containers started ahead with the libraries imported (0: none).
    warm_pool: int = Field(default=0, ge=0)
    #: What a warm container imports ahead (unset: numpy, pandas, scikit-learn, ...).
    preload: tuple[str, ...] | None = None
    #: Where the warm pool's slots are mounted; chosen, it stays put (unset: it moves).
    pool_root: Path | None = None
    #: The warm pool's slots serve runs with outputs on though ``outputs_dir`` is unset:
    #: for a caller that gives each run its own (``run(..., outputs_dir=...)``).
    pool_outputs: bool = False
    #: An MLflow tracking URI each result is logged to.
    tracking_uri: str | None = None
    #: A Ray cluster to run on (``HOST:PORT`` or ``auto``); empty: this machine's engine.
    cluster: str | None = None
    #: On a cluster, a node whose engine lacks the runner's own image builds it first.
    build_missing: bool = False
    #: The sandbox image's interpreter that runs the script.
    python_executable: str = "python"

    def merged(self, **given: Any) -> RunnerOptions:
        """These options with each of ``given`` that is not None on top, checked again."""
        chosen = {name: value for name, value in given.items() if value is not None}
        return RunnerOptions.model_validate({**self.model_dump(exclude_unset=True), **chosen})
