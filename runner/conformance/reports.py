"""The conformance outcome as CI systems read it: JSON, JUnit XML and SARIF 2.1.0.

SARIF is written with ``sarif-pydantic`` (the object model as pydantic models):
one rule per control, one result per probe, ``kind`` ``pass`` or ``fail``
(``open`` where it could not be observed).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from xml.etree import ElementTree as ET

from sarif_pydantic import (
    Invocation,
    Level,
    Message,
    ReportingConfiguration,
    ReportingDescriptor,
    Result,
    Run,
    Sarif,
    Tool,
    ToolDriver,
)

from runner.conformance.probes import PROBES
from runner.conformance.suite import Conformance

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL = "experiment-runner conformance"
#: Where each rule is explained.
HELP = "SECURITY.md and docs/ci.md of experiment-runner"


def _version() -> str:
    try:
        return version("experiment-runner")
    except PackageNotFoundError:
        return "0"


def as_json(outcome: Conformance) -> str:
    """The outcome as one JSON document (ASCII: every other character escaped)."""
    document = {
        "exit_code": outcome.exit_code,
        "engine": outcome.engine,
        "runtime": outcome.runtime,
        "image": outcome.image,
        "image_id": outcome.image_id,
        "seconds": outcome.seconds,
        "probes": [
            {"id": f.probe.id, "control": f.probe.control, "status": f.status, "detail": f.detail}
            for f in outcome.findings
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=True) + "\n"


def as_junit(outcome: Conformance) -> bytes:
    """A test suite with one case per probe: a failed control is a ``failure``, one that
    could not be observed an ``error``."""
    counts = {s: sum(f.status == s for f in outcome.findings) for s in ("fail", "error")}
    root = ET.Element(
        "testsuite",
        name="runner conformance",
        tests=str(len(outcome.findings)),
        failures=str(counts["fail"]),
        errors=str(counts["error"]),
        skipped="0",
        time=f"{outcome.seconds:.1f}",
    )
    properties = ET.SubElement(root, "properties")
    for key in ("engine", "runtime", "image", "image_id"):
        ET.SubElement(properties, "property", name=key, value=str(getattr(outcome, key)))
    for finding in outcome.findings:
        case = ET.SubElement(
            root, "testcase", classname="conformance", name=finding.probe.id, time="0"
        )
        if finding.status == "pass":
            ET.SubElement(case, "system-out").text = finding.detail
            continue
        tag = "failure" if finding.status == "fail" else "error"
        element = ET.SubElement(case, tag, message=finding.detail[:500], type=finding.probe.control)
        element.text = finding.detail
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def as_sarif(outcome: Conformance) -> str:
    """A SARIF 2.1.0 log: one rule per control, one result per probe."""
    rules = [
        ReportingDescriptor(
            id=probe.id,
            name=probe.id.title().replace("-", ""),
            short_description=Message(text=probe.control),
            full_description=Message(text=f"The sandbox enforces: {probe.control}."),
            help=Message(text=f"What the control is and how it is enforced: {HELP}."),
            default_configuration=ReportingConfiguration(level="error"),
        )
        for probe in PROBES
    ]
    index = {probe.id: i for i, probe in enumerate(PROBES)}
    results = [
        Result(
            rule_id=f.probe.id,
            rule_index=index[f.probe.id],
            kind={"pass": "pass", "fail": "fail", "error": "open"}[f.status],
            level=Level.ERROR if f.status == "fail" else Level.NONE,
            message=Message(text=f"{f.probe.control}: {f.detail}"),
        )
        for f in outcome.findings
    ]
    log = Sarif(
        version="2.1.0",
        schema_uri=SARIF_SCHEMA,
        runs=[
            Run(
                tool=Tool(
                    driver=ToolDriver(
                        name=TOOL,
                        version=_version(),
                        rules=rules,
                    )
                ),
                invocations=[
                    Invocation(
                        execution_successful=outcome.exit_code != 2,
                        properties={
                            "engine": outcome.engine,
                            "runtime": outcome.runtime,
                            "image": outcome.image,
                            "imageId": outcome.image_id,
                            "seconds": outcome.seconds,
                        },
                    )
                ],
                results=results,
            )
        ],
    )
    text: str = log.model_dump_json(by_alias=True, exclude_none=True, indent=2)
    return text + "\n"
