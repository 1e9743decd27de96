"""Bare Python versus the sandbox, same script, same package versions, same CPU budget.

    .venv/bin/python benchmarks/bench_sandbox.py [--runs N]

Runs the reference document's kind of experiment (Random Forest, iris, 50
trees, 5-fold CV) N times each way, interleaved, and prints the median and p95
wall time of each way, and the sandbox's difference and ratio to bare:

- bare, 1 CPU:  ``taskset -c 0 python script.py`` in a host venv built from the
  image's own locked wheels;  sandbox, cpu_limit=1.0 (the default).
- bare, all CPUs: ``python script.py``;  sandbox, cpu_limit = host cores.

The sandboxed time is what a caller of ``ExperimentRunner.run`` waits: create,
start, run, collect, parse and remove a fresh hardened container.
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

from runner import ExperimentRunner, ExperimentSpec
from runner.image import download_wheels, image_dir
from runner.settings import ExperimentDefaults

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
SPEC = ExperimentSpec(experiment_name="bench_rf", model_type="RandomForestClassifier")


def host_venv(cache: Path) -> Path:
    """A host venv holding exactly the image's locked wheels; returns its python."""
    lock = image_dir() / "requirements.lock"
    venv = cache / "bench-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        wheels = download_wheels(lock, cache / "bench-wheels", log=lambda m: None)
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


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    python = host_venv(ExperimentDefaults().cache_dir)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "bench"
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        script = directory / "rf_experiment.py"
        script.write_text(RF_SCRIPT)
        script.chmod(0o644)

        def bare(cpus: list[str]) -> Callable[[], None]:
            def run() -> None:
                subprocess.run([*cpus, str(python), str(script)], env=bare_env(),
                               cwd=directory, check=True, capture_output=True)  # fmt: skip

            return run

        def sandbox(cpu_limit: float) -> Callable[[], None]:
            runner = ExperimentRunner(timeout=120, cpu_limit=cpu_limit)

            def run() -> None:
                result = runner.run(script, SPEC, 0)
                assert result.success, result.error_message

            return run

        pairs = {
            "1 CPU": (bare(["taskset", "-c", "0"]), sandbox(1.0)),
            f"{cores} CPUs": (bare([]), sandbox(float(cores))),
        }
        for bare_run, sandbox_run in pairs.values():  # warm the page cache once
            bare_run()
            sandbox_run()
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for budget, (bare_run, sandbox_run) in pairs.items():
                times.setdefault((budget, "bare"), []).append(timed(bare_run))
                times.setdefault((budget, "sandbox"), []).append(timed(sandbox_run))

    print(f"Random Forest (iris, 50 trees, 5-fold CV), {args.runs} runs each, interleaved")
    print(f"host: {cores} cores, {os.uname().release}; sandbox image {ExperimentDefaults().image}")
    header = f"{'CPU budget':<12}{'way':<10}{'median s':>10}{'p95 s':>8}{'vs bare':>16}"
    print(header)
    print("-" * len(header))
    for budget in pairs:
        base = statistics.median(times[(budget, "bare")])
        for way in ("bare", "sandbox"):
            values = times[(budget, way)]
            median = statistics.median(values)
            delta = f"{(median - base) * 1000:+.0f} ms x{median / base:.2f}"
            delta = "" if way == "bare" else delta
            print(f"{budget:<12}{way:<10}{median:>10.3f}{p95(values):>8.3f}{delta:>16}")


if __name__ == "__main__":
    main()
