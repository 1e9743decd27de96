from datetime import UTC, datetime
from xml.etree import ElementTree as ET

from runner.core.models import ExperimentResult
from runner.results.junit import junit_report


def result(name: str, **fields: object) -> ExperimentResult:
    values: dict[str, object] = {
        "experiment_name": name,
        "iteration": 0,
        "model_type": "script",
        "execution_time": 1.5,
        "success": True,
        "code_path": f"/exp/{name}.py",
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
    }
    values.update(fields)
    return ExperimentResult.model_validate(values)


def test_one_case_per_script_with_outcome_time_reason_and_output_tails() -> None:
    """A failed case carries its reason, the kind of failure, and the tails of its output."""
    report = junit_report(
        [
            result("good"),
            result("slow", success=False, timed_out=True, error_message="Timed out\nHint: x",
                   stdout="out\x1b[2J", stderr="e" * 5000 + "END"),
        ]
    )  # fmt: skip
    suite = ET.fromstring(report)  # noqa: S314 - the report this test just made
    assert (suite.get("tests"), suite.get("failures"), suite.get("time")) == ("2", "1", "3.000")
    good, slow = suite.findall("testcase")
    assert good.get("name") == "good" and good.get("classname") == "/exp"
    assert good.find("failure") is None and good.get("time") == "1.500"
    failure = slow.find("failure")
    assert failure is not None
    assert (failure.get("type"), failure.get("message")) == ("timed out", "Timed out")
    assert failure.text == "Timed out\nHint: x"
    assert slow.findtext("system-out") == "out\\x1b[2J"  # escaped, never raw
    err = slow.findtext("system-err") or ""
    assert err.endswith("END") and len(err) == 4000


def test_a_case_says_who_computed_its_metrics() -> None:
    """Properties name the metrics' source and values, and a held-out run's claim apart."""
    report = junit_report(
        [
            result("scored", metrics={"accuracy": 0.5}, metrics_source="holdout",
                   reported_metrics={"accuracy": 1.0}),
            result("claimed", metrics={"accuracy": 0.9}),
        ]
    )  # fmt: skip
    suite = ET.fromstring(report)  # noqa: S314 - the report this test just made
    scored, claimed = (
        {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in suite.findall("testcase")
    )
    assert scored == {
        "metrics_source": "holdout", "metric.accuracy": "0.5", "reported.accuracy": "1.0"
    }  # fmt: skip
    assert claimed == {"metrics_source": "script", "metric.accuracy": "0.9"}
