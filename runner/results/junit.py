"""A JUnit XML report of a batch, as CI systems display test results: one test case a script."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

from runner.core.models import ExperimentResult
from runner.core.text import printable

#: Characters XML 1.0 cannot carry (controls but tab and newline, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
#: Characters of each output stream kept in a failed case (its tail).
TAIL = 4000


def xml_text(text: str) -> str:
    """``text`` with what XML cannot hold (or a terminal would act on) escaped, lines kept."""
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def outcome(result: ExperimentResult) -> str:
    """The kind of failure, in a word or two (empty for a success)."""
    if result.success:
        return ""
    if result.timed_out:
        return "timed out"
    if result.oom_killed:
        return "out of memory"
    return "failed"


def junit_report(results: Sequence[ExperimentResult], *, suite: str = "experiments") -> bytes:
    """The report: a test suite with one case per result (its script), in the given order.

    A failed run is a ``failure`` whose message is the first line of the
    runner's reason (the kind of failure as its type) and whose text is the
    whole reason; the tails of its stdout and stderr go to ``system-out`` and
    ``system-err``. Each case's properties say who computed its metrics
    (``metrics_source``: ``holdout``, the runner's scores, or ``script``) and give
    them (``metric.NAME``), and what the script claimed (``reported.NAME``).
    """
    failures = sum(not r.success for r in results)
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{sum(r.execution_time for r in results):.3f}",
    )
    for result in results:
        case = ET.SubElement(
            root,
            "testcase",
            classname=xml_text(str(Path(result.code_path).parent)),
            name=xml_text(result.experiment_name),
            file=xml_text(result.code_path),
            time=f"{result.execution_time:.3f}",
        )
        properties = ET.SubElement(case, "properties")
        named: list[tuple[str, str]] = [("metrics_source", result.metrics_source)]
        named += [(f"metric.{k}", repr(v)) for k, v in result.metrics.items()]
        if result.verified:
            named += [(f"reported.{k}", repr(v)) for k, v in result.reported_metrics.items()]
        for name, value in named:
            ET.SubElement(properties, "property", name=xml_text(name), value=value)
        if result.success:
            continue
        reason = result.error_message or "failed"
        failure = ET.SubElement(
            case,
            "failure",
            message=printable(reason.split("\n")[0], limit=500),
            type=outcome(result),
        )
        failure.text = xml_text(reason)
        ET.SubElement(case, "system-out").text = xml_text(result.stdout[-TAIL:])
        ET.SubElement(case, "system-err").text = xml_text(result.stderr[-TAIL:])
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"
