"""Bare Python versus the sandbox, cold and warm: same scripts, package versions and CPUs.

    .venv/bin/python benchmarks/bench_sandbox.py [--runs N] [--batch 50]

For the reference Random Forest experiment (iris, 50 trees, 5-fold CV) and a
one-line script it runs each way N times, interleaved, and prints the median
and p95 wall time and the ratio to bare:

- bare: ``python script.py`` in a host venv built from the image's own locked
  wheels (``taskset -c 0`` for the 1-CPU budget);
- cold: ``ExperimentRunner.run`` in a fresh hardened container;
- warm: the same from the warm pool (the pool is given time to refill between
  runs, as in a loop whose experiments take longer than a pool start);
- warm-runsc: warm under gVisor, when runsc is registered.

Then the batch mode: ``--batch`` short experiments through ``run_many``, cold
and warm, in experiments per second; and the cost of copying a run's files
through the engine's API (``transfer="copy"``) against bind-mounting them, for
the one-line script alone and with a 50 MB input.

With ``--docs``, the three tables also go into ``docs/performance.md``
(sections ``sandbox``, ``sandbox-batch`` and ``sandbox-transfer``), with the
machine and this command under each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docs_table

from runner import ExperimentRunner, ExperimentSpec
from runner.core.settings import ExperimentDefaults
from runner.image.build import download_wheels
from runner.image.definition import image_dir
from runner.sandbox.engine import DockerEngine

RF_SCRIPT = """\
import json
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score

X, y = load_iris(return_X_y=True)
model = RandomForestClassifier(n_estimators=50, random_state=0)
scores = cross_val_score(model, X, y, cv=5)
print(json.dumps({"success": True, "metrics": {"accuracy": float(scores.mean())}}))
"""
ONE_LINE = "print('{\"success\": true}')\n"
SHORT = """\
import json
from sklearn.linear_model import LogisticRegression
from sklearn.datasets import load_iris
X, y = load_iris(return_X_y=True)
accuracy = LogisticRegression(max_iter=200).fit(X, y).score(X, y)
print(json.dumps({"success": True, "metrics": {"accuracy": accuracy}}))
"""
SPEC = ExperimentSpec(experiment_name="bench", model_type="RandomForestClassifier")
Measure = Callable[[], None]
#: The sections of docs/performance.md that ``--docs`` writes.
DOCS_SECTIONS = ("sandbox", "sandbox-batch", "sandbox-transfer")


def host_venv(cache: Path) -> Path:
    """A host venv holding exactly the image's locked wheels; returns its python."""
    lock = image_dir() / "requirements.lock"
    venv = cache / "bench-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        index_url = ExperimentDefaults().index_url
        wheels = download_wheels(
            lock, cache / "bench-wheels", index_url=index_url, log=lambda m: None
        )
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--require-hashes",
             "--find-links", str(wheels), "-r", str(lock)],
            check=True,
        )  # fmt: skip
    return python


def bare_env() -> dict[str, str]:
    env = dict(os.environ)
    # The machine pins an OpenBLAS kernel for old builds; the container runs without it.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    return env


def write(directory: Path, name: str, code: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / name
    path.write_text(code)
    path.chmod(0o644)
    return path


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timed(fn: Measure) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--docs", action="store_true", help="also write the tables into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    cores = len(os.sched_getaffinity(0))
    python = host_venv(ExperimentDefaults().cache_dir)
    has_runsc = "runsc" in DockerEngine().runtimes()
    root = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    root.chmod(0o755)
    pool_root = root / "experiments"
    scripts = {
        "random forest": write(pool_root / "rf", "rf_experiment.py", RF_SCRIPT),
        "one line": write(pool_root / "one", "one_line.py", ONE_LINE),
    }
    runners: list[ExperimentRunner] = []

    def bare(script: Path, cpus: list[str]) -> Measure:
        return lambda: subprocess.run(
            [*cpus, str(python), str(script)], env=bare_env(), cwd=script.parent,
            check=True, capture_output=True,
        )  # fmt: skip

    def sandbox(script: Path, runner: ExperimentRunner, warm: bool) -> Measure:
        def run() -> None:
            result = runner.run(script, SPEC, 0)
            assert result.success, result.error_message
            assert result.warm_start == warm

        return run

    def make(cpu: float, warm: bool, runtime: str | None = None) -> ExperimentRunner:
        runner = ExperimentRunner(
            timeout=120, cpu_limit=cpu, runtime=runtime, pool_root=pool_root,
            warm_pool=1 if warm else 0,
        )  # fmt: skip
        runners.append(runner)
        return runner

    try:
        budgets = {"1 CPU": (1.0, ["taskset", "-c", "0"]), f"{cores} CPUs": (float(cores), [])}
        ways: dict[tuple[str, str, str], tuple[Measure, ExperimentRunner | None]] = {}
        for budget, (cpu, pin) in budgets.items():
            cold, warm = make(cpu, False), make(cpu, True)
            warm_runsc = make(cpu, True, "runsc") if has_runsc else None
            for label, script in scripts.items():
                ways[(label, budget, "bare")] = (bare(script, pin), None)
                ways[(label, budget, "cold")] = (sandbox(script, cold, False), None)
                ways[(label, budget, "warm")] = (sandbox(script, warm, True), warm)
                if warm_runsc is not None:
                    ways[(label, budget, "warm runsc")] = (
                        sandbox(script, warm_runsc, True), warm_runsc
                    )  # fmt: skip
        times: dict[tuple[str, str, str], list[float]] = {key: [] for key in ways}
        pools = [runner for runner in runners if runner.warm_pool_size]
        for round_ in range(args.runs + 1):  # the first round warms caches and is dropped
            for key, (measure, _) in ways.items():
                # No pool may be refilling (importing, on a CPU) while anything is timed.
                for runner in pools:
                    assert runner.wait_for_warm(120), f"a pool never got ready before {key}"
                elapsed = timed(measure)
                if round_:
                    times[key].append(elapsed)

        print(
            f"host: {cores} cores, kernel {os.uname().release}, image {ExperimentDefaults().image}"
        )
        print(f"{args.runs} runs each way, interleaved; seconds; ratio = median / bare median")
        header = (
            f"{'script':<15}{'CPU budget':<12}{'way':<12}{'median':>8}{'p95':>8}{'vs bare':>18}"
        )
        print(header)
        print("-" * len(header))
        for (label, budget, way), values in times.items():
            base = statistics.median(times[(label, budget, "bare")])
            median = statistics.median(values)
            delta = (
                "" if way == "bare" else f"{(median - base) * 1000:+.0f} ms x{median / base:.2f}"
            )
            print(f"{label:<15}{budget:<12}{way:<12}{median:>8.3f}{p95(values):>8.3f}{delta:>18}")

        per_run = [
            (label, budget, way, f"{statistics.median(values):.3f}", f"{p95(values):.3f}",
             versus(statistics.median(values), statistics.median(times[(label, budget, "bare")]))
             if way != "bare" else "")
            for (label, budget, way), values in times.items()
        ]  # fmt: skip

        print(f"\nbatch: {args.batch} short experiments (logistic regression on iris), run_many")
        batch_rows: list[tuple[str, float, int, float]] = []
        batch = [
            (write(pool_root / f"b{i}", "short.py", SHORT), SPEC, i) for i in range(args.batch)
        ]
        for way, pool in (("cold", 0), ("warm", 2)):
            runner = ExperimentRunner(timeout=120, warm_pool=pool, pool_root=pool_root)
            runners.append(runner)
            if pool:
                runner.wait_for_warm(120)
            started = time.perf_counter()
            results = runner.run_many(batch, max_workers=runner.default_workers())
            elapsed = time.perf_counter() - started
            assert all(r.success for r in results)
            warm_share = sum(r.warm_start for r in results) / len(results)
            batch_rows.append((way, len(batch) / elapsed, runner.default_workers(), warm_share))
            print(f"  {way:<5} {len(batch) / elapsed:6.2f} experiments/s "
                  f"({elapsed:.1f} s, {runner.default_workers()} at once, "
                  f"{warm_share:.0%} warm starts)")  # fmt: skip

        print(f"\ntransfer: bind vs copy (cold, 1 CPU), {args.runs} runs each, interleaved")
        big = root / "data" / "input-50mb.bin"
        big.parent.mkdir(mode=0o755)
        big.write_bytes(os.urandom(50 * 1024 * 1024))
        big.chmod(0o644)
        transfers = {t: ExperimentRunner(timeout=120, transfer=t) for t in ("bind", "copy")}
        cases = {"one line": (), "one line + 50 MB input": (big,)}
        spent: dict[tuple[str, str], list[float]] = {
            (case, t): [] for case in cases for t in transfers
        }

        def copied_run(runner: ExperimentRunner, inputs: tuple[Path, ...]) -> Measure:
            def run() -> None:
                result = runner.run(scripts["one line"], SPEC, 0, inputs=inputs)
                assert result.success, result.error_message

            return run

        for round_ in range(args.runs + 1):
            for (case, t), values in spent.items():
                runner = transfers[t]
                elapsed = timed(copied_run(runner, cases[case]))
                if round_:
                    values.append(elapsed)
        transfer_rows = []
        for case in cases:
            bind = statistics.median(spent[(case, "bind")])
            copy = statistics.median(spent[(case, "copy")])
            print(f"  {case:<24} bind {bind:6.3f}  copy {copy:6.3f}  "
                  f"copy adds {(copy - bind) * 1000:+.0f} ms")  # fmt: skip
            transfer_rows.append((case, f"{bind:.3f}", f"{copy:.3f}",
                                  f"{(copy - bind) * 1000:+.0f} ms",
                                  docs_table.ratio(copy, bind)))  # fmt: skip
        if args.docs:
            write_docs(args, per_run, batch_rows, transfer_rows)
    finally:
        for runner in runners:
            runner.close()


def versus(median: float, base: float) -> str:
    """A median against its baseline of the same run: the difference and the ratio."""
    return f"{(median - base) * 1000:+.0f} ms, {docs_table.ratio(median, base)}"


def engine_words(engine: DockerEngine) -> str:
    """The engine in a few words, for the line under a table."""
    info = engine.info()
    runtimes = ", ".join(sorted(r for r in engine.runtimes() if not r.startswith("io.")))
    return (
        f"engine {info.get('ServerVersion', '?')} on {info.get('OperatingSystem', '?')} "
        f"(runtimes: {runtimes})"
    )


def write_docs(
    args: argparse.Namespace,
    per_run: list[tuple[str, ...]],
    batch_rows: list[tuple[str, float, int, float]],
    transfer_rows: list[tuple[str, ...]],
) -> None:
    """The three tables into docs/performance.md, each with the machine and this command."""
    where = docs_table.machine([engine_words(DockerEngine()), ExperimentDefaults().image])
    again = docs_table.command()
    cold_rate = next(rate for way, rate, _, _ in batch_rows if way == "cold")
    batch = [
        (way, f"{rate:.2f}", workers, f"{share:.0%}", docs_table.ratio(rate, cold_rate))
        for way, rate, workers, share in batch_rows
    ]
    tables = {
        "sandbox": docs_table.markdown_table(
            ["script", "CPU budget", "way", f"median s ({args.runs} runs)", "p95 s", "vs bare"],
            per_run,
            align="lllrrr",
        ),
        "sandbox-batch": docs_table.markdown_table(
            ["way", "experiments/s", "at once", "warm starts", "vs cold"],
            batch,
            align="lrrrr",
        ),
        "sandbox-transfer": docs_table.markdown_table(
            ["case", "bind s", "copy s", "copy adds", "copy vs bind"],
            transfer_rows,
            align="lrrrr",
        ),
    }
    docs_table.write_sections(
        {name: docs_table.section(table, where, again) for name, table in tables.items()}
    )


if __name__ == "__main__":
    main()
