"""What held-out scoring costs a run: the same script with and without ``holdout=``, cold
and warm, interleaved.

    .venv/bin/python benchmarks/bench_holdout.py [--runs 11] [--docs]

The script fits a logistic regression on the shipped churn data (600 rows). Without
a held-out split it reads the data file and splits it itself (scikit-learn's
``train_test_split``), with one it reads ``$TRAIN_PATH`` and ``$TEST_PATH`` and
writes its predictions: the same work inside the sandbox either way. What the
split adds is the runner's: splitting and staging on the host, bringing the
predictions back, reading them, and the scorer's sandbox (cold: a fresh
container that imports scikit-learn; warm: a slot the pool keeps with it
imported).

Four ways, each ``--runs`` times after a dropped first round, interleaved, every
warm pool full before anything is timed:

- cold: ``ExperimentRunner.run`` without a pool, without and with ``holdout=``;
- warm: a runner with ``warm_pool=1`` (its pool for the plain runs, the slots it
  keeps for held-out scripts and for the scorer), without and with ``holdout=``.

Prints the medians, the overhead of scoring (with minus without, in ms) and the
ratio, and the scorer's own median time (``result.holdout.scoring_time``). With
``--docs``, the table also goes into ``docs/performance.md`` (section
``holdout``), with the machine and this command under it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import docs_table
from bench_sandbox import engine_words

# Its own group: what it makes is its own, whatever else runs on the engine. One name
# for every run of it, so the group's support volume is kept once, not once a run.
os.environ.setdefault("RUNNER_GROUP", "bench-holdout")

from runner import ExperimentResult, ExperimentRunner, ExperimentSpec, Holdout
from runner.cli.demo import TARGET, demo_data
from runner.sandbox.engine import DockerEngine

SCRIPT = """\
import json, os, sys
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

target = "churned"
if "TRAIN_PATH" in os.environ:
    train, test = pd.read_csv(os.environ["TRAIN_PATH"]), pd.read_csv(os.environ["TEST_PATH"])
else:
    data = pd.read_csv(sys.argv[1])
    train, test = train_test_split(data, test_size=0.25, random_state=0)
features = train.drop(columns=[target]).select_dtypes(include="number").columns.tolist()
model = LogisticRegression(max_iter=1000).fit(train[features].fillna(0), train[target])
predicted = model.predict(test[features].fillna(0))
if "PREDICTIONS_PATH" in os.environ:
    pd.DataFrame({"prediction": predicted}).to_csv(os.environ["PREDICTIONS_PATH"], index=False)
    print(json.dumps({"success": True, "metrics": {}}))
else:
    accuracy = float((predicted == test[target]).mean())
    print(json.dumps({"success": True, "metrics": {"accuracy": accuracy}}))
"""
SPEC = ExperimentSpec(experiment_name="bench", model_type="LogisticRegression")
#: The section of docs/performance.md that ``--docs`` writes.
DOCS_SECTIONS = ("holdout",)
WAYS = ("cold", "cold, held out", "warm", "warm, held out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument(
        "--docs", action="store_true", help="also write the table into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    work = Path(tempfile.mkdtemp(prefix="bench-holdout-"))
    try:
        root = work / "experiments"
        (root / "exp").mkdir(parents=True)
        for directory in (work, root, root / "exp"):
            directory.chmod(0o755)
        data = root / "exp" / "churn.csv"
        shutil.copyfile(demo_data(), data)
        script = root / "exp" / "bench.py"
        script.write_text(SCRIPT)
        for path in (data, script):
            path.chmod(0o644)
        times, scoring = measure(args.runs, root, script, data)
        engine = engine_words(DockerEngine())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args.runs, times, scoring)
    if args.docs:
        write_docs(args.runs, times, scoring, engine)


def measure(
    runs: int, root: Path, script: Path, data: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each way ``runs`` times (plus a dropped first round), interleaved."""
    holdout = Holdout(data, TARGET, "classification")
    cold = ExperimentRunner(timeout=120)
    warm = ExperimentRunner(timeout=120, warm_pool=1, pool_root=root)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    scoring: dict[str, list[float]] = {"cold, held out": [], "warm, held out": []}
    try:
        for round_ in range(runs + 1):
            for way in WAYS:
                runner = warm if way.startswith("warm") else cold
                held = holdout if way.endswith("held out") else None
                if runner is warm and round_:
                    assert warm.wait_for_warm(300), "a pool never got ready"
                started = time.perf_counter()
                result = runner.run(script, SPEC, 0, args=[str(data)], holdout=held)
                elapsed = time.perf_counter() - started
                check(result, way, timed=bool(round_))
                if round_:
                    times[way].append(elapsed)
                    if held is not None and result.holdout is not None:
                        scoring[way].append(result.holdout.scoring_time or 0.0)
        return times, scoring
    finally:
        cold.close()
        warm.close()


def check(result: ExperimentResult, way: str, *, timed: bool) -> None:
    assert result.success, f"{way}: {result.error_message}\n{result.stderr}"
    assert result.verified == way.endswith("held out"), way
    if timed:  # the first held-out run of the warm runner asks for its kept slots
        assert result.warm_start == way.startswith("warm"), f"{way} ran the other way"


def overhead(times: dict[str, list[float]], base: str) -> tuple[float, float, float]:
    """The median without, with, and the difference (with held out minus without)."""
    without = statistics.median(times[base])
    with_ = statistics.median(times[f"{base}, held out"])
    return without, with_, with_ - without


def report(runs: int, times: dict[str, list[float]], scoring: dict[str, list[float]]) -> None:
    print(f"churn logistic regression, {runs} runs each way, interleaved")
    print(f"{'':<6}{'without':>10}{'held out':>10}{'overhead':>12}{'ratio':>8}{'scorer':>10}")
    for base in ("cold", "warm"):
        without, with_, extra = overhead(times, base)
        scorer = statistics.median(scoring[f"{base}, held out"])
        print(
            f"{base:<6}{without:>9.3f}s{with_:>9.3f}s{extra * 1000:>+10.0f}ms"
            f"{docs_table.ratio(with_, without):>8}{scorer * 1000:>8.0f}ms"
        )


def write_docs(
    runs: int, times: dict[str, list[float]], scoring: dict[str, list[float]], engine: str
) -> None:
    """The table into docs/performance.md, with the machine and this command under it."""
    rows = []
    for base in ("cold", "warm"):
        without, with_, extra = overhead(times, base)
        scorer = statistics.median(scoring[f"{base}, held out"])
        rows.append((
            base, f"{without:.3f}", f"{with_:.3f}", f"{extra * 1000:+.0f} ms",
            docs_table.ratio(with_, without), f"{scorer * 1000:.0f} ms",
        ))  # fmt: skip
    table = docs_table.markdown_table(
        ["run", f"without s (median of {runs})", "held out s", "overhead",
         "vs without", "scorer alone"],
        rows,
        align="lrrrrr",
    )  # fmt: skip
    where = docs_table.machine([engine])
    docs_table.write_sections({"holdout": docs_table.section(table, where, docs_table.command())})


if __name__ == "__main__":
    main()
