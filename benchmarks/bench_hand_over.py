"""What a warm run's hand-over costs, by how files reach the slot, for a one-line script.

    sudo .venv/bin/python benchmarks/bench_hand_over.py [--runs 21]

All three ways run on one private Docker-in-Docker engine (``tests/engines.py``,
so nothing touches the machine's own engine) that sees one directory of this
machine at the same path, interleaved, each pool full before anything is timed:

- warm, hard links: ``transfer="auto"``: the slot's directory is on this machine;
- warm, volume: ``transfer="copy"``: the slot's volume is filled through a
  never-started helper's archive API (what an engine that cannot see the files gets);
- cold, copy: ``transfer="copy"`` without a pool.

Prints the median and p95 of the whole run (``runner.run``) and, for the warm
ways, of the hand-over alone (the files put into the slot). With ``--docs``, the
table also goes into ``docs/performance.md`` (section ``hand-over``), the ratios
against the cold copy of the same run, with the machine and this command under it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docs_table
from bench_sandbox import engine_words

from runner import ExperimentRunner, ExperimentSpec
from runner.backends.pool import LinkedFiles, VolumeFiles
from runner.core.settings import ExperimentDefaults
from runner.sandbox.engine import DockerEngine
from tests.engines import dind_engine

ONE_LINE = "print('{\"success\": true}')\n"
SPEC = ExperimentSpec(experiment_name="bench", model_type="script")
#: The section of docs/performance.md that ``--docs`` writes.
DOCS_SECTIONS = ("hand-over",)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timing_put(cls: Any, spent: list[float]) -> None:
    """Record how long each ``put`` of ``cls`` (a slot's files) takes."""
    put = cls.put

    def timed(self: Any, paths: Sequence[Path], *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            put(self, paths, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    cls.put = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument(
        "--docs", action="store_true", help="also write the table into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    # Not below /tmp (the engine's container has a tmpfs of its own there) nor /root
    # (the image's is private to root): beside this checkout.
    shared = Path(tempfile.mkdtemp(prefix=".bench-shared-", dir=Path(__file__).parents[1]))
    shared.chmod(0o755)
    tempfile.tempdir = str(shared)  # the engine's probe file must be where it can see it
    root = shared / "experiments"
    (root / "one").mkdir(parents=True)
    root.chmod(0o755)
    (root / "one").chmod(0o755)
    script = root / "one" / "one_line.py"
    script.write_text(ONE_LINE)
    script.chmod(0o644)
    hand_overs: dict[str, list[float]] = {"warm, hard links": [], "warm, volume": []}
    timing_put(LinkedFiles, hand_overs["warm, hard links"])
    timing_put(VolumeFiles, hand_overs["warm, volume"])
    try:
        with dind_engine(shared=shared) as docker_host:
            os.environ["DOCKER_HOST"] = docker_host
            times = measure(args.runs, root, script, shared / "cache")
            engine = engine_words(DockerEngine())
        for spent in hand_overs.values():
            del spent[0]  # the first round warms caches and is dropped
        report(args.runs, times, hand_overs)
        if args.docs:
            write_docs(args.runs, times, hand_overs, f"a private Docker-in-Docker {engine}")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def measure(runs: int, root: Path, script: Path, cache: Path) -> dict[str, list[float]]:
    """Run ``script`` each way ``runs`` times (plus a dropped first round), interleaved."""
    settings = ExperimentDefaults(cache_dir=cache)
    runners: list[ExperimentRunner] = []

    def make(transfer: str, warm: bool) -> ExperimentRunner:
        runner = ExperimentRunner(
            timeout=60, engine=DockerEngine(), transfer=transfer,  # type: ignore[arg-type]
            warm_pool=1 if warm else 0, pool_root=root, settings=settings,
        )  # fmt: skip
        runners.append(runner)
        return runner

    try:
        ways = {
            "warm, hard links": make("auto", True),
            "warm, volume": make("copy", True),
            "cold, copy": make("copy", False),
        }
        assert ways["warm, hard links"].backend.describe_files().startswith("bind-mounted")
        times: dict[str, list[float]] = {way: [] for way in ways}
        for round_ in range(runs + 1):
            for way, runner in ways.items():
                for pool in runners:
                    if pool.warm_pool_size:
                        assert pool.wait_for_warm(120), f"a pool never got ready for {way}"
                started = time.perf_counter()
                result = runner.run(script, SPEC, 0)
                elapsed = time.perf_counter() - started
                assert result.success, f"{result.error_message}\n{result.stderr}"
                assert result.warm_start == way.startswith("warm")
                if round_:
                    times[way].append(elapsed)
        return times
    finally:
        for runner in runners:
            runner.close()


def report(runs: int, times: dict[str, list[float]], hand_overs: dict[str, list[float]]) -> None:
    print(f"one-line script, {runs} runs each way, interleaved, private Docker-in-Docker engine")
    print(f"{'way':<18}{'run median':>12}{'run p95':>10}{'hand-over median':>18}{'p95':>10}")
    ms: Callable[[float], str] = lambda seconds: f"{seconds * 1000:.1f} ms"  # noqa: E731
    for way, values in times.items():
        spent = hand_overs.get(way)
        tail = f"{ms(statistics.median(spent)):>18}{ms(p95(spent)):>10}" if spent else ""
        print(f"{way:<18}{ms(statistics.median(values)):>12}{ms(p95(values)):>10}{tail}")


def write_docs(
    runs: int, times: dict[str, list[float]], hand_overs: dict[str, list[float]], engine: str
) -> None:
    """The table into docs/performance.md, with the machine and this command under it."""
    cold = statistics.median(times["cold, copy"])
    rows = []
    for way, values in times.items():
        spent = hand_overs.get(way)
        median = statistics.median(values)
        rows.append((
            way, f"{median:.3f}", f"{p95(values):.3f}",
            f"{statistics.median(spent) * 1000:.1f} ms" if spent else "",
            f"{p95(spent) * 1000:.1f} ms" if spent else "",
            docs_table.ratio(median, cold),
        ))  # fmt: skip
    table = docs_table.markdown_table(
        ["way", f"run median s ({runs} runs)", "run p95 s", "hand-over median",
         "hand-over p95", "vs cold, copy"],
        rows,
        align="lrrrrr",
    )  # fmt: skip
    where = docs_table.machine([engine])
    again = docs_table.command(prefix=["sudo"])
    docs_table.write_sections({"hand-over": docs_table.section(table, where, again)})


if __name__ == "__main__":
    main()
