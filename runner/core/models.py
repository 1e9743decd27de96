"""Typed models: what an experiment is, and what running it produced."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.core.provenance import Provenance

MissingValues = Literal["mean", "median", "most_frequent", "none"]
Scaling = Literal["standard", "minmax", "robust", "none"]
Encoding = Literal["onehot", "ordinal", "none"]
TaskType = Literal["classification", "regression"]
#: Who computed ``result.metrics``: the runner, on rows the script never saw the labels
#: of ("holdout"), or the script itself, as it printed them ("script").
MetricsSource = Literal["holdout", "script"]


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


class ArtifactInfo(BaseModel):
    """A file the script wrote: its name (relative to the outputs, "/" between parts),
    size and SHA-256."""

    model_config = ConfigDict(frozen=True)

    name: str
    size: int
    sha256: str


class Artifact(ArtifactInfo):
    """A file the script wrote, copied back to the host after the run."""

    #: Where it is on the host (inside the outputs directory).
    path: str


class RunOutcome(BaseModel):
    """How one sandboxed run ended, what it printed and what it used.

    What the sandbox saw, whoever reports the run: the lifecycle's record
    (``Execution``), ``ExperimentResult`` and the MCP server's report share these.
    """

    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    #: Seconds from the start of the run (the hand-over, when warm) to its end.
    execution_time: float
    stdout: str = ""
    stderr: str = ""
    #: True when only the tail of the stream was kept (``output_limit``).
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    image_id: str | None = None
    #: Peak memory of the whole container (bytes) and CPU time used (seconds), read
    #: from the kernel's cgroup accounting; None where the runner cannot read it.
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    #: True when the script ran in a container from the warm pool.
    warm_start: bool = False
    #: What of the script's outputs was not copied back and why (a limit hit, a
    #: symlink refused, ...); None if nothing.
    artifacts_message: str | None = None
    #: Where it ran: this machine's host name, or the Ray node ID on a cluster.
    node: str | None = None


class HoldoutRecord(BaseModel):
    """How a held-out run was scored: which rows, of which data, and how long it took.

    Enough to tell two results scored on the same rows (the same digests) from
    results scored on other ones, without the rows or their labels.
    """

    model_config = ConfigDict(frozen=True)

    target_column: str
    task_type: TaskType
    #: The share of the rows held out, and the split's seed (None: a test file was given).
    test_size: float | None = None
    seed: int | None = None
    train_rows: int
    test_rows: int
    #: Rows left out of both because their target was empty.
    dropped_rows: int = 0
    #: SHA-256 of the test rows' indices (in the data file, or the test file), one a line.
    test_rows_sha256: str
    #: SHA-256 of the data file (and of the test file, when one was given).
    data_sha256: str
    test_data_sha256: str | None = None
    #: For classification: the classes, as the data file spells them.
    classes: list[str] = Field(default_factory=list)
    #: Seconds the runner's scorer took, its sandbox included.
    scoring_time: float | None = None


class Verdict(BaseModel):
    """What the runner made of a run: success, the metrics, or why it failed.

    ``metrics`` are the ones a leaderboard ranks by: the runner's own scores on the
    held-out rows (``metrics_source == "holdout"``), or, without a held-out split,
    what the script printed (``"script"``). ``reported_metrics`` is always what the
    script printed, kept apart so a claim is never mistaken for a score.
    """

    success: bool
    error_message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reported_metrics: dict[str, float] = Field(default_factory=dict)
    metrics_source: MetricsSource = "script"
    #: With a held-out split: which rows the metrics were computed on.
    holdout: HoldoutRecord | None = None

    @property
    def verified(self) -> bool:
        """The metrics are the runner's own scores, not the script's claim."""
        return self.metrics_source == "holdout"


class Tracking(BaseModel):
    """Where a result was logged besides the history."""

    #: The MLflow run this result was logged to, with tracking on; None otherwise.
    mlflow_run_id: str | None = None
    #: Why the result could not be logged to MLflow (the server was down, ...); None if
    #: it was, or tracking is off. The result itself is complete either way.
    tracking_error: str | None = None


class ExperimentRecord(BaseModel):
    """What was asked: the experiment (the spec's fields), its script and when."""

    model_config = ConfigDict(protected_namespaces=())

    experiment_name: str
    iteration: int
    model_type: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    hypothesis: str = ""
    reasoning: str = ""
    code_path: str
    timestamp: datetime


class ExperimentResult(Tracking, RunOutcome, Verdict, ExperimentRecord):
    """What one run produced and exactly how it ended.

    Every field of the reference document (``ExperimentRecord``, ``Verdict``),
    plus what a sandboxed run adds (``RunOutcome``): the exit code, whether the
    deadline or the memory cap ended it, the captured (capped) output, the
    immutable ID of the image that ran it, what it used; and where the result
    was logged (``Tracking``).
    """

    model_config = ConfigDict(protected_namespaces=())

    #: Files the script wrote to its working directory (or $OUTPUT_DIR), copied back
    #: to the outputs directory; empty when outputs are off.
    artifacts: list[Artifact] = Field(default_factory=list)
    #: This result's own ID (``runner replay RUN_ID``, ``runner receipt RUN_ID``).
    run_id: str | None = None
    #: What ran: the script, its inputs, image, environment, limits, machine
    #: (``runner.core.provenance``); None for a run that never reached a sandbox.
    provenance: Provenance | None = None

    def get_primary_metric(self, name: str) -> float | None:
        """The metric called ``name``, or None when the run did not report it."""
        return self.metrics.get(name)


def fields_of(model: BaseModel, kind: type[BaseModel]) -> dict[str, Any]:
    """``model``'s values of the fields ``kind`` declares (a part of it), as they are."""
    return {name: getattr(model, name) for name in kind.model_fields}
