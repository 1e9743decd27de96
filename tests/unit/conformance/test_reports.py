"""The conformance reports (JSON, JUnit, SARIF) and `runner doctor --conformance`'s exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import sarif_pydantic

from runner.cli import doctor
from runner.cli.main import main
from runner.conformance.probes import PROBES, Finding
from runner.conformance.reports import as_json, as_junit, as_sarif
from runner.conformance.suite import Conformance


def outcome(**statuses: str) -> Conformance:
    """Every probe passing but those given (probe id with dashes as underscores: status)."""
    findings = [
        Finding(p, statuses.get(p.id.replace("-", "_"), "pass"), f"detail of {p.id} <&>")  # type: ignore[arg-type]
        for p in PROBES
    ]
    return Conformance(findings, "Docker Engine 20.10", "runsc", "img:1", "sha256:" + "a" * 64, 9.5)


def test_json_lists_every_probe_and_the_exit_code() -> None:
    """--json: one document, each probe with its status; ASCII only."""
    text = as_json(outcome(cpu_cap="fail"))
    assert text.isascii()
    document = json.loads(text)
    assert document["exit_code"] == 4
    assert [p["id"] for p in document["probes"]] == [p.id for p in PROBES]
    assert {p["status"] for p in document["probes"]} == {"pass", "fail"}


def test_junit_has_a_case_per_probe_failures_and_errors() -> None:
    """--junit: one test case per probe; a failed control a failure, an unseen one an error."""
    report = as_junit(outcome(user="fail", image_lock="error"))
    root = ET.fromstring(report)  # noqa: S314 - the report this test just made
    assert root.get("tests") == str(len(PROBES))
    assert (root.get("failures"), root.get("errors")) == ("1", "1")
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert set(cases) == {p.id for p in PROBES}
    assert cases["user"].find("failure") is not None
    assert cases["image-lock"].find("error") is not None
    assert cases["pid-cap"].find("failure") is None


def test_sarif_is_2_1_0_with_a_rule_per_control() -> None:
    """--sarif: a SARIF 2.1.0 log a SARIF reader loads: one rule per control, kinds by status."""
    text = as_sarif(outcome(seccomp_io_uring="fail", memory_cap="error"))
    raw: dict[str, Any] = json.loads(text)
    assert raw["version"] == "2.1.0"
    assert raw["$schema"].endswith("sarif-2.1.0.json")
    log = sarif_pydantic.Sarif.model_validate_json(text)
    (run,) = log.runs
    rules = [rule.id for rule in run.tool.driver.rules]
    assert rules == [p.id for p in PROBES]
    kinds = {result.rule_id: (result.kind, result.level) for result in run.results}
    assert kinds["seccomp-io-uring"] == ("fail", sarif_pydantic.Level.ERROR)
    assert kinds["memory-cap"][0] == "open"
    assert kinds["network-dns"] == ("pass", sarif_pydantic.Level.NONE)
    for result in run.results:
        assert rules[result.rule_index] == result.rule_id


@pytest.mark.parametrize(("statuses", "code"), [({}, 0), ({"user": "fail"}, 4),
                                                ({"user": "error"}, 2)])  # fmt: skip
def test_doctor_conformance_exit_codes_and_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, statuses: dict[str, str], code: int
) -> None:
    """0 every control holds, 4 one fails, 2 one could not be observed; the files are written."""
    monkeypatch.setattr(doctor, "DockerEngine", lambda: None)
    monkeypatch.setattr(doctor, "run_conformance", lambda engine, settings: outcome(**statuses))
    junit, sarif = tmp_path / "c.xml", tmp_path / "c.sarif"
    args = ["doctor", "--conformance", "--junit", str(junit), "--sarif", str(sarif)]
    assert main(args) == code
    root = ET.parse(junit).getroot()  # noqa: S314 - the report this test just made
    assert root.get("tests") == str(len(PROBES))
    assert json.loads(sarif.read_text())["version"] == "2.1.0"


def test_report_options_need_conformance(capsys: pytest.CaptureFixture[str]) -> None:
    """--junit without --conformance is a usage error (exit 2), not a silent no-op."""
    assert main(["doctor", "--junit", "x.xml"]) == 2
    assert "--conformance" in capsys.readouterr().err
