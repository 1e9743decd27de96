"""MLflow tracking: each result becomes an MLflow run, and runs read back as results.

Optional: ``pip install 'experiment-runner[mlflow]'``. ``MlflowTracker(uri)``
logs one ``ExperimentResult`` as one run of the MLflow experiment named after
the spec (params, metrics, tags, and the script, output tails and artifacts as
artifacts); ``track`` does so without ever raising, so a tracking server that is
down costs the result nothing but a note (``tracking_error``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, HoldoutRecord, PreprocessingConfig
from runner.core.provenance import Provenance
from runner.core.text import printable

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: Set on every run the runner logs; ``read`` looks only at runs that carry it.
RECORDED_BY = "runner.recorded_by"
RECORDER = "experiment-runner"
#: The runner's own metrics, beside the script's (prefixed so they never collide).
OWN_METRICS = ("execution_time", "peak_memory_bytes", "cpu_seconds")
_PREFIX = "runner."
#: With held-out scoring, what the script printed is logged under this prefix, apart from
#: the runner's scores (the run's metrics, which the tag ``runner.metrics_source`` names).
REPORTED = "reported."
#: MLflow's limits (mlflow.utils.validation), checked here so a long value is cut, not refused.
MAX_KEY = 250
MAX_PARAM = 6000
MAX_TAG = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
#: What MLflow's HTTP client does against a server that does not answer, unless the
#: caller chose otherwise: few quick retries, so a down server costs a run seconds,
#: not MLflow's default of minutes of backoff.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
_KEY_CHARS = re.compile(r"[^\w\-. /]")
_INSTALL_HINT = "install the extra: pip install 'experiment-runner[mlflow]'."


class TrackingError(Exception):
    """A result could not be logged to the tracking server."""


def _client(uri: str) -> MlflowClient:
    # MLflow's usage telemetry stays off unless the user turned it on themselves.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow import MlflowClient
    except ImportError as e:
        raise ExperimentExecutionError(
            "MLflow tracking needs the mlflow package, which is not installed.",
            hint=_INSTALL_HINT,
        ) from e
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as e:  # MLflow raises many kinds: each becomes one message
        raise ExperimentExecutionError(
            f"MLflow cannot track to {uri}: {printable(f'{type(e).__name__}: {e}', limit=500)}",
            hint="pass a tracking server (http://127.0.0.1:5000) or a database "
            "(sqlite:///mlflow.db) as the tracking URI.",
        ) from e


def metric_key(name: str) -> str:
    """``name`` as MLflow accepts a key: letters, digits, ``_-. /``, at most 250 characters."""
    return _KEY_CHARS.sub("_", name)[:MAX_KEY] or "_"


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 15] + " ...[truncated]"


def script_sha256(path: Path) -> str | None:
    """The script's sha256, or None when it is gone."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class MlflowTracker:
    """Logs results to one MLflow tracking URI and reads them back.

    ``uri`` is anything MLflow takes: ``http://127.0.0.1:5000``, ``sqlite:///mlflow.db``,
    ``file:///path/to/mlruns``, ...
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client = _client(uri)
        self._experiments: dict[str, str] = {}

    def log(self, result: ExperimentResult, *, runtime: str | None = None) -> str:
        """Log ``result`` as a new run; its run ID. ``TrackingError`` says what went wrong.

        ``runtime`` is the OCI runtime the run used (None: the engine's default).
        """
        run_id: str | None = None
        try:
            experiment_id = self._experiment(result.experiment_name)
            start = int(result.timestamp.timestamp() * 1000)
            run = self._client.create_run(
                experiment_id,
                start_time=start,
                tags=_tags(result, runtime),
                run_name=f"{result.experiment_name}-{result.iteration}",
            )
            run_id = run.info.run_id
            self._log_data(run_id, result)
            self._log_artifacts(run_id, result)
            self._client.set_terminated(
                run_id,
                status="FINISHED" if result.success else "FAILED",
                end_time=start + int(result.execution_time * 1000),
            )
        except Exception as e:  # MLflow raises many kinds: each becomes one message
            where = f" (run {run_id} is incomplete)" if run_id else ""
            message = printable(f"{type(e).__name__}: {e}", limit=500)
            raise TrackingError(f"Not logged to MLflow at {self.uri}{where}: {message}") from e
        return run_id

    def _experiment(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        found = self._client.get_experiment_by_name(name)
        if found is None:
            try:
                experiment_id = self._client.create_experiment(name)
            except Exception:
                # Another writer created it in between; anything else fails again here.
                found = self._client.get_experiment_by_name(name)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        self._experiments[name] = experiment_id
        return experiment_id

    def _log_data(self, run_id: str, result: ExperimentResult) -> None:
        from mlflow.entities import Metric, Param

        stamp = int(result.timestamp.timestamp() * 1000)
        metrics = [Metric(metric_key(k), v, stamp, 0) for k, v in result.metrics.items()]
        if result.verified:
            metrics += [
                Metric(metric_key(REPORTED + k), v, stamp, 0)
                for k, v in result.reported_metrics.items()
            ]
        for name in OWN_METRICS:
            value = getattr(result, name)
            if value is not None:
                metrics.append(Metric(_PREFIX + name, float(value), stamp, 0))
        params = [Param(k, _cut(v, MAX_PARAM)) for k, v in _params(result).items()]
        for chunk in _chunks(metrics, METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(params, PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk)

    def _log_artifacts(self, run_id: str, result: ExperimentResult) -> None:
        script = Path(result.code_path)
        if script.is_file():
            self._client.log_artifact(run_id, str(script), "script")
        self._client.log_text(run_id, result.stdout, "output/stdout.txt")
        self._client.log_text(run_id, result.stderr, "output/stderr.txt")
        for artifact in result.artifacts:
            path = Path(artifact.path)
            if not path.is_file():
                continue  # moved or removed since the run; its name and hash are in the result
            folder = str(Path("outputs", artifact.name).parent)
            self._client.log_artifact(run_id, str(path), folder)

    def read(self, *, name: str | None = None) -> list[ExperimentResult]:
        """The results logged by the runner, from every experiment (or those whose
        name contains ``name``). Output tails are left out: they are the runs' artifacts."""
        try:
            return list(self._read(name))
        except Exception as e:  # MLflow raises many kinds: each becomes one message
            raise ExperimentExecutionError(
                f"Could not read from MLflow at {self.uri}: "
                f"{printable(f'{type(e).__name__}: {e}', limit=500)}",
                hint="check that the tracking server is up and the URI is right.",
            ) from e

    def _read(self, name: str | None) -> Iterator[ExperimentResult]:
        experiments = [
            e.experiment_id
            for e in self._client.search_experiments()
            if name is None or name in e.name
        ]
        if not experiments:
            return
        token: str | None = None
        while True:
            page = self._client.search_runs(
                experiments,
                filter_string=f"tags.`{RECORDED_BY}` = '{RECORDER}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                result = _result(run)
                if result is not None:
                    yield result
            token = page.token
            if not token:
                return


def track(
    tracker: MlflowTracker, result: ExperimentResult, *, runtime: str | None = None
) -> ExperimentResult:
    """``result`` with the MLflow run it was logged to, or with why it was not; never raises."""
    try:
        run_id = tracker.log(result, runtime=runtime)
    except TrackingError as e:
        log.warning("%s", e)
        return result.model_copy(update={"tracking_error": str(e)})
    return result.model_copy(update={"mlflow_run_id": run_id, "tracking_error": None})


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _params(result: ExperimentResult) -> dict[str, str]:
    params = {"model_type": result.model_type, "iteration": str(result.iteration)}
    for key, value in result.model_params.items():
        params[metric_key(f"model_params.{key}")] = json.dumps(value, sort_keys=True)
    for key, value in result.preprocessing.model_dump().items():
        params[f"preprocessing.{key}"] = str(value)
    if result.holdout is not None:
        for key in ("target_column", "task_type", "test_size", "seed", "test_rows",
                    "test_rows_sha256", "data_sha256"):  # fmt: skip
            value = getattr(result.holdout, key)
            if value is not None:
                params[f"holdout.{key}"] = str(value)
    return params


def _tags(result: ExperimentResult, runtime: str | None) -> dict[str, str]:
    tags = {
        RECORDED_BY: RECORDER,
        "runner.experiment_name": result.experiment_name,
        "runner.success": str(result.success).lower(),
        "runner.exit_code": "" if result.exit_code is None else str(result.exit_code),
        "runner.timed_out": str(result.timed_out).lower(),
        "runner.oom_killed": str(result.oom_killed).lower(),
        "runner.warm_start": str(result.warm_start).lower(),
        "runner.runtime": runtime or "default",
        "runner.image_id": result.image_id or "",
        "runner.code_path": result.code_path,
        "runner.timestamp": result.timestamp.isoformat(),
        "runner.hypothesis": result.hypothesis,
        "runner.reasoning": result.reasoning,
        "runner.error": result.error_message or "",
        # Whether the run's metrics are the runner's scores on held-out rows or the
        # script's own claim ("holdout" or "script").
        "runner.metrics_source": result.metrics_source,
        "runner.metrics_verified": str(result.verified).lower(),
    }
    if result.holdout is not None:
        tags["runner.holdout"] = result.holdout.model_dump_json()
    # A backend that runs scripts on several machines says which one ran this.
    if result.node:
        tags["runner.node"] = result.node
    digest = script_sha256(Path(result.code_path))
    if digest is not None:
        tags["runner.script_sha256"] = digest
    if result.hypothesis:
        tags["mlflow.note.content"] = result.hypothesis  # the run's description in the UI
    tags.update(_provenance_tags(result))
    return {key: _cut(value, MAX_TAG) for key, value in tags.items()}


def _provenance_tags(result: ExperimentResult) -> dict[str, str]:
    """The run ID, the provenance's main digests as tags of their own, and the whole
    provenance as JSON (without the CPU's flags if that is what makes it too long)."""
    tags = {"runner.run_id": result.run_id} if result.run_id else {}
    provenance = result.provenance
    if provenance is None:
        return tags
    for name in ("script_sha256", "script_dir_sha256", "image_id", "lock_sha256"):
        value = getattr(provenance, name)
        if value:
            tags[f"runner.provenance.{name}"] = str(value)
    whole = provenance.model_dump_json()
    if len(whole) > MAX_TAG and provenance.sandbox is not None:
        sandbox = provenance.sandbox.model_copy(update={"cpu_flags": []})
        whole = provenance.model_copy(update={"sandbox": sandbox}).model_dump_json()
    if len(whole) <= MAX_TAG:
        tags["runner.provenance"] = whole
    return tags


def _provenance_of(tags: dict[str, str]) -> Provenance | None:
    try:
        return Provenance.model_validate_json(tags["runner.provenance"])
    except (KeyError, ValidationError):
        return None


def _flag(tags: dict[str, str], key: str) -> bool:
    return tags.get(key) == "true"


def _result(run: Any) -> ExperimentResult | None:
    """An MLflow run the runner logged, as a result (None if it is not readable)."""
    tags: dict[str, str] = run.data.tags
    params: dict[str, str] = run.data.params
    metrics: dict[str, float] = run.data.metrics
    model_params: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith("model_params."):
            try:
                model_params[key.removeprefix("model_params.")] = json.loads(value)
            except ValueError:
                model_params[key.removeprefix("model_params.")] = value
    preprocessing = {
        key.removeprefix("preprocessing."): value
        for key, value in params.items()
        if key.startswith("preprocessing.")
    }
    exit_code = tags.get("runner.exit_code", "")
    stamp = tags.get("runner.timestamp")
    source = "holdout" if tags.get("runner.metrics_source") == "holdout" else "script"
    scores = {k: v for k, v in metrics.items() if not k.startswith(_PREFIX)}
    reported = dict(scores)
    if source == "holdout":
        reported = {
            k.removeprefix(REPORTED): v for k, v in scores.items() if k.startswith(REPORTED)
        }
        scores = {k: v for k, v in scores.items() if not k.startswith(REPORTED)}
    try:
        holdout = tags.get("runner.holdout")
        return ExperimentResult(
            experiment_name=tags.get("runner.experiment_name", ""),
            iteration=int(params.get("iteration", "0")),
            model_type=params.get("model_type", ""),
            model_params=model_params,
            preprocessing=PreprocessingConfig.model_validate(preprocessing),
            metrics=scores,
            reported_metrics=reported,
            metrics_source=source,
            holdout=HoldoutRecord.model_validate_json(holdout) if holdout else None,
            hypothesis=tags.get("runner.hypothesis", ""),
            reasoning=tags.get("runner.reasoning", ""),
            execution_time=metrics.get(_PREFIX + "execution_time", 0.0),
            success=_flag(tags, "runner.success"),
            error_message=tags.get("runner.error") or None,
            code_path=tags.get("runner.code_path", ""),
            timestamp=(
                datetime.fromisoformat(stamp)
                if stamp
                else datetime.fromtimestamp(run.info.start_time / 1000, UTC)
            ),
            exit_code=int(exit_code) if exit_code else None,
            timed_out=_flag(tags, "runner.timed_out"),
            oom_killed=_flag(tags, "runner.oom_killed"),
            image_id=tags.get("runner.image_id") or None,
            peak_memory_bytes=_int(metrics.get(_PREFIX + "peak_memory_bytes")),
            cpu_seconds=metrics.get(_PREFIX + "cpu_seconds"),
            warm_start=_flag(tags, "runner.warm_start"),
            node=tags.get("runner.node") or None,
            mlflow_run_id=run.info.run_id,
            run_id=tags.get("runner.run_id") or None,
            provenance=_provenance_of(tags),
        )
    except (ValidationError, ValueError) as e:
        log.warning("skipped MLflow run %s: %s", run.info.run_id, e)
        return None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
