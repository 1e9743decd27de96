"""Property-based tests: whatever a script prints, parsing answers with a verdict."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.experiment.verdict import (
    Ending,
    Verdict,
    find_result_line,
    interpret,
    json_error,
    parse_metrics,
)

# Fast enough for every run of the unit tests (a few seconds in all).
fuzz = settings(max_examples=300, deadline=None)

HUGE = st.sampled_from([10**400, -(10**400), 2**1024, 10**4000])
#: Floats include NaN and infinities, which json.dumps prints as bare NaN/Infinity literals.
NUMBERS = st.integers() | HUGE | st.floats()
SCALARS = st.none() | st.booleans() | NUMBERS | st.text()
#: Keys json.dumps turns into strings: "1", "NaN", "true", "null" and friends.
KEYS = st.text() | st.integers() | HUGE | st.floats() | st.booleans() | st.none()
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
DEPTHS = st.integers(min_value=1, max_value=100_000)
#: A JSON value as text, including nesting far deeper than the decoder's recursion limit.
VALUE_TEXT = (
    JSON.map(json.dumps)
    | DEPTHS.map(lambda d: "[" * d + "]" * d)
    | DEPTHS.map(lambda d: '{"a":' * d + "1" + "}" * d)
)
RESULTS = st.fixed_dictionaries(
    {"success": st.just(True) | st.booleans() | JSON},
    optional={"metrics": st.dictionaries(KEYS, NUMBERS | JSON) | JSON, "error": JSON},
)
RESULT_LINES = st.builds(json.dumps, RESULTS, ensure_ascii=st.booleans()) | st.builds(
    str.format,
    st.sampled_from(
        [
            '{{"success": true, "metrics": {{"accuracy": {}}}}}',
            '{{"success": true, "metrics": {}}}',
            '{{"success": false, "error": {}}}',
        ]
    ),
    VALUE_TEXT,
)
STDOUTS = st.text() | st.tuples(st.text(), RESULT_LINES, st.text()).map("\n".join)
#: Mostly clean exits, the case where the result line is read at all.
ENDINGS = st.just(Ending(0)) | st.builds(
    Ending,
    exit_code=st.none() | st.integers(min_value=-(2**31), max_value=2**31),
    timed_out=st.booleans(),
    oom_killed=st.booleans(),
)


def assert_well_formed(verdict: Verdict) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.success == (verdict.error_message is None)
    assert all(isinstance(v, float) and math.isfinite(v) for v in verdict.metrics.values())
    assert verdict.error_message is None or verdict.error_message.isprintable()


@fuzz
@given(ending=ENDINGS, stdout=STDOUTS, stderr=st.text())
def test_any_output_and_ending_is_a_verdict(ending: Ending, stdout: str, stderr: str) -> None:
    """interpret never raises; its metrics are finite floats and its message is printable."""
    verdict = interpret(ending, stdout, stderr, timeout=300, memory_limit="512m")
    assert_well_formed(verdict)


@fuzz
@given(stdout=STDOUTS)
def test_result_line_search_and_json_error_never_raise(stdout: str) -> None:
    """find_result_line returns an object or None; json_error returns a printable message."""
    found = find_result_line(stdout)
    assert found is None or isinstance(found, dict)
    message = json_error(stdout)
    assert message.startswith("Failed to parse JSON output: ")
    assert message.isprintable()


@fuzz
@given(raw=(JSON | st.dictionaries(KEYS, NUMBERS | JSON)).map(lambda v: json.loads(json.dumps(v))))
def test_parse_metrics_accepts_or_explains(raw: object) -> None:
    """parse_metrics returns finite float metrics, or no metrics and a printable reason."""
    metrics, problem = parse_metrics(raw)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert problem is None or (not metrics and problem.isprintable())


@fuzz
@given(
    before=st.text(),
    result=st.dictionaries(st.text(), st.text()),
    after=st.text().filter(lambda text: "{" not in text),
    ensure_ascii=st.booleans(),
)
def test_the_result_line_is_found_whatever_its_strings_hold(
    before: str, result: dict[str, str], after: str, ensure_ascii: bool
) -> None:
    """A JSON object line is found intact, whichever characters its strings hold."""
    line = json.dumps(result, ensure_ascii=ensure_ascii)
    assert find_result_line(f"{before}\n{line}\n{after}") == result
