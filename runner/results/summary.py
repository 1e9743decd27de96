"""A Markdown leaderboard of a batch for a CI page (``$GITHUB_STEP_SUMMARY``, a merge
request note): the results best first, the failures with a one-line reason, the image.

Every string a script controls (its name, metric names, its error) is shown as a
code span: no Markdown, HTML, link or autolink inside one is acted on, and its
pipes, backticks, newlines and control characters are escaped, so a script can
neither break the table nor put anything on the page but text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from runner.core.models import ExperimentResult
from runner.core.text import printable
from runner.results.history import best_first, ranking_metric

#: What a result's ``metrics_source`` says when the runner measured its metrics itself on
#: held-out data (not what the script printed).
VERIFIED_SOURCE = "holdout"
#: Further metrics shown beside the ranking one, and the characters of any one string.
OTHER_METRICS = 6
NAME_LIMIT = 120
REASON_LIMIT = 200


def code(text: object, limit: int = NAME_LIMIT) -> str:
    """``text`` as an inline code span that is safe in a GFM table cell.

    Controls (newlines too) become visible escapes (``printable``); ``|`` is
    escaped (with the backslashes before it), as GFM splits cells on it even
    inside code; the fence is one
    backtick longer than the longest run of backticks inside.
    """
    # A pipe needs an odd count of backslashes before it to stay inside its cell.
    shown = re.sub(r"(\\*)\|", r"\1\1\\|", printable(str(text), limit))
    if not shown:
        return "` `"
    fence = "`" * (max((len(run) for run in re.findall("`+", shown)), default=0) + 1)
    # A span that starts or ends with a backtick (or a space) needs padding spaces.
    pad = " " if shown[0] in "` " or shown[-1] in "` " else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def verified(result: ExperimentResult) -> bool:
    """The runner measured the metrics itself (``metrics_source`` is ``holdout``)."""
    return getattr(result, "metrics_source", None) == VERIFIED_SOURCE


def reason(result: ExperimentResult) -> str:
    """Why a run failed, in one line."""
    if result.timed_out:
        return "timed out"
    if result.oom_killed:
        return "out of memory"
    first = (result.error_message or "failed").strip().split("\n")[0]
    return first or "failed"


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def markdown_summary(
    results: Sequence[ExperimentResult], *, title: str = "runner batch", image: str | None = None
) -> str:
    """The summary: a heading with the counts, the image, the leaderboard, the failures."""
    ranked = best_first(results)
    failed = [r for r in ranked if not r.success]
    lines = [
        f"### {_plain(title)}: {len(results)} script(s), {len(results) - len(failed)} ok, "
        f"{len(failed)} failed",
        "",
    ]
    image_ids = sorted({r.image_id for r in results if r.image_id})
    if image or image_ids:
        named = f"{code(image)} " if image else ""
        ids = ", ".join(code(i, 80) for i in image_ids) or "no run reached a container"
        lines += [f"Image: {named}({ids})", ""]
    lines += [
        "| # | experiment | main metric | other metrics | time | outcome |",
        "| ---: | --- | --- | --- | ---: | --- |",
    ]
    for rank, result in enumerate(ranked, 1):
        main = ranking_metric(result) if result.success else None
        mark = " ✓" if verified(result) and result.success else ""
        main_text = f"{code(main[0])} {_number(main[1])}{mark}" if main else "-"
        others = [(k, v) for k, v in result.metrics.items() if not main or k != main[0]]
        other_text = ", ".join(f"{code(k)} {_number(v)}" for k, v in others[:OTHER_METRICS])
        if len(others) > OTHER_METRICS:
            other_text += f", and {len(others) - OTHER_METRICS} more"
        outcome = "ok" if result.success else "failed"
        lines.append(
            f"| {rank} | {code(result.experiment_name)} | {main_text} | "
            f"{other_text if result.success and other_text else '-'} | "
            f"{result.execution_time:.2f} s | {outcome} |"
        )
    if any(verified(r) for r in results):
        lines += ["", "✓: measured by the runner on held-out data; other metrics are what "
                  "the scripts printed."]  # fmt: skip
    if failed:
        lines += ["", "#### Failures", "", "| experiment | reason |", "| --- | --- |"]
        lines += [
            f"| {code(r.experiment_name)} | {code(reason(r), REASON_LIMIT)} |" for r in failed
        ]
    return "\n".join(lines) + "\n"


def _plain(text: str) -> str:
    """The runner's own words for a heading, with Markdown's punctuation escaped anyway."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~&])", r"\\\1", printable(text, NAME_LIMIT))
