"""The benchmarks' tables on the performance page (``docs/performance.md``).

Each benchmark run with ``--docs`` replaces one or more sections of the page,
each between a pair of markers::

    <!-- benchmark:NAME:start -->
    ...
    <!-- benchmark:NAME:end -->

with a Markdown table of what it measured, and a line under the table naming
the machine and the command that regenerates it. Nothing else of the page is
touched, so the prose around the tables stays as written.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The performance page of the docs site.
PAGE = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section ``name``."""
    return f"<!-- benchmark:{name}:start -->", f"<!-- benchmark:{name}:end -->"


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, align: str = ""
) -> str:
    """A Markdown table; ``align`` holds one letter a column (``l`` or ``r``, default ``l``)."""
    columns = len(header)
    lines = [_row(header)]
    lines.append(
        "| "
        + " | ".join("---:" if align[i : i + 1] == "r" else "---" for i in range(columns))
        + " |"
    )
    for row in rows:
        cells = list(row)
        if len(cells) != columns:
            raise ValueError(f"a row has {len(cells)} cells, the header {columns}: {cells!r}")
        lines.append(_row(cells))
    return "\n".join(lines)


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _cell(value: object) -> str:
    """One cell's text: a pipe would end the cell, a newline the row."""
    return " ".join(str(value).split()).replace("|", "\\|")


def ratio(value: float, baseline: float) -> str:
    """``value`` as a multiple of ``baseline``, both measured in the same run (``x1.08``)."""
    return f"x{value / baseline:.2f}" if baseline else "n/a"


def machine(extra: Sequence[str] = ()) -> str:
    """This machine in a few words: CPU model, cores, kernel (and ``extra``, e.g. the engine)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [cpu_model(), f"{usable} cores", f"Linux {platform.release()}", *extra]
    return ", ".join(part for part in parts if part)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as the kernel reports it ("" where it does not)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return platform.processor()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return " ".join(value.split())
    return platform.processor()


def command(argv: Sequence[str] | None = None, *, prefix: Sequence[str] = ()) -> str:
    """The command line that ran this benchmark, as one types it in the checkout
    (``prefix``: what must come first, e.g. ``sudo``)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    root = PAGE.parents[1]
    if script.is_absolute() and script.is_relative_to(root):
        script = script.relative_to(root)
    return shlex.join([*prefix, ".venv/bin/python", str(script), *argv[1:]])


def section(table: str, machine_line: str, command_line: str) -> str:
    """A section's content: the table, then the machine and the command under it."""
    return f"{table}\n\nMeasured on {machine_line}. Regenerate: `{command_line}`"


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with what lies between section ``name``'s markers replaced by ``content``.

    ``ValueError`` unless each marker is there exactly once, start before end.
    """
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"the page must hold {start} and {end} once each")
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    if end in before:
        raise ValueError(f"{end} comes before {start}")
    return f"{before}{start}\n{content.strip()}\n{end}{after}"


def check_sections(names: Iterable[str], page: Path = PAGE) -> None:
    """Fail now, before minutes of measuring, if the page lacks a section to write."""
    text = page.read_text()
    for name in names:
        replace_section(text, name, "")


def write_sections(sections: dict[str, str], page: Path = PAGE) -> None:
    """Replace each named section of ``page`` with its content, all at once."""
    text = page.read_text()
    for name, content in sections.items():
        text = replace_section(text, name, content)
    staged = page.with_name(f".{page.name}.tmp")
    staged.write_text(text)
    staged.replace(page)
    print(f"wrote {', '.join(sections)} into {page}")
