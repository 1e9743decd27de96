"""One held-out run: the script in a sandbox that shows its training rows and the test
rows' features, then the runner's scorer in a sandbox of its own.

1. ``Holdout.split`` splits the data here, on the host; ``stage`` writes the
   script's copy, ``train.csv`` and ``test.csv`` into a new directory of the
   runner's (``HeldOutRuns.base``, which only this user may enter). That
   directory, and the caller's inputs (none may hold the data), are all the
   script's sandbox shows: not the script's own directory, where data files
   usually lie. ``$TRAIN_PATH``, ``$TEST_PATH`` and ``$PREDICTIONS_PATH`` name
   the files.
2. The predictions come back as outputs do (``runner.sandbox.artifacts``): the
   run's working directory is the writable, capped ``/outputs`` and
   ``$PREDICTIONS_PATH`` is ``/outputs/predictions.csv``, streamed back after the
   script and extracted without trusting a byte of it. With the caller's outputs
   on, they land among them; else in the run's own directory, and the rest of
   what the script wrote is dropped.
3. ``read_predictions`` checks them strictly; the labels and the checked
   predictions go into ``task.json`` beside the scorer (``runner.experiment.scorer``)
   in another new directory, written only once the script's sandbox is gone, and
   the scorer runs as any run does (cold, or from a warm slot; bound or copied;
   under the runner's runtime); its own exit record ends the run, telemetry or not
   (``RunRequest.ends_with_result``), and its container goes in the background.

What the script did wrong (no predictions, bad ones) is a failed result that says
so; the caller's mistakes (no such data, no target column) raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from runner.backends.base import Backend
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import Artifact, Verdict
from runner.core.text import printable
from runner.experiment.checks import RunChecks
from runner.experiment.holdout import PREDICTIONS_NAME, Holdout, refuse_leaks, stage
from runner.experiment.predictions import (
    MAX_PREDICTIONS_BYTES,
    PredictionsRefused,
    read_predictions,
)
from runner.experiment.scorer import SCORER_NAME, SOURCE, TASK_NAME
from runner.experiment.verdict import find_result_line, last_line, parse_metrics
from runner.results.provenance import Described, before_run
from runner.results.store import ScriptStore
from runner.sandbox.lifecycle import Execution
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback

#: Seconds the scorer may take (its sandbox's start included, cold under gVisor too).
SCORER_TIMEOUT = 120.0
#: Bytes of the scorer's stdout and stderr kept.
SCORER_OUTPUT = 64 * 1024

#: Judges how the script's run ended (the front's, with its hints).
Judge = Callable[[Execution, RunRequest], Verdict]


@dataclasses.dataclass(frozen=True)
class Scored:
    """A held-out run, done: the script's run as the result reports it, and the verdict."""

    execution: Execution
    verdict: Verdict
    artifacts: list[Artifact]
    #: The script's run as it was asked for (its staged directory and the split's
    #: files), and what was digested of it before it started: for its provenance.
    request: RunRequest
    described: Described


class HeldOutRuns:
    """Held-out runs through one backend, their files in one private directory."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._base: Path | None = None

    @property
    def base(self) -> Path:
        """The runner's directory for held-out runs (0700), made on first use and removed
        with the runner (``close``) or at exit."""
        with self._lock:
            if self._base is None:
                self._base = Path(tempfile.mkdtemp(prefix="runner-holdout-")).resolve()
                self._finalizer = weakref.finalize(
                    self, shutil.rmtree, str(self._base), ignore_errors=True
                )
            return self._base

    def close(self) -> None:
        with self._lock:
            if self._base is not None:
                self._finalizer()
                self._base = None

    def run(
        self,
        script: Path,
        holdout: Holdout,
        checks: RunChecks,
        judge: Judge,
        *,
        inputs: Iterable[str | Path] = (),
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
        outputs_below: tuple[str, ...] = (),
        on_output: OutputCallback | None = None,
        token: object,
        cancelled: Callable[[], bool] = lambda: False,
        store: ScriptStore | None = None,
    ) -> Scored:
        """Run ``script`` on ``holdout``'s training rows and score its predictions."""
        if not script.expanduser().is_file():
            raise ExperimentExecutionError(
                f"Script not found: {script}", hint="pass the path of an existing Python file."
            )
        split = holdout.split()
        with self._run_directory() as directory:
            staged = stage(split, script.expanduser().resolve(), directory / "sandbox")
            own_outputs = checks.outputs(outputs_dir) is None
            if own_outputs:
                checks = _predictions_only(checks)
            request = checks.request(
                staged.script,
                inputs=inputs,
                args=args,
                outputs_dir=directory / "outputs" if own_outputs else outputs_dir,
                outputs_below=() if own_outputs else outputs_below,
            )
            refuse_leaks(holdout, request.mounts[1:])
            request = dataclasses.replace(request, environment=staged.environment())
            self._keep_warm(request)
            described = before_run(request, store)
            execution = self.backend.execute(request, on_output, token)
            if own_outputs:
                execution = _without_outputs(execution)
            verdict = judge(execution, request)
            record = split.record
            artifacts = [] if own_outputs else list(execution.artifacts)
            if not verdict.success:
                failed = verdict.model_copy(
                    update={"holdout": record, "metrics_source": "holdout", "metrics": {}}
                )
                return Scored(execution, failed, artifacts, request, described)
            try:
                task = read_predictions(_predictions(execution, request), split)
            except PredictionsRefused as e:
                failed = verdict.model_copy(
                    update={"success": False, "error_message": printable(str(e), limit=2000),
                            "holdout": record}
                )  # fmt: skip
                return Scored(execution, failed, artifacts, request, described)
            if cancelled():
                raise ExperimentExecutionError("The run was cancelled before it was scored.")
            started = time.monotonic()
            scores, problem = self._score(task.to_json(), directory / "scorer", token)
        record = record.model_copy(update={"scoring_time": time.monotonic() - started})
        update: dict[str, object] = {"holdout": record, "metrics": scores}
        if problem is not None:
            update |= {"success": False, "error_message": problem, "metrics": {}}
        return Scored(execution, verdict.model_copy(update=update), artifacts, request, described)

    def _keep_warm(self, request: RunRequest) -> None:
        """With a warm pool: slots for held-out scripts and for the scorer, in ``base``."""
        if self.backend.pool_size:
            outputs = request.outputs.limits if request.outputs is not None else None
            self.backend.keep_warm(self.base, outputs)
            self.backend.keep_warm(self.base, None)

    def _score(
        self, task: str, directory: Path, token: object
    ) -> tuple[dict[str, float], str | None]:
        """The scorer's metrics, or why it failed (the runner's fault, never the script's)."""
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        for name, text in ((SCORER_NAME, SOURCE), (TASK_NAME, task)):
            path = directory / name
            path.write_text(text)
            path.chmod(0o644)
        request = RunRequest(
            directory / SCORER_NAME,
            (directory,),
            SCORER_TIMEOUT,
            SCORER_OUTPUT,
            ends_with_result=True,
        )
        execution = self.backend.execute(request, None, token)
        payload = find_result_line(execution.stdout)
        if execution.exit_code == 0 and payload is not None and payload.get("success") is True:
            scores, problem = parse_metrics(payload.get("metrics"))
            if problem is None:
                return scores, None
        detail = last_line(execution.stderr) or f"exit code {execution.exit_code}"
        return {}, (
            f"The runner's scorer failed (not the script): {detail}. The predictions were "
            "valid; `runner doctor` checks the sandbox."
        )

    @contextlib.contextmanager
    def _run_directory(self) -> Iterator[Path]:
        directory = self.base / uuid.uuid4().hex
        directory.mkdir(mode=0o700)
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _predictions(execution: Execution, request: RunRequest) -> Path | None:
    """Where the predictions came back, if they did; ``PredictionsRefused`` for a file
    the outputs refused (a symlink, over a limit)."""
    for artifact in execution.artifacts:
        if artifact.name == PREDICTIONS_NAME:
            return Path(artifact.path)
    message = execution.artifacts_message or ""
    if repr(PREDICTIONS_NAME) in message:
        raise PredictionsRefused(
            f"Invalid predictions ($PREDICTIONS_PATH, {PREDICTIONS_NAME}): they did not come "
            f"back. {message}"
        )
    return None


def _predictions_only(checks: RunChecks) -> RunChecks:
    """The checks for a run whose outputs are the runner's alone: no file over the
    predictions' cap comes back (the collector leaves it in the sandbox)."""
    limits = checks.output_limits
    if limits is None:
        raise ValueError("outputs need output_limits")
    capped = dataclasses.replace(
        limits, max_file_size=min(limits.max_file_size, MAX_PREDICTIONS_BYTES)
    )
    return dataclasses.replace(checks, output_limits=capped)


def _without_outputs(execution: Execution) -> Execution:
    """The run as a caller without outputs sees it: what came back is the runner's alone
    (its predictions), and a note on what did not is about the predictions only."""
    message = execution.artifacts_message
    keep = message if message and repr(PREDICTIONS_NAME) in message else None
    return execution.model_copy(update={"artifacts_message": keep})
