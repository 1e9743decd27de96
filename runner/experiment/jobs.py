"""What a caller asks for: one run (``Asked``), and a batch's jobs (``Job``, ``BatchJob``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runner.core.models import ExperimentRecord, ExperimentSpec, fields_of
from runner.experiment.holdout import Holdout

__all__ = ["Asked", "BatchJob", "Job"]


@dataclass(frozen=True)
class BatchJob:
    """One job of a batch, its parts by name: what ``run`` takes for one script."""

    script: Path | str
    spec: ExperimentSpec
    iteration: int = 0
    #: The script's arguments (``sys.argv[1:]``).
    args: Sequence[str] = ()
    #: Score this job on held-out rows (default: the batch's ``holdout``, if any).
    holdout: Holdout | None = None


#: One job of a batch: (script_path, spec, iteration), or with the script's
#: arguments: (script_path, spec, iteration, args), or a ``BatchJob``.
Job = (
    tuple[Path | str, ExperimentSpec, int]
    | tuple[Path | str, ExperimentSpec, int, Sequence[str]]
    | BatchJob
)


@dataclass(frozen=True)
class Asked:
    """One run as the caller asked for it, before any check."""

    script: Path
    spec: ExperimentSpec
    iteration: int
    inputs: tuple[str | Path, ...] = ()
    args: Sequence[str] = ()
    outputs_dir: Path | str | None = None
    #: Directories under the outputs directory for this run's outputs (a batch job's).
    outputs_below: tuple[str, ...] = ()
    #: Score the run on these held-out rows (None: the script's own metrics).
    holdout: Holdout | None = None

    def record(self, timestamp: datetime) -> ExperimentRecord:
        """The result's fields that come from the request rather than from the run."""
        return ExperimentRecord(
            **fields_of(self.spec, ExperimentSpec),
            iteration=self.iteration,
            code_path=str(self.script),
            timestamp=timestamp,
        )
