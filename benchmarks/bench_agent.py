"""What an agent's loop pays per call, side by side in one run, against its targets.

    .venv/bin/python benchmarks/bench_agent.py [--runs N] [--no-mcp] [--no-podman] [--docs]

Each way runs N times, interleaved with the others, after one dropped round:

- **one line** (``print('{"success": true}')``) and the reference **Random Forest**
  (iris, 50 trees, 5-fold CV): bare ``python script.py`` (a host venv of the
  image's locked wheels, ``taskset -c 0``), a cold sandbox and a warm one (1 CPU);
- **MCP** ``run_python`` through the official SDK's stdio client, of a ten-line
  scikit-learn script and of a one-liner, against ``runner mcp --warm 0`` and the
  default warm server (``benchmarks/bench_mcp.py``);
- **Podman**: the cold one-liner on Docker and on a Podman service of its own
  (``benchmarks/bench_podman.py``; needs root and podman, ``scripts/engines.sh``).

Warm pools are full before anything is timed, as in a loop whose calls are
further apart than a pool start. It prints medians and p95 in seconds, each
against its baseline from the same run, and whether each target of the agent's
path is met; with ``--docs``, the table goes into ``docs/performance.md``
(section ``agent``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docs_table
from bench_sandbox import ONE_LINE, RF_SCRIPT, SPEC, bare_env, host_venv, p95, write

from runner import ExperimentRunner
from runner.core.settings import ExperimentDefaults
from runner.sandbox.engine import DockerEngine

DOCS_SECTIONS = ("agent",)
Measure = Callable[[], None]


@dataclass(frozen=True)
class Row:
    """One way of running, its times, and the target it is held to (if any)."""

    what: str
    way: str
    times: list[float]
    #: The way it is compared with (same ``what``), and the target in words.
    baseline: str | None = None
    target: str = ""
    #: Whether the target is met, given this row's and the baseline's medians.
    met: Callable[[float, float], bool] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def sandbox_rows(runs: int) -> list[Row]:
    """Bare, cold and warm, for the one-liner and the Random Forest (1 CPU)."""
    python = host_venv(ExperimentDefaults().cache_dir)
    root = Path(tempfile.mkdtemp(prefix="runner-bench-agent-"))
    root.chmod(0o755)
    pool_root = root / "experiments"
    scripts = {
        "one line": write(pool_root / "one", "one_line.py", ONE_LINE),
        "random forest": write(pool_root / "rf", "rf_experiment.py", RF_SCRIPT),
    }
    cold = ExperimentRunner(timeout=120, cpu_limit=1.0)
    warm = ExperimentRunner(timeout=120, cpu_limit=1.0, warm_pool=1, pool_root=pool_root)

    def bare(script: Path) -> Measure:
        return lambda: subprocess.run(
            ["taskset", "-c", "0", str(python), str(script)], env=bare_env(),
            cwd=script.parent, check=True, capture_output=True,
        )  # fmt: skip

    def sandboxed(script: Path, runner: ExperimentRunner, is_warm: bool) -> Measure:
        def run() -> None:
            result = runner.run(script, SPEC, 0)
            assert result.success, result.error_message
            assert result.warm_start == is_warm, "a warm pool was full, yet the run was cold"

        return run

    ways = {
        (label, way): measure
        for label, script in scripts.items()
        for way, measure in (
            ("bare", bare(script)),
            ("cold", sandboxed(script, cold, False)),
            ("warm", sandboxed(script, warm, True)),
        )
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in ways}
    try:
        for round_ in range(runs + 1):
            for key, measure in ways.items():
                assert warm.wait_for_warm(120), "the warm pool never got ready"
                time.sleep(0.2)  # the last run's removal, in the background, is done
                started = time.perf_counter()
                measure()
                if round_:
                    times[key].append(time.perf_counter() - started)
    finally:
        cold.close()
        warm.close()
    return [
        Row("one line", "bare", times[("one line", "bare")]),
        Row("one line", "cold", times[("one line", "cold")], None, "at most 0.150 s",
            lambda median, _: median <= 0.150),
        Row("one line", "warm", times[("one line", "warm")], "bare", "at most bare + 30 ms",
            lambda median, base: median <= base + 0.030),
        Row("random forest", "bare", times[("random forest", "bare")]),
        Row("random forest", "cold", times[("random forest", "cold")], "bare"),
        Row("random forest", "warm", times[("random forest", "warm")], "bare",
            "at most x0.25 bare", lambda median, base: median <= 0.25 * base),
    ]  # fmt: skip


def mcp_rows(runs: int) -> list[Row]:
    """``run_python`` through the SDK's client, with and without the warm pool."""
    import bench_mcp

    return [
        Row(
            f"MCP run_python, {row.script}",
            row.way,
            row.times,
            *(
                (row.baseline, "at most x0.35 cold", lambda median, base: median <= 0.35 * base)
                if row.baseline is not None and row.script == bench_mcp.SKLEARN
                else (row.baseline, "")
            ),
        )
        for row in bench_mcp.measure(runs)
    ]


def podman_rows(runs: int) -> list[Row]:
    """The cold one-liner on Docker and on Podman."""
    import bench_podman

    result = bench_podman.measure(runs, first_runs=0)
    return [
        Row("one line, cold", "docker", result.times["cold"]["docker"]),
        Row("one line, cold", "podman", result.times["cold"]["podman"], "docker",
            "at most x1.5 Docker", lambda median, base: median <= 1.5 * base),
    ]  # fmt: skip


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    medians = {(row.what, row.way): row.median for row in rows}
    header = ["run", "way", "median s", "p95 s", "against", "target", "met"]
    body = []
    for row in rows:
        base = medians.get((row.what, row.baseline)) if row.baseline else None
        against = (
            f"{(row.median - base) * 1000:+.0f} ms {docs_table.ratio(row.median, base)} "
            f"{row.baseline}"
            if base is not None
            else ""
        )
        met = ""
        if row.met is not None:
            met = "yes" if row.met(row.median, base if base is not None else 0.0) else "NO"
        body.append(
            [row.what, row.way, f"{row.median:.3f}", f"{p95(row.times):.3f}", against,
             row.target, met]
        )  # fmt: skip
    return header, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-mcp", action="store_true", help="leave the MCP server out")
    parser.add_argument("--no-podman", action="store_true", help="leave Podman out")
    parser.add_argument(
        "--docs", action="store_true", help="also write the table into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    rows = sandbox_rows(args.runs)
    if not args.no_mcp:
        rows += mcp_rows(args.runs)
    if not args.no_podman:
        rows += podman_rows(args.runs)
    header, body = table(rows)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body, strict=True)]
    print(f"{docs_table.machine()}; {args.runs} runs each way, interleaved")
    for line in (header, *body):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
    missed = [f"{row[0]} {row[1]}" for row in body if row[-1] == "NO"]
    print("every target met" if not missed else f"targets missed: {', '.join(missed)}")
    if args.docs:
        engines = f"Docker {DockerEngine().info().get('ServerVersion', '?')}"
        docs_table.write_sections(
            {
                "agent": docs_table.section(
                    docs_table.markdown_table(header, body, align="llrrlll"),
                    docs_table.machine([engines]),
                    docs_table.command(prefix=["sudo"] if not args.no_podman else ()),
                )
            }
        )


if __name__ == "__main__":
    main()
