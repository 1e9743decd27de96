"""Receipts: in-toto statements in DSSE envelopes, signed, verified, tampering found."""

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentResult
from runner.cli.main import main
from runner.core.provenance import ArtifactDigest, Limits, Provenance
from runner.results import receipt
from runner.results.history import ResultsHistory

PROVENANCE = Provenance(
    script_sha256="a" * 64, script_path="/e/exp.py", script_dir_sha256="b" * 64, image="img",
    image_id="sha256:" + "c" * 64, seccomp_sha256="d" * 64, runner_version="0.1.0",
    limits=Limits(timeout=60, memory="2g", cpus=1, pids=256, tmpfs="256m", output_limit=1),
    artifacts=[ArtifactDigest(name="plot.png", size=3, sha256="e" * 64)],
)  # fmt: skip
RESULT = ExperimentResult(
    experiment_name="x", iteration=0, model_type="m", execution_time=1.0, success=True,
    code_path="/e/exp.py", timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    metrics={"accuracy": 0.75}, run_id="r1", provenance=PROVENANCE,
)  # fmt: skip


def test_the_statement_names_script_and_artifacts_by_digest() -> None:
    """Subjects: the script and each artifact by SHA-256; predicate: provenance, metrics."""
    made = receipt.statement(RESULT)
    assert made["_type"] == "https://in-toto.io/Statement/v1"
    assert made["subject"] == [
        {"name": "script:exp.py", "digest": {"sha256": "a" * 64}},
        {"name": "artifact:plot.png", "digest": {"sha256": "e" * 64}},
    ]
    assert made["predicateType"] == receipt.PREDICATE_TYPE
    assert made["predicate"]["metrics"] == {"accuracy": 0.75}
    assert made["predicate"]["provenance"]["script_sha256"] == "a" * 64


def test_signed_receipts_verify_and_a_changed_payload_does_not(tmp_path: Path) -> None:
    """Signed with a key, verified with its public half; one changed metric fails it."""
    private, public = receipt.keygen(tmp_path / "key")
    assert private.stat().st_mode & 0o077 == 0
    envelope = receipt.write(RESULT, private)
    assert len(envelope["signatures"]) == 1
    found = receipt.verify(envelope, public)
    assert found.ok and found.signature_ok and found.metrics == {"accuracy": 0.75}
    payload = json.loads(receipt.payload_of(envelope))
    payload["predicate"]["metrics"]["accuracy"] = 0.99
    forged = {**envelope, "payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    assert receipt.verify(forged, public).signature_ok is False
    other = receipt.keygen(tmp_path / "other")[1]
    assert not receipt.verify(envelope, other).ok


def test_subjects_that_disagree_with_the_predicate_are_found() -> None:
    """Even unsigned, a subject swapped for another digest is a problem named."""
    envelope = receipt.write(RESULT)
    payload = json.loads(receipt.payload_of(envelope))
    payload["subject"][0]["digest"]["sha256"] = "f" * 64
    forged = {**envelope, "payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    found = receipt.verify(forged)
    assert not found.ok and "subjects are not" in found.problems[0]


def test_a_result_without_provenance_has_no_receipt() -> None:
    """Nothing ran, nothing to attest: an error that says so."""
    with pytest.raises(ExperimentExecutionError, match="no provenance"):
        receipt.statement(RESULT.model_copy(update={"provenance": None}))


def test_the_cli_writes_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`runner receipt RUN_ID --key` then `runner receipt verify FILE --key`: 0; tampered: 1."""
    results = tmp_path / "h.jsonl"
    ResultsHistory(results).append(RESULT)
    assert main(["receipt", "keygen", str(tmp_path / "k")]) == 0
    out = tmp_path / "r.json"
    args = ["--results", str(results), "--key", str(tmp_path / "k.pem"), "-o", str(out)]
    assert main(["receipt", "r1", *args]) == 0
    assert main(["receipt", "verify", str(out), "--key", str(tmp_path / "k.pub")]) == 0
    assert "signature verified" in capsys.readouterr().out
    data = json.loads(out.read_text())
    raw = receipt.payload_of(data).replace(b"0.75", b"0.95")
    data["payload"] = base64.b64encode(raw).decode()
    out.write_text(json.dumps(data))
    assert main(["receipt", "verify", str(out), "--key", str(tmp_path / "k.pub")]) == 1
    assert "does not verify" in capsys.readouterr().out
