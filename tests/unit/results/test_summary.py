"""The Markdown summary of a batch: a leaderboard safe to put on a CI page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from markdown_it import MarkdownIt

from runner.core.models import ExperimentResult
from runner.results.summary import code, markdown_summary

HOSTILE = [
    "a|b|c",
    "`tick` ``double``",
    "<img src=x onerror=alert(1)>",
    "[click](https://evil.example/x)",
    "https://evil.example/autolink www.evil.example",
    "**bold** _em_ # head",
    "line one\nline two\r\n| --- |",
    "back\\|slash\\\\|pipe",
    "\x1b[31mred\x1b[0m \u202eevil",
    "<script>alert(1)</script>",
    "![img](https://evil.example/i.png)",
    "&lt; &amp; entity",
]


def result(name: str = "exp", **fields: Any) -> ExperimentResult:
    base: dict[str, Any] = {
        "experiment_name": name,
        "iteration": 0,
        "model_type": "script",
        "code_path": f"/x/{name}.py",
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "success": True,
        "execution_time": 1.5,
        "image_id": "sha256:" + "ab" * 32,
    }
    return ExperimentResult(**{**base, **fields})


def render(markdown: str) -> str:
    """HTML as a GFM-like renderer (tables, no raw HTML passed through is the point)."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def table_rows(markdown: str) -> list[list[str]]:
    """Each body row of each table, as its cells' text, from the rendered tokens."""
    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").parse(markdown)
    rows: list[list[str]] = []
    inside = False
    for token in tokens:
        if token.type in ("tr_open", "tr_close"):
            inside = token.type == "tr_open"
            if inside:
                rows.append([])
        elif token.type == "inline" and inside:
            rows[-1].append(token.content)
    return rows[1:]  # without the first table's header


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_name_stays_one_cell_of_plain_text(hostile: str) -> None:
    """Pipes, backticks, HTML, links, newlines in a name neither break the table nor render."""
    markdown = markdown_summary([result(hostile), result("plain", success=False,
                                                         error_message=hostile)])  # fmt: skip
    html = render(markdown)
    for bad in ("<img", "<script", "<a ", "<strong>", "<em>", "<h1", "\x1b", "\u202e"):
        assert bad not in html, (bad, markdown)
    widths = {len(row) for row in table_rows(markdown)}
    assert widths <= {6, 2}, markdown  # leaderboard rows, failure rows
    assert all(line.count("\n") == 0 for line in markdown.splitlines())


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_metric_key_and_error_are_escaped(hostile: str) -> None:
    """A metric name and an error message a script chose are code spans, never markup."""
    ran = result("ok", metrics={"accuracy": 0.9, hostile: 1.0})
    crashed = result("bad", success=False, error_message=f"{hostile}\nTraceback...")
    markdown = markdown_summary([ran, crashed])
    html = render(markdown)
    for bad in ("<img", "<script", "<a ", "<strong>", "<em>"):
        assert bad not in html
    assert {len(row) for row in table_rows(markdown)} <= {6, 2}
    assert "Traceback" not in markdown  # one line of reason only


def test_code_spans_survive_any_backtick_run() -> None:
    """A code span's fence is longer than any backtick run inside, padded where needed."""
    for text in ("`", "``a``", "a```b", "` lead", "trail `"):
        html = MarkdownIt().render(code(text))
        assert html.count("<code>") == 1, (text, html)


def test_the_leaderboard_ranks_marks_verified_and_names_the_image() -> None:
    """Best first; holdout metrics marked; failures listed with their one-line reason."""
    good = result("good", metrics={"accuracy": 0.95})
    better = result("better", metrics={"accuracy": 0.97, "f1": 0.9})
    object.__setattr__(better, "metrics_source", "holdout")  # a field another change adds
    slow = result("slow", success=False, timed_out=True, error_message="Experiment timed out")
    oom = result("hog", success=False, oom_killed=True, error_message="killed")
    markdown = markdown_summary([good, better, slow, oom], image="my-image:1")
    assert markdown.startswith("### runner batch: 4 script(s), 2 ok, 2 failed\n")
    assert "Image: `my-image:1` (`sha256:abab" in markdown
    rows = table_rows(markdown)
    assert rows[0][:3] == ["1", "`better`", "`accuracy` 0.9700 ✓"]
    assert rows[0][3] == "`f1` 0.9000"
    assert rows[1][:3] == ["2", "`good`", "`accuracy` 0.9500"]
    assert "✓: measured by the runner on held-out data" in markdown
    failures = [row for row in rows if len(row) == 2 and row[0] != "experiment"]
    assert sorted(failures) == [["`hog`", "`out of memory`"], ["`slow`", "`timed out`"]]


def test_without_metrics_source_nothing_is_marked() -> None:
    """Results from before `metrics_source` existed are shown unmarked."""
    markdown = markdown_summary([result("a", metrics={"accuracy": 0.5})])
    assert "✓" not in markdown
