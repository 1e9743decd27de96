"""A real sandboxed run logged to MLflow from the command line, and read back."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient

from tests.integration.conftest import run_once

#: Tests what is built on the sandbox, not the engine or runtime: once, in the runc pass.
pytestmark = run_once

SCRIPT = """
import json
with open("model.txt", "w") as f:
    f.write("weights")
print(json.dumps({"success": True, "metrics": {"accuracy": 0.5}}))
"""


def test_runner_run_logs_to_mlflow_and_history_reads_it_back(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """`runner run --mlflow` logs image ID, script and artifact; history shows it."""
    script = write_script(SCRIPT)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
        )  # fmt: skip

    ran = cli("run", str(script), "--name", "tracked", "--outputs", str(tmp_path / "out"),
              "--no-record", "--mlflow", store)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["accuracy"] == 0.5
    assert run.data.tags["runner.image_id"].startswith("sha256:")
    assert run.data.tags["runner.script_sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    assert (local / "outputs" / "model.txt").read_text() == "weights"
    assert (local / "script" / script.name).read_bytes() == script.read_bytes()
    shown = cli("history", "--mlflow", store)
    assert shown.returncode == 0, shown.stderr
    assert "tracked" in shown.stdout and "accuracy 0.5000" in shown.stdout
