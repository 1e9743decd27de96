"""Provenance, replay and receipts, as a user runs them: `runner run`, `runner replay`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from runner import ExperimentResult
from tests.integration.test_cli import runner_cli

#: A seeded experiment: the same numbers on every run.
SEEDED = """\
import json, sys
import numpy as np
data = open(sys.argv[1]).read() if len(sys.argv) > 1 else ""
rng = np.random.default_rng(7)
x = rng.normal(size=(200, 5))
print(json.dumps({"success": True, "metrics": {
    "score": float(np.linalg.norm(x @ x.T)), "chars": float(len(data))}}))
"""

#: An unseeded one: its metric changes from run to run.
UNSEEDED = """\
import json, os
print(json.dumps({"success": True, "metrics": {
    "score": int.from_bytes(os.urandom(4), "big") / 2**32, "fixed": 1.0}}))
"""


def run_json(script: Path, results: Path, *extra: str) -> ExperimentResult:
    out = runner_cli("run", str(script), "--results", str(results), "--json", *extra)
    assert out.returncode == 0, out.stderr
    return ExperimentResult.model_validate_json(out.stdout)


def test_run_records_provenance_and_replay_reproduces_after_the_script_changed(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """`run --json` shows run_id and provenance; after the script is edited, replay exits 0."""
    data = tmp_path / "data.txt"
    data.write_text("0123456789")
    data.chmod(0o644)
    script = write_script(SEEDED)
    results = tmp_path / "results.jsonl"
    result = run_json(script, results, "--input", str(data), "--", str(data))
    provenance = result.provenance
    assert result.run_id and provenance is not None
    assert provenance.script_sha256 == __import__("hashlib").sha256(script.read_bytes()).hexdigest()
    assert provenance.stored == provenance.script_dir_sha256
    assert [(i.path, i.size) for i in provenance.inputs] == [(str(data), 10)]
    assert provenance.args == [str(data)]
    assert provenance.environment["PYTHONHASHSEED"] == "0"
    assert provenance.environment["OPENBLAS_NUM_THREADS"] == "1"
    assert provenance.environment["TZ"] == "UTC"
    assert provenance.image_id == result.image_id and provenance.lock_sha256
    assert provenance.limits.memory == "2g" and provenance.engine is not None
    sandbox = provenance.sandbox
    assert sandbox is not None and sandbox.cpu_flags and sandbox.kernel
    assert sandbox.blas and sandbox.blas[0].architecture  # the kernel OpenBLAS chose
    script.write_text("raise SystemExit('edited afterwards')\n")

    out = runner_cli("replay", result.run_id, "--results", str(results))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reproduced: identical metrics" in out.stdout


def test_an_unseeded_script_diverges_and_names_the_metric(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """Replaying an unseeded script exits 3 and names the metric that moved, not the other."""
    results = tmp_path / "results.jsonl"
    result = run_json(write_script(UNSEEDED), results)
    assert result.run_id
    out = runner_cli("replay", result.run_id, "--results", str(results), "--json")
    assert out.returncode == 3, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["outcome"] == "diverged"
    assert report["diverged"] == ["score"]
    assert report["differences"] == []  # same machine, image, environment


def test_a_changed_input_is_named_and_not_used(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """An input edited since the run: replay exits 2 and names it, with what to do."""
    data = tmp_path / "data.txt"
    data.write_text("original")
    data.chmod(0o644)
    results = tmp_path / "results.jsonl"
    result = run_json(write_script(SEEDED), results, "--input", str(data), "--", str(data))
    data.write_text("changed!")
    assert result.run_id
    out = runner_cli("replay", result.run_id, "--results", str(results))
    assert out.returncode == 2
    assert f"{data}: changed" in out.stderr
    assert "put the recorded input back" in out.stderr
