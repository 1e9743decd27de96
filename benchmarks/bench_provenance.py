"""What provenance costs a one-line run, warm and cold, against a baseline in the same run.

    .venv/bin/python benchmarks/bench_provenance.py [--runs 15]

Four ways, interleaved, on the engine ``DOCKER_HOST`` names (the local one by
default), under a ``RUNNER_GROUP`` of its own:

- warm, provenance: ``runner.run`` as shipped, with a history and its store (the
  script's directory and the script digested and stored, the result's provenance
  made; the warm slot asked its machine's facts before it was ready);
- warm, baseline: the same with the host's side of provenance switched off
  (``before_run`` and ``describe`` replaced by nothing);
- cold, provenance: as shipped: the sandbox's ``sh`` runs the facts probe
  (``python -I -S``, OpenBLAS asked through ctypes) before the script;
- cold, baseline: no probe, no host side.

Prints the median and p95 of ``runner.run`` for each, and the differences of the medians.
With ``--docs``, the table also goes into ``docs/performance.md`` (section
``provenance``), with the machine and this command under it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docs_table

import runner.experiment.runner as front
import runner.sandbox.cold as cold
from runner import ExperimentRunner, ExperimentSpec
from runner.results.provenance import Described

ONE_LINE = 'print(\'{"success": true, "metrics": {"a": 1}}\')\n'
SPEC = ExperimentSpec(experiment_name="bench", model_type="script")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@contextmanager
def baseline() -> Any:
    """The run as before provenance: no digests, no store, no record, no facts probe."""
    saved = (front.before_run, front.describe, cold.self_limited)
    empty = Described("", "", None, ())

    def no_facts(*args: Any, **kwargs: Any) -> list[str]:
        kwargs["facts"] = False
        return saved[2](*args, **kwargs)

    front.before_run = lambda request, store: empty  # type: ignore[assignment]
    front.describe = lambda *args: None  # type: ignore[assignment]
    cold.self_limited = no_facts  # type: ignore[assignment]
    try:
        yield
    finally:
        front.before_run, front.describe, cold.self_limited = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--docs", action="store_true", help="write docs/performance.md too")
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(["provenance"])
    os.environ.setdefault("RUNNER_GROUP", "bench-provenance")
    # In the checkout: the warm pool's root may not be below /tmp (the sandbox's own).
    checkout = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix=".bench-provenance-", dir=checkout) as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        directory = root / "exp"
        directory.mkdir(mode=0o755)
        script = directory / "one_line.py"
        script.write_text(ONE_LINE)
        script.chmod(0o644)
        history = root / "results.jsonl"
        times: dict[str, list[float]] = {}
        with (
            ExperimentRunner(timeout=60, warm_pool=1, pool_root=root, history=history) as warm,
            ExperimentRunner(timeout=60, history=history) as cold_runner,
        ):
            ways: dict[str, tuple[ExperimentRunner, bool]] = {
                "warm, provenance": (warm, True),
                "warm, baseline": (warm, False),
                "cold, provenance": (cold_runner, True),
                "cold, baseline": (cold_runner, False),
            }
            for _ in range(args.runs + 1):  # the first round warms caches up, untimed
                for name, (runner, shipped) in ways.items():
                    if runner is warm and not warm.wait_for_warm(60):
                        raise SystemExit("the warm pool did not get ready")
                    elapsed = timed(
                        lambda r=runner: r.run(script, SPEC, 0), shipped, runner is warm
                    )
                    times.setdefault(name, []).append(elapsed)
        print(f"{'way':<18} {'median s':>9} {'p95 s':>7}   ({args.runs} runs each)")
        medians = {}
        for name, values in times.items():
            values = values[1:]
            medians[name] = statistics.median(values)
            print(f"{name:<18} {medians[name]:>9.3f} {p95(values):>7.3f}")
        for way in ("warm", "cold"):
            delta = medians[f"{way}, provenance"] - medians[f"{way}, baseline"]
            print(f"provenance costs a {way} run {delta * 1000:+.0f} ms (median against median)")
        if args.docs:
            write_docs(args.runs, {name: values[1:] for name, values in times.items()})


def write_docs(runs: int, times: dict[str, list[float]]) -> None:
    """The table into docs/performance.md, with the machine and this command under it."""
    rows = []
    for name, values in times.items():
        way = name.split(",")[0]
        base = statistics.median(times[f"{way}, baseline"])
        median = statistics.median(values)
        rows.append((
            name, f"{median:.3f}", f"{p95(values):.3f}",
            f"{(median - base) * 1000:+.0f} ms", docs_table.ratio(median, base),
        ))  # fmt: skip
    table = docs_table.markdown_table(
        ["way", f"median s ({runs} runs)", "p95 s", "vs baseline", "ratio"], rows,
        align="lrrrr",
    )  # fmt: skip
    section = docs_table.section(table, docs_table.machine(), docs_table.command())
    docs_table.write_sections({"provenance": section})


def timed(call: Callable[[], object], shipped: bool, warm: bool) -> float:
    started = time.perf_counter()
    if shipped:
        result = call()
    else:
        with baseline():
            result = call()
    elapsed = time.perf_counter() - started
    assert getattr(result, "success", False), result
    assert getattr(result, "warm_start", None) is warm, "a warm way ran cold (or the reverse)"
    return elapsed


if __name__ == "__main__":
    main()
