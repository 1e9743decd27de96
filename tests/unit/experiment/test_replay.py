"""A replay's verdict: metrics side by side, provenance compared field by field."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner import ExperimentResult
from runner.core.provenance import EngineRecord, InputDigest, Limits, Provenance, SandboxFacts
from runner.experiment.replay import CannotReplay, check_inputs, compare, find, replay
from runner.results.history import ResultsHistory


def provenance(**changes: object) -> Provenance:
    base = Provenance(
        script_sha256="a" * 64, script_path="/e/x.py", script_dir_sha256="b" * 64,
        image="img", image_id="sha256:" + "c" * 64, seccomp_sha256="d" * 64,
        limits=Limits(timeout=60, memory="2g", cpus=1, pids=256, tmpfs="256m", output_limit=1),
        engine=EngineRecord(engine="docker", runtime="runc"),
        sandbox=SandboxFacts(cpu_model="EPYC", method="ctypes"), runner_version="0.1.0",
    )  # fmt: skip
    return base.model_copy(update=changes)


def result(run_id: str = "r1", success: bool = True, prov: Provenance | None = None,
           **metrics: float) -> ExperimentResult:  # fmt: skip
    return ExperimentResult(
        experiment_name="x", iteration=0, model_type="m", execution_time=1.0, success=success,
        code_path="/e/x.py", timestamp=datetime(2026, 1, 1, tzinfo=UTC), metrics=metrics,
        run_id=run_id, provenance=prov or provenance(),
    )  # fmt: skip


def test_identical_metrics_reproduce() -> None:
    """Equal metrics and provenance: identical, nothing named."""
    report = compare(result(acc=0.9), result(acc=0.9), 0.0)
    assert report.outcome == "identical" and report.reproduced
    assert report.diverged == [] and report.differences == []


def test_within_tolerance_then_beyond() -> None:
    """A small move passes with a tolerance and fails without; the metric is named."""
    assert compare(result(acc=0.9), result(acc=0.9001), 0.001).outcome == "within_tolerance"
    report = compare(result(acc=0.9, f1=0.5), result(acc=0.95, f1=0.5), 0.001)
    assert report.outcome == "diverged" and report.diverged == ["acc"]


def test_a_missing_metric_or_a_failure_diverges() -> None:
    """A metric only one run reported diverges; so does a replay that failed."""
    assert compare(result(acc=0.9), result(f1=0.9), 0.0).diverged == ["acc", "f1"]
    failed = result(success=False).model_copy(update={"error_message": "boom"})
    report = compare(result(), failed, 0.0)
    assert report.outcome == "diverged" and report.error == "boom"


def test_provenance_differences_are_named_but_not_by_design_ones() -> None:
    """Another CPU is named; the script's path, warm or cold, the probe's method are not."""
    now = provenance(
        script_path="/tmp/replay/x.py", warm=True,
        sandbox=SandboxFacts(cpu_model="Xeon", method="threadpoolctl"),
    )  # fmt: skip
    report = compare(result(acc=1.0), result(acc=1.0, prov=now), 0.0)
    assert [(d.field, d.recorded, d.replayed) for d in report.differences] == [
        ("sandbox.cpu_model", "EPYC", "Xeon")
    ]


def test_a_changed_or_missing_input_is_named(tmp_path: Path) -> None:
    """Each input that changed or went is named; the replay does not run."""
    data = tmp_path / "d.csv"
    data.write_text("a,b\n")
    sha = __import__("hashlib").sha256(b"a,b\n").hexdigest()
    ok = InputDigest(path=str(data), size=4, sha256=sha)
    check_inputs(provenance(inputs=[ok]))
    data.write_text("a,c\n")
    gone = InputDigest(path=str(tmp_path / "gone.csv"), size=1, sha256=sha)
    with pytest.raises(CannotReplay) as raised:
        check_inputs(provenance(inputs=[ok, gone]))
    assert f"{data}: changed" in str(raised.value) and "gone.csv: it is gone" in str(raised.value)


def test_a_run_is_found_by_its_id_or_a_unique_start(tmp_path: Path) -> None:
    """The full ID or an unambiguous prefix finds it; an ambiguous or unknown one says so."""
    history = ResultsHistory(tmp_path / "h.jsonl")
    for run_id in ("abc123", "abd456"):
        history.append(result(run_id))
    assert find(history, "abc").run_id == "abc123"
    with pytest.raises(CannotReplay, match="starts 2 run IDs"):
        find(history, "ab")
    with pytest.raises(CannotReplay, match="No result"):
        find(history, "zzz")


def test_the_replay_directory_goes_without_touching_what_its_links_name(tmp_path: Path) -> None:
    """Read-only directories are removed; a link to a directory outside keeps its mode."""
    from runner.experiment.replay import _remove

    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    outside.chmod(0o700)
    work = tmp_path / "work"
    (work / "script" / "ro").mkdir(parents=True)
    (work / "script" / "ro" / "f.py").write_text("x")
    (work / "script" / "ro").chmod(0o555)
    (work / "script" / "out").symlink_to(outside)
    _remove(work)
    assert not work.exists()
    assert outside.stat().st_mode & 0o777 == 0o700


def test_a_held_out_result_is_not_replayed_and_says_what_to_do(tmp_path: Path) -> None:
    """Its metrics are the runner's scores of a split a replay would not make again."""
    history = ResultsHistory(tmp_path / "h.jsonl")
    history.append(result("h1").model_copy(update={"metrics_source": "holdout"}))
    with pytest.raises(CannotReplay, match="held-out split") as raised:
        replay("h1", history=history)
    assert "Holdout" in (raised.value.hint or "")
