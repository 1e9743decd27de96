import json

import pytest

from runner.core.text import printable
from runner.experiment.verdict import Ending, find_result_line, interpret


def judge(stdout: str = "", stderr: str = "", exit_code: int | None = 0, **ending: bool):
    return interpret(Ending(exit_code, **ending), stdout, stderr, timeout=300, memory_limit="512m")


def test_result_is_the_last_json_object_line_after_progress() -> None:
    """Progress lines (even JSON ones) before the result line are ignored."""
    stdout = 'epoch 1\n{"progress": 0.5}\n{"success": true, "metrics": {"f1": 0.8}}\ndone\n'
    verdict = judge(stdout)
    assert verdict.success
    assert verdict.metrics == {"f1": 0.8}


def test_integer_metrics_become_floats() -> None:
    """An integer metric is accepted and reported as a float."""
    verdict = judge('{"success": true, "metrics": {"n": 3}}')
    assert verdict.metrics == {"n": 3.0}
    assert isinstance(verdict.metrics["n"], float)


def test_timeout_message_is_the_documents() -> None:
    """A timed-out run says "Experiment timed out after N seconds"."""
    verdict = judge('{"success": true}', exit_code=137, timed_out=True)
    assert not verdict.success
    assert verdict.error_message == "Experiment timed out after 300 seconds"


def test_oom_message_names_the_memory_limit() -> None:
    """An OOM kill fails the run with a message naming the memory limit."""
    verdict = judge(exit_code=137, oom_killed=True)
    assert not verdict.success
    assert "512m" in (verdict.error_message or "")
    assert "memory" in (verdict.error_message or "")


def test_nonzero_exit_reports_code_and_last_stderr_line() -> None:
    """A crash reads "Script exited with code 1: <last stderr line>", as in the document."""
    stderr = "Traceback (most recent call last):\n  ...\nImportError: No module named sklearn\n"
    verdict = judge(stderr=stderr, exit_code=1)
    assert (
        verdict.error_message == "Script exited with code 1: ImportError: No module named sklearn"
    )


def test_nonzero_exit_prefers_the_scripts_own_error() -> None:
    """A script that prints an error object and exits 1 reports that error."""
    verdict = judge('{"success": false, "error": "ValueError: bad"}\n', "trace\n", exit_code=1)
    assert verdict.error_message == "Script exited with code 1: ValueError: bad"


def test_forged_success_line_followed_by_crash_is_a_failure() -> None:
    """A success line is worthless when the script then exits non-zero."""
    verdict = judge('{"success": true, "metrics": {"accuracy": 1.0}}\n', "boom\n", exit_code=3)
    assert not verdict.success
    assert verdict.metrics == {}
    assert verdict.error_message == "Script exited with code 3: boom"


def test_unparsable_output_uses_the_documents_text() -> None:
    """No JSON object in stdout gives "Failed to parse JSON output: Expecting value..."."""
    verdict = judge("hello world\n")
    assert not verdict.success
    assert (verdict.error_message or "").startswith(
        "Failed to parse JSON output: Expecting value: line 1 column 1"
    )
    assert judge("").error_message == (
        "Failed to parse JSON output: Expecting value: line 1 column 1 (char 0)"
    )


def test_script_reported_failure_carries_its_error() -> None:
    """{"success": false, "error": ...} sets error_message to that error."""
    verdict = judge('{"success": false, "error": "ValueError: Target column not found"}')
    assert not verdict.success
    assert verdict.error_message == "ValueError: Target column not found"


def test_missing_success_flag_is_an_error() -> None:
    """A JSON object without a boolean "success" is not a result."""
    verdict = judge('{"metrics": {"accuracy": 0.9}}')
    assert not verdict.success
    assert "success" in (verdict.error_message or "")


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"accuracy": "high"}, "'accuracy' must be a number, got str 'high'"),
        ({"accuracy": True}, "'accuracy' must be a number, got bool"),
        ({"accuracy": None}, "'accuracy' must be a number, got NoneType"),
        ({"accuracy": [1]}, "'accuracy' must be a number, got list"),
        ({"accuracy": float("nan")}, "'accuracy' must be a finite number, got nan"),
        ({"accuracy": float("inf")}, "'accuracy' must be a finite number, got inf"),
    ],
)
def test_non_numeric_metrics_are_named_in_the_error(metrics: dict, expected: str) -> None:
    """A metric that is not a finite number fails the run and is named in the message."""
    verdict = judge(json.dumps({"success": True, "metrics": metrics}))
    assert not verdict.success
    assert expected in (verdict.error_message or "")


def test_metrics_that_are_not_an_object_are_rejected() -> None:
    """ "metrics" must be a JSON object."""
    verdict = judge('{"success": true, "metrics": [0.9]}')
    assert not verdict.success
    assert "expected a JSON object" in (verdict.error_message or "")


def test_deeply_nested_json_does_not_crash_the_parser() -> None:
    """A hostile, deeply nested line is skipped rather than raising RecursionError."""
    nested = "{" + '"a":{' * 100_000 + "}" * 100_001
    assert find_result_line(nested + "\n") is None
    verdict = judge(nested)
    assert not verdict.success
    assert "Failed to parse JSON output" in (verdict.error_message or "")


def test_terminal_escapes_in_script_errors_are_neutralised() -> None:
    """Escape codes and control bytes from a script never reach error_message raw."""
    stderr = "boom \x1b[2J\x1b]0;pwned\x07 \x00end\n"
    verdict = judge(stderr=stderr, exit_code=1)
    message = verdict.error_message or ""
    assert "\x1b" not in message and "\x07" not in message and "\x00" not in message
    assert "\\x1b[2J" in message
    own = judge('{"success": false, "error": "bad \\u001b[31m red"}')
    assert "\x1b" not in (own.error_message or "")


def test_error_messages_are_bounded() -> None:
    """A megabyte-long error line is cut to a readable length."""
    verdict = judge(stderr="E" * 1_000_000 + "\n", exit_code=1)
    assert len(verdict.error_message or "") < 600


def test_escapes_name_each_character_unambiguously() -> None:
    """C1, bidi, line-separator and astral format characters read as Python escapes."""
    assert (
        printable("a\x9bb\u202ec\u2028d\U000e0001e\n") == "a\\x9bb\\u202ec\\u2028d\\U000e0001e\\n"
    )


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_result_line_may_hold_characters_that_splitlines_splits_on(separator: str) -> None:
    """A result line printed with ensure_ascii=False may hold U+2028 and kin; only "\\n" ends it."""
    line = json.dumps(
        {"success": True, "metrics": {f"a{separator}b": 0.5}, "note": f"x{separator}y"},
        ensure_ascii=False,
    )
    assert separator in line
    verdict = judge(f"progress\r\n{line}\r\n")
    assert verdict.success, verdict.error_message
    assert verdict.metrics == {f"a{separator}b": 0.5}


def test_stderr_and_json_errors_read_whole_lines() -> None:
    """The last stderr line and the decoder's complaint are about "\\n"-separated lines."""
    crash = judge(stderr="first\nValueError: a\u2028b\n", exit_code=1)
    assert crash.error_message == "Script exited with code 1: ValueError: a\\u2028b"
    unparsable = judge('{"success": tru\u2028e}\n')
    assert unparsable.error_message == (
        "Failed to parse JSON output: Expecting value: line 1 column 13 (char 12)"
    )


def test_an_integer_too_large_for_a_float_is_a_failed_run() -> None:
    """A 400-digit metric fails the run with a clear message instead of raising."""
    verdict = judge('{"success": true, "metrics": {"accuracy": 1' + "0" * 400 + "}}")
    assert not verdict.success
    assert verdict.error_message == "Invalid metrics: 'accuracy' is too large for a float"


def test_metric_names_in_errors_are_bounded() -> None:
    """A megabyte-long metric name is cut in the error message."""
    verdict = judge(json.dumps({"success": True, "metrics": {"n" * 1_000_000: "x"}}))
    assert not verdict.success
    assert len(verdict.error_message or "") < 200
