"""Typed models: what an experiment is, and what running it produced."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MissingValues = Literal["mean", "median", "most_frequent", "none"]
Scaling = Literal["standard", "minmax", "robust", "none"]
Encoding = Literal["onehot", "ordinal", "none"]
TaskType = Literal["classification", "regression"]


class PreprocessingConfig(BaseModel):
    """How the generated pipeline treats missing values, scale and categories."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    missing_values: MissingValues = "median"
    scaling: Scaling = "standard"
    encoding: Encoding = "onehot"


class ExperimentSpec(BaseModel):
    """One experiment as an agent proposes it."""

    # "model_type" and "model_params" are the reference document's names.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    experiment_name: str = Field(min_length=1, max_length=200)
    hypothesis: str = ""
    model_type: str = Field(min_length=1)
    model_params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    reasoning: str = ""


class Artifact(BaseModel):
    """A file the script wrote, copied back to the host after the run."""

    model_config = ConfigDict(frozen=True)

    #: The path relative to the outputs directory, with "/" between parts.
    name: str
    #: Where it is on the host (inside the outputs directory).
    path: str
    size: int
    sha256: str


class ExperimentResult(BaseModel):
    """What one run produced and exactly how it ended.

    Every field of the reference document, plus what a sandboxed run adds: the
    exit code, whether the deadline or the memory cap ended it, the captured
    (capped) output, and the immutable ID of the image that ran it.
    """

    model_config = ConfigDict(protected_namespaces=())

    experiment_name: str
    iteration: int
    model_type: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    metrics: dict[str, float] = Field(default_factory=dict)
    hypothesis: str = ""
    reasoning: str = ""
    execution_time: float
    success: bool
    error_message: str | None = None
    code_path: str
    timestamp: datetime

    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    image_id: str | None = None
    #: Peak memory of the whole container (bytes) and CPU time used (seconds), read
    #: from the kernel's cgroup accounting; None where the runner cannot read it.
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    #: True when the script ran in a container from the warm pool.
    warm_start: bool = False
    #: Files the script wrote to its working directory (or $OUTPUT_DIR), copied back
    #: to the outputs directory; empty when outputs are off.
    artifacts: list[Artifact] = Field(default_factory=list)
    #: What was not copied back and why (a limit hit, a symlink refused, ...); None if nothing.
    artifacts_message: str | None = None
    #: The MLflow run this result was logged to, with tracking on; None otherwise.
    mlflow_run_id: str | None = None
    #: Why the result could not be logged to MLflow (the server was down, ...); None if
    #: it was, or tracking is off. The result itself is complete either way.
    tracking_error: str | None = None
    #: Where it ran: this machine's host name, or the Ray node ID on a cluster.
    node: str | None = None

    def get_primary_metric(self, name: str) -> float | None:
        """The metric called ``name``, or None when the run did not report it."""
        return self.metrics.get(name)
