"""The benchmarks' writer of the performance page's tables (benchmarks/docs_table.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import docs_table  # noqa: E402 - found through the path above, as the benchmarks find it

PAGE = """\
# Performance

Prose before.

<!-- benchmark:one:start -->
old table
<!-- benchmark:one:end -->

Prose between.

<!-- benchmark:two:start -->
<!-- benchmark:two:end -->

Prose after.
"""


def test_replace_section_changes_only_its_section() -> None:
    """The named section's content is replaced; the prose and other sections stay as written."""
    text = docs_table.replace_section(PAGE, "one", "| a |\n| --- |\n| 1 |")
    assert "old table" not in text
    assert "<!-- benchmark:one:start -->\n| a |\n| --- |\n| 1 |\n<!-- benchmark:one:end -->" in text
    assert text.replace("| a |\n| --- |\n| 1 |", "old table") == PAGE


def test_replace_section_twice_gives_the_same_page() -> None:
    """Writing the same table again leaves the page as it was after the first write."""
    once = docs_table.replace_section(PAGE, "two", "table")
    assert docs_table.replace_section(once, "two", "table") == once


@pytest.mark.parametrize(
    "page",
    [
        "no markers at all",
        "<!-- benchmark:one:start -->\nonly a start",
        "<!-- benchmark:one:end -->\n<!-- benchmark:one:start -->\n",
        "<!-- benchmark:one:start -->\n<!-- benchmark:one:end -->\n" * 2,
    ],
)
def test_replace_section_refuses_missing_or_repeated_markers(page: str) -> None:
    """A section whose markers are missing, doubled or out of order is an error, not a guess."""
    with pytest.raises(ValueError, match="benchmark:one"):
        docs_table.replace_section(page, "one", "table")


def test_markdown_table_aligns_and_escapes() -> None:
    """Columns align as asked, and a pipe or newline in a cell cannot break the table."""
    table = docs_table.markdown_table(
        ["way", "median"], [("a|b", 1.5), ("two\nlines", 2)], align="lr"
    )
    assert table.splitlines() == [
        "| way | median |",
        "| --- | ---: |",
        "| a\\|b | 1.5 |",
        "| two lines | 2 |",
    ]


def test_markdown_table_refuses_a_short_row() -> None:
    """A row with a cell missing is refused rather than written shifted."""
    with pytest.raises(ValueError, match="2 cells"):
        docs_table.markdown_table(["a", "b", "c"], [(1, 2)])


def test_ratio_is_against_the_baseline() -> None:
    """A ratio reads as a multiple of the baseline measured in the same run."""
    assert docs_table.ratio(1.618, 1.503) == "x1.08"
    assert docs_table.ratio(1.0, 0.0) == "n/a"


def test_section_names_the_machine_and_the_command_under_the_table() -> None:
    """The line under a table says where it was measured and how to measure it again."""
    content = docs_table.section("| a |\n| --- |", "a CPU, 2 cores", "python bench.py --docs")
    assert content.splitlines()[0] == "| a |"
    assert content.splitlines()[-1] == (
        "Measured on a CPU, 2 cores. Regenerate: `python bench.py --docs`"
    )


def test_command_is_relative_to_the_checkout() -> None:
    """The command names the script from the checkout's root, its arguments quoted."""
    argv = [str(BENCHMARKS / "bench_ray.py"), "--rounds", "5", "--docs"]
    assert docs_table.command(argv) == ".venv/bin/python benchmarks/bench_ray.py --rounds 5 --docs"
    assert docs_table.command(["bench.py", "a b"], prefix=["sudo"]) == (
        "sudo .venv/bin/python bench.py 'a b'"
    )


def test_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    """The machine's CPU is the model name the kernel reports."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some  CPU @ 2.20GHz\nflags\t: fpu\n")
    assert docs_table.cpu_model(cpuinfo) == "Some CPU @ 2.20GHz"


def test_machine_names_cores_and_extra() -> None:
    """The machine line holds the cores and whatever the benchmark adds (the engine)."""
    line = docs_table.machine(["engine 20.10"])
    assert " cores, Linux " in line
    assert line.endswith(", engine 20.10")


def test_write_sections_writes_the_page(tmp_path: Path) -> None:
    """Each named section of the page file is replaced in one write."""
    page = tmp_path / "performance.md"
    page.write_text(PAGE)
    docs_table.write_sections({"one": "first", "two": "second"}, page)
    text = page.read_text()
    assert "<!-- benchmark:one:start -->\nfirst\n<!-- benchmark:one:end -->" in text
    assert "<!-- benchmark:two:start -->\nsecond\n<!-- benchmark:two:end -->" in text
    assert [p.name for p in tmp_path.iterdir()] == ["performance.md"]


def test_check_sections_fails_before_measuring(tmp_path: Path) -> None:
    """A benchmark told to write a section the page lacks stops before it measures."""
    page = tmp_path / "performance.md"
    page.write_text(PAGE)
    docs_table.check_sections(["one", "two"], page)
    with pytest.raises(ValueError, match="benchmark:three"):
        docs_table.check_sections(["three"], page)


def _docs_sections(script: Path) -> tuple[str, ...]:
    """A benchmark's ``DOCS_SECTIONS``, read without importing it (it needs the engine)."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "DOCS_SECTIONS" for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple)
            return value
    raise AssertionError(f"{script.name} declares no DOCS_SECTIONS")


@pytest.mark.parametrize(
    "script", ["bench_sandbox.py", "bench_hand_over.py", "bench_ray.py", "bench_mcp.py"]
)
def test_the_performance_page_has_every_section_a_benchmark_writes(script: str) -> None:
    """docs/performance.md holds, once each, the markers of every section --docs writes."""
    sections = _docs_sections(BENCHMARKS / script)
    assert sections
    docs_table.check_sections(sections, docs_table.PAGE)
