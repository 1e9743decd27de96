from pathlib import Path

import pytest

from runner import ExperimentRunner, ExperimentSpec
from runner.experiment.hints import Context, Evidence, explain
from runner.experiment.verdict import Ending
from tests.unit.fakes import FakeEngine

CONTEXT = Context(image="sklearn:pinned", visible=(Path("/work/exp"), Path("/data/in.csv")))
TRACEBACK = 'Traceback (most recent call last):\n  File "/work/exp/s.py", line 3, in <module>\n'


def hint_for(stderr_last: str, *, exit_code: int = 1, stdout: str = "") -> str | None:
    """The hint for a run that failed with ``stderr_last`` as its traceback's last line."""
    evidence = Evidence.of(Ending(exit_code), stdout, TRACEBACK + stderr_last + "\n")
    return explain(evidence, CONTEXT)


READ_ONLY = "the sandbox's file system is read-only apart from /tmp"
NO_NETWORK = "the sandbox has no network"
NOT_FOUND = "FileNotFoundError: [Errno 2] No such file or directory: "
#: (the script's error, the start of the hint it must get).
EXPLAINED = [
    ("OSError: [Errno 30] Read-only file system: 'model.pkl'", READ_ONLY),
    ("OSError: [Errno 30] Read-only file system: '/work/exp/plot.png'", READ_ONLY),
    # gVisor answers a write into a read-only mount with EACCES.
    ("PermissionError: [Errno 13] Permission denied: 'model.pkl'", READ_ONLY),
    ("PermissionError: [Errno 13] Permission denied: '/work/exp/out/plot.png'", READ_ONLY),
    ("socket.gaierror: [Errno -3] Temporary failure in name resolution", NO_NETWORK),
    ("socket.gaierror: [Errno -2] Name or service not known", NO_NETWORK),
    (
        "urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>",
        NO_NETWORK,
    ),
    ("OSError: [Errno 101] Network is unreachable", NO_NETWORK),
    ("urllib.error.URLError: <urlopen error [Errno 101] Network is unreachable>", NO_NETWORK),
    (
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.openml.org', "
        'port=443): Max retries exceeded (Caused by NameResolutionError("Failed to resolve '
        "'api.openml.org' ([Errno -3] Temporary failure in name resolution)\"))",
        NO_NETWORK,
    ),
    (
        "ModuleNotFoundError: No module named 'xgboost'",
        "there is no module 'xgboost' in the sandbox image sklearn:pinned",
    ),
    (
        NOT_FOUND + "'/home/me/train.csv'",
        "/home/me/train.csv is outside what the sandbox sees (only /work/exp and the inputs",
    ),
    (NOT_FOUND + '"/data/it\'s.csv"', "/data/it's.csv is outside what the sandbox sees"),
    (NOT_FOUND + "'/work/exp/../shared/x.csv'", "/work/shared/x.csv is outside"),
]


@pytest.mark.parametrize(("error", "hint"), EXPLAINED, ids=[e[:48] for e, _ in EXPLAINED])
def test_errors_the_sandbox_causes_get_a_hint(error: str, hint: str) -> None:
    """Each failure the sandbox explains gets one line, starting "Hint: ", saying what to do."""
    got = hint_for(error)
    assert got is not None and got.startswith("Hint: " + hint), got
    assert "\n" not in got


#: Errors that look alike but that the sandbox does not explain: no hint, never a guess.
UNEXPLAINED = [
    "ValueError: Read-only file system is not supported",
    "OSError: [Errno 28] No space left on device: '/tmp/big'",
    "PermissionError: [Errno 13] Permission denied: '/etc/shadow'",
    "PermissionError: [Errno 13] Permission denied: '/work/other/model.pkl'",
    "ValueError: column 'gaierror' not found",
    "urllib.error.URLError: <urlopen error unknown url type: s3>",
    "ConnectionRefusedError: [Errno 111] Connection refused",
    "ImportError: cannot import name 'xgboost' from 'sklearn'",
    "ModuleNotFoundError: No module named 'sklearn.cross_validation'",
    "ModuleNotFoundError: No module named 'utils.helpers'; 'utils' is not a package",
    "ImportError: No module named 'xgboost' was expected here",
    "FileNotFoundError: [Errno 2] No such file or directory: 'data/train.csv'",
    "FileNotFoundError: [Errno 2] No such file or directory: '/work/exp/data/train.csv'",
    "FileNotFoundError: [Errno 2] No such file or directory: '/data/in.csv'",
    "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/cache/x.npy'",
    "FileNotFoundError: [Errno 2] No such file or directory: '/a.csv' -> '/b.csv'",
    "KeyError: 'accuracy'",
]


@pytest.mark.parametrize("error", UNEXPLAINED)
def test_similar_but_unrelated_errors_get_no_hint(error: str) -> None:
    """A message that only resembles a sandbox failure gets no hint."""
    assert hint_for(error) is None


def test_only_the_final_error_counts() -> None:
    """A sandbox-like line earlier in stderr (a handled error, a warning) is not evidence."""
    stderr = (
        "warning: [Errno 30] Read-only file system: 'cache', continuing\n"
        "UserWarning: Temporary failure in name resolution, using the local copy\n"
        + TRACEBACK
        + "KeyError: 'target'\n"
    )
    assert explain(Evidence.of(Ending(1), "", stderr), CONTEXT) is None


def test_the_result_lines_error_counts_too() -> None:
    """A script that catches its error and reports it in {"success": false} gets the hint too."""
    stdout = '{"success": false, "error": "ModuleNotFoundError: No module named \'lightgbm\'"}\n'
    hint = explain(Evidence.of(Ending(0), stdout, ""), CONTEXT)
    assert hint is not None and "'lightgbm'" in hint


@pytest.mark.parametrize(
    "ending",
    [Ending(137, timed_out=True), Ending(137, oom_killed=True), Ending(1, exit_reported=False)],
    ids=["timeout", "oom", "sandbox-ended"],
)
def test_runs_the_sandbox_ended_get_no_hint(ending: Ending) -> None:
    """When the deadline, the memory cap or the sandbox ended the run, its output is no evidence."""
    stderr = "socket.gaierror: [Errno -3] Temporary failure in name resolution\n"
    assert explain(Evidence.of(ending, "", stderr), CONTEXT) is None


@pytest.mark.parametrize(
    ("stdout", "exit_code", "hinted"),
    [
        ("", 0, True),
        ("accuracy: 0.9\n", 0, True),
        ("[1, 2]\n", 0, True),
        ('{"success": true, "metrics": {"accuracy": "high"}}\n', 0, False),
        ('{"accuracy": 0.9}\n', 0, False),
        ("accuracy: 0.9\n", 1, False),
    ],
    ids=["empty", "text", "not-an-object", "bad-metrics", "no-success-key", "crashed"],
)
def test_a_clean_exit_without_a_result_line_says_what_to_print(
    stdout: str, exit_code: int, hinted: bool
) -> None:
    """Exit 0 with no JSON object line gets the result line's format; anything else does not."""
    hint = explain(Evidence.of(Ending(exit_code), stdout, ""), CONTEXT)
    if hinted:
        assert hint is not None and '{"success": True, "metrics": {"accuracy": 0.87}}' in hint
    else:
        assert hint is None


def test_a_hint_is_inert_text() -> None:
    """Script-controlled parts of a hint (a path) are escaped like the rest of the message."""
    hint = hint_for("FileNotFoundError: [Errno 2] No such file or directory: '/x\\x1b[2J/\u202e'")
    assert hint is not None
    assert "\x1b" not in hint and "\u202e" not in hint


def test_the_result_carries_the_hint_after_the_scripts_error(script: Path) -> None:
    """ExperimentRunner puts the hint on the line after the error message, nothing else changes."""
    engine = FakeEngine(
        wait_results=[1],
        stdout=b"",
        stderr=(TRACEBACK + "ModuleNotFoundError: No module named 'seaborn'\n").encode(),
    )
    spec = ExperimentSpec(experiment_name="hint", model_type="SVC")
    result = ExperimentRunner(timeout=5, engine=engine, image="img:1").run(script, spec, 0)
    first, hint = (result.error_message or "").split("\n")
    assert first == "Script exited with code 1: ModuleNotFoundError: No module named 'seaborn'"
    assert hint.startswith("Hint: there is no module 'seaborn' in the sandbox image img:1.")
