"""MLflow tracking against real MLflow stores (sqlite, and a server on loopback); no Docker."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from rich.console import Console

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.cli import show
from runner.cli.main import main
from runner.results.history import ResultsHistory
from runner.results.mlflow import MlflowTracker
from runner.sandbox.artifacts import ARTIFACTS_MARKER
from tests.unit.fakes import FakeEngine
from tests.unit.sandbox.test_artifacts import file, tar_of

SPEC = ExperimentSpec(
    experiment_name="forest",
    hypothesis="more trees help",
    model_type="RandomForestClassifier",
    model_params={"n_estimators": 50, "max_depth": None},
)
OUTPUT = b'{"success": true, "metrics": {"accuracy": 0.9, "f1": 0.8}}\n'


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback traffic stays on loopback: no proxy from the environment is used."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A sqlite tracking store; MLflow puts its artifacts under ./mlruns, so cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mlflow server` on loopback (no job runner, no telemetry); removed with its children."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
        ],
        env=env, cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("wb"),
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((tmp_path / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        yield uri, server
    finally:
        stop(server)


def stop(server: subprocess.Popen[bytes]) -> None:
    """End the server and every process of its session."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # Its workers share its process group; any that outlived it go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


def test_a_batch_is_logged_with_params_metrics_tags_and_artifacts(
    script: Path, store: str, tmp_path: Path
) -> None:
    """Each result of a batch is an MLflow run of the spec's experiment, with all it holds."""
    stream = ARTIFACTS_MARKER + tar_of(file("model.pkl", b"model"))
    engine = FakeEngine(wait_results=[0, 0], stdout=OUTPUT + stream, stderr=b"warned\n")
    history = ResultsHistory(tmp_path / "results.jsonl")
    runner = ExperimentRunner(
        timeout=5, engine=engine, outputs_dir=tmp_path / "out", history=history, tracking_uri=store
    )
    results = runner.run_many([(script, SPEC, 0), (script, SPEC, 1)], max_workers=1)
    assert all(r.mlflow_run_id and r.tracking_error is None for r in results)
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("forest")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["params.iteration"])
    assert [r.info.run_id for r in runs] == [r.mlflow_run_id for r in results]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "model_type": "RandomForestClassifier",
        "iteration": "0",
        "model_params.n_estimators": "50",
        "model_params.max_depth": "null",
        "preprocessing.missing_values": "median",
        "preprocessing.scaling": "standard",
        "preprocessing.encoding": "onehot",
    }
    assert run.data.metrics["accuracy"] == 0.9 and run.data.metrics["f1"] == 0.8
    assert run.data.metrics["runner.execution_time"] >= 0
    tags = run.data.tags
    assert (tags["runner.success"], tags["runner.exit_code"]) == ("true", "0")
    assert (tags["runner.timed_out"], tags["runner.oom_killed"]) == ("false", "false")
    assert (tags["runner.warm_start"], tags["runner.runtime"]) == ("false", "default")
    assert tags["runner.image_id"] == "sha256:" + "ab" * 32
    assert tags["runner.script_sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    assert tags["runner.node"] == socket.gethostname()  # a local run names this machine
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    assert (local / "script" / script.name).read_bytes() == script.read_bytes()
    assert (local / "output" / "stdout.txt").read_text() == OUTPUT.decode()
    assert (local / "output" / "stderr.txt").read_text() == "warned\n"
    assert (local / "outputs" / "model.pkl").read_bytes() == b"model"
    recorded, _ = history.read()
    assert sorted(r.mlflow_run_id or "" for r in recorded) == sorted(r.info.run_id for r in runs)


def test_a_failed_run_is_a_failed_mlflow_run_with_its_reason(script: Path, store: str) -> None:
    """A script that fails gives a FAILED run tagged with its exit code and error."""
    engine = FakeEngine(wait_results=[3], stdout=b"", stderr=b"ValueError: bad input\n")
    result = ExperimentRunner(timeout=5, engine=engine, tracking_uri=store).run(script, SPEC, 0)
    assert not result.success and result.mlflow_run_id
    run = MlflowClient(tracking_uri=store).get_run(result.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["runner.exit_code"] == "3"
    assert "ValueError: bad input" in run.data.tags["runner.error"]


def test_results_read_back_from_mlflow_and_in_runner_history(
    script: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MlflowTracker.read and `runner history --mlflow` give back what was logged."""
    engine = FakeEngine(wait_results=[0, 0], stdout=OUTPUT)
    runner = ExperimentRunner(timeout=5, engine=engine, tracking_uri=store)
    other = SPEC.model_copy(update={"experiment_name": "linear", "model_type": "Ridge"})
    logged = [runner.run(script, SPEC, 4), runner.run(script, other, 0)]
    back = {r.experiment_name: r for r in MlflowTracker(store).read()}
    for result in logged:
        again = back[result.experiment_name]
        fields = {"stdout", "stderr", "artifacts", "peak_memory_bytes", "cpu_seconds"}
        assert again.model_dump(exclude=fields) == result.model_dump(exclude=fields)
    assert [r.experiment_name for r in MlflowTracker(store).read(name="lin")] == ["linear"]
    screen = io.StringIO()
    for name in ("console", "errors"):
        monkeypatch.setattr(show, name, Console(file=screen, width=400, highlight=False))
    assert main(["history", "--mlflow", store, "--name", "forest"]) == 0
    shown = screen.getvalue()
    assert f"{store}: 1 result(s)" in shown
    assert "forest" in shown and "accuracy 0.9000" in shown and "linear" not in shown


def test_a_tracking_server_that_is_down_costs_the_result_nothing(
    script: Path, tmp_path: Path
) -> None:
    """With nothing listening, the run succeeds, says it was not logged, and is recorded."""
    history = ResultsHistory(tmp_path / "results.jsonl")
    runner = ExperimentRunner(
        timeout=5,
        engine=FakeEngine(),
        history=history,
        tracking_uri=f"http://127.0.0.1:{free_port()}",
    )
    result = runner.run(script, SPEC, 0)
    assert result.success and result.metrics == {"accuracy": 0.9}
    assert result.mlflow_run_id is None
    assert (result.tracking_error or "").startswith("Not logged to MLflow at http://127.0.0.1:")
    recorded, _ = history.read()
    assert recorded == [result]


def test_a_server_stopped_mid_batch_loses_nothing(
    script: Path,
    tmp_path: Path,
    mlflow_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Runs logged before the server stops are in it; every result is in the history."""
    uri, server = mlflow_server
    engine = FakeEngine(wait_results=[0] * 4, stdout=OUTPUT)
    history = ResultsHistory(tmp_path / "results.jsonl")
    runner = ExperimentRunner(timeout=5, engine=engine, history=history, tracking_uri=uri)

    def halfway(index: int, result: object) -> None:
        if server.poll() is None and len(history.read()[0]) == 2:
            stop(server)

    jobs = [(script, SPEC, i) for i in range(4)]
    results = runner.run_many(jobs, max_workers=1, on_result=halfway)
    assert [r.success for r in results] == [True] * 4
    logged = [r for r in results if r.mlflow_run_id]
    assert len(logged) == 2
    assert all(
        "Not logged to MLflow" in (r.tracking_error or "") for r in results if r not in logged
    )
    recorded, unreadable = history.read()
    assert unreadable == 0
    assert sorted(r.iteration for r in recorded) == [0, 1, 2, 3]
    # What reached the server is all there, read from its store directly.
    stored = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'server.db'}")
    experiment = stored.get_experiment_by_name("forest")
    assert experiment is not None
    runs = stored.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(r.mlflow_run_id or "" for r in logged)
    assert all(r.data.metrics["accuracy"] == 0.9 for r in runs)


def test_without_mlflow_installed_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tracking URI without the mlflow package is a caller error naming the extra."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ExperimentExecutionError) as info:
        ExperimentRunner(engine=FakeEngine(), tracking_uri="sqlite:///x.db")
    assert "experiment-runner[mlflow]" in (info.value.hint or "")


def test_mlflow_telemetry_is_off_unless_the_user_turned_it_on(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner turns MLflow's usage telemetry off, and leaves a user's own choice alone."""
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    MlflowTracker(store)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    MlflowTracker(store)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_the_tracking_uri_comes_from_the_environment(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUNNER_TRACKING_URI turns tracking on for every runner."""
    monkeypatch.setenv("RUNNER_TRACKING_URI", store)
    runner = ExperimentRunner(engine=FakeEngine())
    assert runner.tracker is not None and runner.tracker.uri == store


def test_runner_batch_logs_every_script_to_mlflow(
    script: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runner batch a.py b.py --mlflow URI` logs both runs (the URI once went missing)."""
    engine = FakeEngine(wait_results=[0, 0], stdout=OUTPUT)
    monkeypatch.setattr("runner.backends.local.DockerEngine", lambda: engine)
    other = script.with_name("other.py")
    other.write_text(script.read_text())
    code = main(["batch", str(script), str(other), "--mlflow", store, "--no-record"])
    assert code == 0
    logged = MlflowTracker(store).read()
    assert sorted(r.experiment_name for r in logged) == ["other", "script"]


def test_a_held_out_result_keeps_scores_and_claim_apart(store: str, tmp_path: Path) -> None:
    """The runner's scores are the run's metrics, the script's claim is under reported.*,
    the split is in params and tags; all of it reads back as it was."""
    from datetime import UTC, datetime

    from runner.core.models import ExperimentResult, HoldoutRecord

    script = tmp_path / "exp.py"
    script.write_text("print(1)\n")
    record = HoldoutRecord(
        target_column="label", task_type="classification", test_size=0.25, seed=3,
        train_rows=30, test_rows=10, test_rows_sha256="ab" * 32, data_sha256="cd" * 32,
        classes=["a", "b"], scoring_time=0.1,
    )  # fmt: skip
    result = ExperimentResult(
        experiment_name="forest", iteration=0, model_type="RandomForestClassifier",
        code_path=str(script), timestamp=datetime(2026, 1, 1, tzinfo=UTC), success=True,
        execution_time=1.0, metrics={"accuracy": 0.5}, reported_metrics={"accuracy": 1.0},
        metrics_source="holdout", holdout=record,
    )  # fmt: skip
    tracker = MlflowTracker(store)
    run = MlflowClient(tracking_uri=store).get_run(tracker.log(result))
    assert run.data.metrics["accuracy"] == 0.5 and run.data.metrics["reported.accuracy"] == 1.0
    assert run.data.params["holdout.test_rows_sha256"] == "ab" * 32
    assert run.data.tags["runner.metrics_source"] == "holdout"
    assert run.data.tags["runner.metrics_verified"] == "true"
    (back,) = tracker.read()
    assert back.metrics == {"accuracy": 0.5} and back.reported_metrics == {"accuracy": 1.0}
    assert back.verified and back.holdout == record
