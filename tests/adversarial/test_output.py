"""Output abuse: floods, no newlines, bad bytes, forged results, hostile JSON."""

from __future__ import annotations

import json

import pytest

from tests.adversarial.conftest import Hostile

LIMIT = 64 * 1024


def test_floods_on_both_streams_keep_a_capped_tail(hostile: Hostile) -> None:
    """Hundreds of MB on stdout and stderr: each kept to the cap, the result still read."""
    result = hostile(
        """
        import json, os
        block = b"z" * (1 << 20)
        for _ in range(200):
            os.write(1, block)
            os.write(2, block)
        os.write(1, b"\\n" + json.dumps({"success": True}).encode() + b"\\n")
        """,
        output_limit=LIMIT,
        timeout=60,
    )
    assert result.success, result.error_message
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout.encode()) == LIMIT and len(result.stderr.encode()) == LIMIT


def test_a_gigabyte_without_a_newline(hostile: Hostile) -> None:
    """1 GB on one line is capped; with no result line the run fails cleanly."""
    result = hostile(
        "import os\nblock = b'q' * (1 << 20)\nfor _ in range(1024):\n    os.write(1, block)\n",
        output_limit=LIMIT,
        timeout=60,
    )
    assert not result.success
    assert result.stdout_truncated
    assert result.stdout == "q" * LIMIT
    assert (result.error_message or "").startswith("Failed to parse JSON output")


def test_invalid_utf8_and_terminal_escapes_are_neutralised(hostile: Hostile) -> None:
    """Bad bytes decode with replacement; escape codes never reach error_message raw."""
    result = hostile(
        """
        import os, sys
        os.write(1, b"\\xff\\xfe\\xc3(\\n")
        os.write(2, b"\\x1b[2J\\x1b]0;pwned\\x07 \\x9b31m fatal\\n")
        sys.exit(1)
        """
    )
    assert not result.success
    assert "\ufffd" in result.stdout
    message = result.error_message or ""
    assert message.startswith("Script exited with code 1:")
    assert not any(ch in message for ch in "\x1b\x07\x9b")


def test_forged_result_followed_by_a_crash_is_a_failure(hostile: Hostile) -> None:
    """A perfect-score line is ignored when the script then crashes."""
    result = hostile(
        """
        import json, os
        print(json.dumps({"success": True, "metrics": {"accuracy": 1.0}}), flush=True)
        os._exit(3)
        """
    )
    assert not result.success
    assert result.metrics == {}
    assert result.exit_code == 3


@pytest.mark.parametrize(
    "payload",
    [
        "'{' + '\"a\":{' * 200000 + '}' * 200001",  # nested far past any recursion limit
        "json.dumps({'success': True, 'metrics': {f'm{i}': 1.0 for i in range(300000)}})",
    ],
    ids=["deeply-nested", "huge"],
)
def test_hostile_json_fails_cleanly(hostile: Hostile, payload: str) -> None:
    """Deeply nested or oversized JSON gives a failed result, not a runner crash."""
    result = hostile(f"import json\nprint({payload})\n", timeout=30)
    assert not result.success
    assert (result.error_message or "").startswith("Failed to parse JSON output")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_metrics_are_rejected(hostile: Hostile, value: str) -> None:
    """Non-finite metrics fail the run, naming the metric."""
    line = '{"success": true, "metrics": {"accuracy": %s}}' % value  # noqa: UP031
    result = hostile(f"print({json.dumps(line)})\n")
    assert not result.success
    assert "'accuracy' must be a finite number" in (result.error_message or "")


def test_one_write_past_64_kib_arrives_whole(hostile: Hostile) -> None:
    """A single 70,000-byte write and the result line after it arrive whole (gVisor too)."""
    result = hostile(
        """
        import json, sys
        sys.stdout.write("A" * 70000 + "\\n")
        print(json.dumps({"success": True, "metrics": {"accuracy": 1.0}}))
        """
    )
    assert result.success, result.error_message
    assert result.stdout.count("A") == 70000


def test_every_byte_of_a_large_output_arrives(hostile: Hostile) -> None:
    """5 MB written through print() and sys.stdout/sys.stderr in big pieces: not one byte lost."""
    result = hostile(
        """
        import json, sys
        for i in range(50):
            sys.stdout.write(f"{i:08d}" + "o" * 99_991 + "\\n")
            sys.stderr.write(f"{i:08d}" + "e" * 99_991 + "\\n")
        print(json.dumps({"success": True}))
        """,
        output_limit=16 * 1024 * 1024,
        timeout=60,
    )
    assert result.success, result.error_message
    lines = result.stdout.splitlines()
    assert [line[:8] for line in lines[:-1]] == [f"{i:08d}" for i in range(50)]
    assert all(len(line) == 99_999 for line in lines[:-1])
    assert len(result.stderr) == 50 * 100_000
    assert not result.stdout_truncated and not result.stderr_truncated


def test_output_before_a_deadline_kill_is_kept(hostile: Hostile) -> None:
    """What the script printed, even without a newline or a flush, survives the kill."""
    result = hostile(
        """
        import sys, time
        print("started")
        sys.stdout.write("progress 42%")
        sys.stderr.write("warming up")
        time.sleep(600)
        """,
        timeout=4,
    )
    assert result.timed_out
    assert result.stdout == "started\nprogress 42%"
    assert result.stderr == "warming up"
