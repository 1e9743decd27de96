"""Turning what a script printed, and how it ended, into a verdict."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from runner.core.models import Verdict
from runner.core.text import printable


@dataclass(frozen=True)
class Ending:
    """How the container ended, as far as parsing needs to know."""

    exit_code: int | None
    timed_out: bool = False
    oom_killed: bool = False
    #: The sandbox recorded the script's exit; False when the sandbox ended first.
    exit_reported: bool = True


def find_result_line(stdout: str) -> dict[str, Any] | None:
    """The last line of ``stdout`` that is a JSON object (scripts print progress first)."""
    for candidate in reversed(_lines(stdout)):
        if not candidate.startswith("{"):
            continue
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def json_error(stdout: str) -> str:
    """The decoder's complaint about the last non-empty line, as the document words it."""
    lines = _lines(stdout)
    last = lines[-1] if lines else ""
    try:
        json.loads(last)
    except RecursionError:
        return "Failed to parse JSON output: nested too deeply"
    except ValueError as e:
        return printable(f"Failed to parse JSON output: {e}")
    return "Failed to parse JSON output: the last JSON value is not an object"


def last_line(text: str) -> str:
    lines = _lines(text)
    return printable(lines[-1]) if lines else ""


def _lines(text: str) -> list[str]:
    """The non-empty lines of ``text``, stripped.

    Split on "\\n" only: ``str.splitlines`` also splits on U+2028, U+0085 and
    other characters that are valid, unescaped, inside a JSON string.
    """
    return [stripped for line in text.split("\n") if (stripped := line.strip())]


def parse_metrics(raw: Any) -> tuple[dict[str, float], str | None]:
    """Metrics as floats, or the reason they are not acceptable."""
    if raw is None:
        return {}, None
    if not isinstance(raw, dict):
        return {}, f"Invalid metrics: expected a JSON object, got {type(raw).__name__}"
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        # bool is an int in Python, but never a metric.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return {}, (
                f"Invalid metrics: {_short(name)} must be a number, got "
                f"{type(value).__name__} {_short(value)}"
            )
        try:
            number = float(value)
        except OverflowError:  # JSON integers have no size limit; floats do
            return {}, f"Invalid metrics: {_short(name)} is too large for a float"
        if not math.isfinite(number):
            return {}, f"Invalid metrics: {_short(name)} must be a finite number, got {number}"
        metrics[str(name)] = number
    return metrics, None


def interpret(
    ending: Ending, stdout: str, stderr: str, *, timeout: float, memory_limit: str
) -> Verdict:
    """Decide success, metrics and the error message of one run."""
    if ending.timed_out:
        return Verdict(
            success=False, error_message=f"Experiment timed out after {_seconds(timeout)} seconds"
        )
    if ending.oom_killed:
        return Verdict(
            success=False,
            error_message=f"Experiment ran out of memory: killed at the memory limit of "
            f"{memory_limit} (exit code {ending.exit_code})",
        )
    if not ending.exit_reported:
        detail = last_line(stderr)
        return Verdict(
            success=False,
            error_message=f"The sandbox ended before the script did (exit code "
            f"{ending.exit_code}): the script killed its own supervisor, or the sandbox "
            f"itself failed (under gVisor: its kernel)"
            + (f"; last error: {detail}" if detail else ""),
        )
    payload = find_result_line(stdout)
    if ending.exit_code != 0:
        detail = ""
        if payload is not None and payload.get("success") is False and payload.get("error"):
            detail = printable(str(payload["error"]))
        detail = detail or last_line(stderr) or "no output on stderr"
        return Verdict(
            success=False, error_message=f"Script exited with code {ending.exit_code}: {detail}"
        )
    if payload is None:
        return Verdict(success=False, error_message=json_error(stdout))
    if payload.get("success") is not True:
        error = payload.get("error")
        if payload.get("success") is False:
            message = printable(str(error)) if error else "Script reported failure"
            return Verdict(success=False, error_message=message)
        return Verdict(
            success=False,
            error_message='Invalid result: the JSON object needs "success": true or false',
        )
    metrics, problem = parse_metrics(payload.get("metrics"))
    if problem is not None:
        return Verdict(success=False, error_message=problem)
    return Verdict(success=True, metrics=metrics, reported_metrics=metrics)


def interpret_held_out(
    ending: Ending, stdout: str, stderr: str, *, timeout: float, memory_limit: str
) -> Verdict:
    """How a script of the held-out protocol ended, before its predictions are scored.

    It needs no result line: an exit of 0 is a success so far (its predictions
    decide the rest). A result line it printed anyway counts for two things
    only: ``"success": false`` is a failure in its own words, and its metrics
    are kept as ``reported_metrics`` (a claim, never the score; left out when
    they are not numbers). Every other ending reads as ``interpret`` has it.
    """
    if ending.timed_out or ending.oom_killed or not ending.exit_reported or ending.exit_code != 0:
        return interpret(ending, stdout, stderr, timeout=timeout, memory_limit=memory_limit)
    payload = find_result_line(stdout)
    if payload is None:
        return Verdict(success=True, metrics_source="holdout")
    if payload.get("success") is False:
        error = payload.get("error")
        message = printable(str(error)) if error else "Script reported failure"
        return Verdict(success=False, error_message=message, metrics_source="holdout")
    reported, _ = parse_metrics(payload.get("metrics"))
    return Verdict(success=True, reported_metrics=reported, metrics_source="holdout")


def _seconds(timeout: float) -> str:
    return str(int(timeout)) if float(timeout).is_integer() else f"{timeout:g}"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return printable(text, limit=60)
