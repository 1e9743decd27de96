"""The MCP server's ``run_python``, cold and warm, through the official SDK's stdio client.

    .venv/bin/python benchmarks/bench_mcp.py [--runs 9] [--warm N] [--gap 6] [--docs]

Two servers run side by side for the whole benchmark, with the same limits:
``runner mcp --warm 0`` (every call a cold sandbox) and ``runner mcp --warm N``
(default: the server's default, as many warm sandboxes as run at once). Each
round calls ``run_python`` on each, of a ten-line scikit-learn script (iris,
a logistic regression) and of a one-liner, interleaved; the first round is
dropped. Before each call the benchmark waits ``--gap`` seconds, so that the
warm server's pool has refilled (and no refill competes with the call being
timed), as in an agent's loop whose calls are further apart than a pool start;
a warm-server call that finds no ready sandbox anyway waits and calls again
(it is counted as a miss, not timed). Times are the client's, from the call to
its result.

It prints the medians and p95 and the ratio warm/cold, then what the warm
server's idle sandboxes hold in memory (``docker stats``; and, where the
engine's cgroup v1 files are readable here, each container's resident memory,
``total_rss``). ``measure(runs)`` is the timing alone, for a combined benchmark
(``bench_agent.py``). With ``--docs``, the table goes into
``docs/performance.md`` (section ``mcp``), with the machine and this command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import docs_table
from bench_sandbox import engine_words, p95
from mcp import Client, StdioServerParameters

from runner.sandbox.cleanup import LABEL_GROUP
from runner.sandbox.engine import DockerEngine

#: The scripts' names in the rows (``bench_agent.py`` holds the first to its target).
SKLEARN = "scikit-learn, ten lines"
ONE_LINER = "one line"
SCRIPTS = {
    SKLEARN: """\
import json
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

X, y = load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
model = LogisticRegression(max_iter=500).fit(X_train, y_train)
accuracy = model.score(X_test, y_test)
print(json.dumps({"success": True, "metrics": {"accuracy": accuracy}}))
""",
    ONE_LINER: "print('{\"success\": true}')\n",
}
WAYS = ("cold", "warm")
#: Each server's containers carry a group of their own (one name for every run of this
#: benchmark, so each group's support volume is kept once, not once a run).
GROUPS = {"cold": "bench-mcp-cold", "warm": "bench-mcp-warm"}
#: The servers' limits: the defaults' CPU, and a memory cap every warm sandbox gets.
LIMITS = ("--timeout", "120", "--memory", "1g")
DOCS_SECTIONS = ("mcp",)


@dataclass(frozen=True)
class Row:
    """One script one way: its times, and the way it is compared with (None: the baseline)."""

    script: str
    way: str
    times: list[float]
    baseline: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def server(way: str, warm: int | None) -> StdioServerParameters:
    """``runner mcp`` the way ``way`` runs, as the SDK's stdio client starts it."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("RUNNER_", "DOCKER_"))}
    pool = ["--warm", "0"] if way == "cold" else ([] if warm is None else ["--warm", str(warm)])
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "runner", "mcp", *LIMITS, "--no-record", *pool],
        env={**env, "RUNNER_GROUP": GROUPS[way], "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


@asynccontextmanager
async def servers(warm: int | None) -> AsyncIterator[dict[str, Client]]:
    """Both servers' sessions, open for the block; each server goes (with its sandboxes)
    when its session closes."""
    async with AsyncExitStack() as stack:
        yield {
            way: await stack.enter_async_context(
                Client(server(way, warm), read_timeout_seconds=180)
            )
            for way in WAYS
        }


async def timed_call(client: Client, code: str, way: str, gap: float) -> tuple[float, int]:
    """Seconds of one ``run_python`` call (after ``gap``), and the warm misses before it."""
    misses = 0
    while True:
        await asyncio.sleep(gap)
        started = time.perf_counter()
        result = await client.call_tool("run_python", {"code": code})
        elapsed = time.perf_counter() - started
        report = result.structured_content
        assert report is not None and report["success"], result.content
        if report["warm_start"] == (way == "warm"):
            return elapsed, misses
        assert way == "warm", "a server with --warm 0 answered from a warm sandbox"
        misses += 1
        if misses > 10:
            raise AssertionError("the warm server never had a sandbox ready")


async def _measure(
    runs: int, warm: int | None, gap: float
) -> tuple[dict[tuple[str, str], list[float]], int, str]:
    times: dict[tuple[str, str], list[float]] = {(s, w): [] for s in SCRIPTS for w in WAYS}
    misses = 0
    async with servers(warm) as clients:
        for round_ in range(runs + 1):  # the first round warms caches and is dropped
            for script, code in SCRIPTS.items():
                for way in WAYS:
                    elapsed, missed = await timed_call(clients[way], code, way, gap)
                    misses += missed
                    if round_:
                        times[(script, way)].append(elapsed)
        await asyncio.sleep(gap)
        memory = idle_memory(GROUPS["warm"])
    return times, misses, memory


def measure(runs: int, warm: int | None = None, gap: float = 6.0) -> list[Row]:
    """``run_python`` of each script ``runs`` times each way, interleaved (``bench_agent``)."""
    times, _, _ = asyncio.run(_measure(runs, warm, gap))
    return rows_of(times)


def rows_of(times: dict[tuple[str, str], list[float]]) -> list[Row]:
    return [
        Row(script, way, values, None if way == "cold" else "cold")
        for (script, way), values in times.items()
    ]


def idle_memory(group: str) -> str:
    """What ``group``'s (idle, warm) containers hold in memory, in words: ``docker
    stats``'s usage of each, and where readable their cgroups' resident memory."""
    engine = DockerEngine()
    ids = [c.id for c in engine.containers(f"{LABEL_GROUP}={group}")]
    if not ids:
        return "no idle warm sandbox"
    shown = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *ids],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    usage = ", ".join(line.split(" / ")[0] for line in shown)
    words = f"{len(ids)} idle sandboxes held {usage} (`docker stats`)"
    resident = [_cgroup_rss(engine, container_id) for container_id in ids]
    if all(rss is not None for rss in resident):
        mib = ", ".join(f"{rss / 2**20:.0f}" for rss in resident if rss is not None)
        words += f", of which resident {mib} MiB (their cgroups' `total_rss`)"
    return words + "."


def _cgroup_rss(engine: DockerEngine, container_id: str) -> int | None:
    """The container's resident memory from its cgroup v1 ``memory.stat``, where readable."""
    host = engine.inspect(container_id)["HostConfig"]
    parent = (host.get("CgroupParent") or "/docker").strip("/")
    stat = Path("/sys/fs/cgroup/memory") / parent / container_id / "memory.stat"
    try:
        fields = dict(line.split() for line in stat.read_text().splitlines())
    except OSError:
        return None
    return int(fields["total_rss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--warm", type=int, help="the warm server's --warm (default: the server's default)"
    )
    parser.add_argument(
        "--gap", type=float, default=6.0, help="seconds before each call (the pool refills)"
    )
    parser.add_argument(
        "--docs", action="store_true", help="also write the table into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    times, misses, memory = asyncio.run(_measure(args.runs, args.warm, args.gap))
    rows = rows_of(times)
    medians = {(row.script, row.way): row.median for row in rows}
    body = [
        [
            row.script, row.way, f"{row.median:.3f}", f"{p95(row.times):.3f}",
            "" if row.baseline is None
            else docs_table.ratio(row.median, medians[(row.script, row.baseline)]),
        ]
        for row in rows
    ]  # fmt: skip
    header = ["run_python of", "server", f"median s ({args.runs} runs)", "p95 s", "warm / cold"]
    print(f"{docs_table.machine()}; {args.runs} runs each way, interleaved, {args.gap:g} s apart")
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body, strict=True)]
    for line in (header, *body):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
    print(f"warm-server calls that found no ready sandbox (called again, not timed): {misses}")
    print(f"the warm server's {memory}")
    if args.docs:
        where = docs_table.machine([engine_words(DockerEngine())])
        table = docs_table.markdown_table(header, body, align="llrrr")
        idle = f"The warm server's {memory}"
        docs_table.write_sections(
            {"mcp": docs_table.section(f"{table}\n\n{idle}", where, docs_table.command())}
        )


if __name__ == "__main__":
    main()
