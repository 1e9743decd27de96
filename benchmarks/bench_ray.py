"""A batch of short experiments: bare processes, run_many cold and warm, and a Ray cluster.

    .venv/bin/python benchmarks/bench_ray.py [--batch 20] [--rounds 3] [--runs 11]

Everything runs on this machine's cores, side by side in one run:

- bare: ``python short.py`` in a host venv of the image's own locked wheels, as
  many at once as the sandboxes (thread counts 1, as a 1-CPU sandbox sets them);
- local cold / warm: ``ExperimentRunner.run_many`` with ``default_workers()``
  (cold, then with a warm pool of that size);
- Ray cold / warm: the same ``run_many`` with ``cluster=`` on a local two-node
  Ray cluster (``ray.cluster_utils.Cluster``, every node bound to 127.0.0.1, no
  dashboard, no usage statistics), the cores and memory split between the
  nodes; warm: a pool on each node (made, filled and closed each round: a
  node's pool books its sandboxes, so cold tasks could not run beside it).

The ways take turns, ``--rounds`` times (each pool full and the cluster's
workers started before a way is timed), so that a machine busy with other work
weighs on all of them alike. Prints the median experiments per second and the
ratios to bare and to local cold, and the machine's CPU time (all cores, from
/proc/stat) per experiment each way; then what one fresh container costs the
engine and its runtime at the least (create, start, wait and remove ``true``,
no network, no other option: ``--floor`` of them, after the cluster and pools
are gone, interleaved with the runner's cold one-line runs), and the throughput
experiments of bare's CPU plus that floor reach when the cores are the limit;
then the per-task overhead of Ray: a one-line
script run one at a time, ``--runs`` times each way, interleaved (medians):
locally with the files bind-mounted, locally with them copied through the
engine's API (what a Ray task does on a node whose engine does not see its
files), and on the cluster. The sandboxes run on this machine's engine (the
nodes share it; each node unpacks a run's files where the engine sees them and
binds them): do not run this beside the test suites, which remove every
container of the project. ``--dind`` runs them on a private Docker-in-Docker
engine (``tests/engines.py``) that sees one directory of this machine instead.

With ``--docs``, the tables also go into ``docs/performance.md`` (sections
``ray``, ``ray-one-at-a-time`` and ``ray-cpu``), each ratio against a baseline
of the same run, with the machine and this command under each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runner.backends.ray.local import local_cluster
from runner.backends.ray.placement import LOCAL_RAY_ENVIRONMENT

# Before Ray is imported: no usage statistics, and addresses on the loopback only.
os.environ.update(LOCAL_RAY_ENVIRONMENT)

from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).parent))
import docs_table
from bench_sandbox import ONE_LINE, SHORT, SPEC, bare_env, engine_words, host_venv, write

from runner import ExperimentRunner
from runner.core.settings import ExperimentDefaults
from runner.sandbox.cleanup import build_labels, deadline_after
from runner.sandbox.engine import DockerEngine
from tests.engines import dind_engine

#: The issue's target for a local batch, as a share of bare throughput.
TARGET_LOCAL = 0.95
#: The sections of docs/performance.md that ``--docs`` writes.
DOCS_SECTIONS = ("ray", "ray-one-at-a-time", "ray-cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument(
        "--floor", type=int, default=20, help="minimal containers (and one-line runs) timed"
    )
    parser.add_argument(
        "--dind", action="store_true",
        help="sandboxes on a private Docker-in-Docker engine, not this machine's (for running "
        "beside the test suites, which remove the machine's engine's project containers)",
    )  # fmt: skip
    parser.add_argument(
        "--docs", action="store_true", help="also write the tables into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    python = host_venv(ExperimentDefaults().cache_dir)
    # Not below /tmp (the engine's container has a tmpfs of its own there): beside this checkout.
    shared = Path(tempfile.mkdtemp(prefix=".bench-ray-", dir=Path(__file__).parents[1]))
    shared.chmod(0o755)
    tempfile.tempdir = str(shared)  # the engine's probe file must be where it can see it
    # The Ray workers' too: a node unpacks a run's files there, where the engine sees them.
    os.environ["TMPDIR"] = str(shared)
    try:
        root = shared / "experiments"
        batch = [(write(root / f"b{i}", "short.py", SHORT), SPEC, i) for i in range(args.batch)]
        one = write(root / "one", "one_line.py", ONE_LINE)
        engine = dind_engine(shared=shared) if args.dind else contextlib.nullcontext(None)
        with engine as docker_host:
            if docker_host is not None:
                os.environ["DOCKER_HOST"] = docker_host  # the Ray workers inherit it
            settings = ExperimentDefaults(cache_dir=shared / "cache")
            local = ExperimentRunner(timeout=120, pool_root=root, settings=settings)
            copied = ExperimentRunner(timeout=120, transfer="copy", settings=settings)
            workers = local.default_workers()
            print(f"{args.batch} short experiments (logistic regression on iris), {workers} "
                  f"at once, {len(os.sched_getaffinity(0))} cores, 1 CPU and 2g each, "
                  f"{args.rounds} rounds")  # fmt: skip
            rates: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}

            def timed(way: str, measure: Callable[[], float]) -> None:
                before = busy_seconds()
                rates.setdefault(way, []).append(measure())
                cpu.setdefault(way, []).append((busy_seconds() - before) / len(batch))

            with (
                ExperimentRunner(
                    timeout=120, pool_root=root, settings=settings, warm_pool=workers
                ) as warm,
                two_nodes(workers) as cluster,
            ):
                on_ray = ExperimentRunner(timeout=120, cluster=cluster.address)
                assert on_ray.default_workers() == workers
                batched(on_ray, batch[:workers])  # each node's worker processes start
                for _ in range(args.rounds):
                    timed("bare", lambda: bare(python, batch, workers))
                    timed("local cold", lambda: batched(local, batch))
                    warm.wait_for_warm(120)
                    timed("local warm", lambda: batched(warm, batch))
                    timed("Ray cold", lambda: batched(on_ray, batch))
                    with ExperimentRunner(
                        timeout=120, cluster=cluster.address, warm_pool=workers, pool_root=root
                    ) as ray_warm:
                        ray_warm.wait_for_warm(120)
                        timed("Ray warm", lambda: batched(ray_warm, batch))
                ways = {"local, bind": local, "local, copy": copied, "Ray": on_ray}
                overhead = one_at_a_time(ways, one, args.runs)
            # With the cluster and the pools gone: their idle CPU would count here.
            floor = container_floor(DockerEngine(), settings.image, local, one, args.floor)
            engine_used = engine_words(DockerEngine())
        medians = {way: statistics.median(r) for way, r in rates.items()}
        cpu_medians = {way: statistics.median(c) for way, c in cpu.items()}
        report(medians, cpu_medians, floor, overhead, args.runs)
        if args.docs:
            where = docs_table.machine(
                [("a private Docker-in-Docker " if args.dind else "") + engine_used]
            )
            write_docs(args, medians, cpu_medians, floor, overhead, where)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def bare(python: Path, batch: list[tuple[Path, object, int]], workers: int) -> float:
    """Experiments per second, ``workers`` bare processes at a time."""
    env = {**bare_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}  # fmt: skip

    def one(script: Path) -> None:
        subprocess.run([str(python), str(script)], env=env, cwd=script.parent,
                       check=True, capture_output=True)  # fmt: skip

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, [script for script, _, _ in batch]))
    return len(batch) / (time.perf_counter() - started)


def batched(runner: ExperimentRunner, batch: list[tuple[Path, object, int]]) -> float:
    """Experiments per second through ``run_many`` with its default workers."""
    started = time.perf_counter()
    results = runner.run_many(batch)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    assert all(r.success for r in results), [r.error_message for r in results]
    return len(batch) / elapsed


@contextlib.contextmanager
def two_nodes(sandboxes: int) -> Iterator[Cluster]:
    """A local cluster of two nodes sharing this machine's sandbox capacity."""
    half = max(1, sandboxes // 2)
    with local_cluster(2, num_cpus=half, memory=half * 2 * 1024**3 + 1024**3) as cluster:
        yield cluster


def busy_seconds() -> float:
    """CPU seconds all of this machine's cores have spent busy (``/proc/stat``)."""
    with Path("/proc/stat").open() as stat:
        # user nice system idle iowait irq softirq steal (guest time is in user already);
        # stolen time is another guest's, not this machine's work
        ticks = [int(field) for field in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / os.sysconf("SC_CLK_TCK")


def container_floor(
    engine: DockerEngine, image: str, runner: ExperimentRunner, script: Path, runs: int
) -> tuple[float, float]:
    """Machine CPU seconds of the least a fresh container costs, and of a one-line run.

    The least: ``true`` created, started, waited for and removed, one at a time,
    with no network (as the sandboxes) and none of the runner's limits, mounts,
    checks or streams: what the engine, its shim and the runtime spend on any
    container. Interleaved with the runner's cold run of a one-line script
    (``script``), whose difference is what the runner adds. Medians of ``runs``.
    """
    floor, one_line = [], []
    for index in range(runs + 2):  # the first two warm the engine's caches
        before = busy_seconds()
        container = engine.create(image, ["true"], network_mode="none", network_disabled=True,
                                  labels=build_labels(deadline_after(60)))  # fmt: skip
        try:
            engine.start(container)
            engine.wait(container, 60)
        finally:
            engine.remove(container)
        between = busy_seconds()
        assert runner.run(script, SPEC, index).success
        if index >= 2:
            floor.append(between - before)
            one_line.append(busy_seconds() - between)
    return statistics.median(floor), statistics.median(one_line)


def one_at_a_time(ways: dict[str, ExperimentRunner], script: Path, runs: int) -> dict[str, float]:
    """Median seconds of one one-line run, each way (interleaved)."""
    spent: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(runs):
        for way, runner in ways.items():
            started = time.perf_counter()
            result = runner.run(script, SPEC, 0)
            spent[way].append(time.perf_counter() - started)
            assert result.success, result.error_message
    return {way: statistics.median(values) for way, values in spent.items()}


def report(
    rates: dict[str, float],
    cpu: dict[str, float],
    floor: tuple[float, float],
    overhead: dict[str, float],
    runs: int,
) -> None:
    print(f"{'way':<16}{'experiments/s':>14}{'vs bare':>10}{'vs local cold':>15}"
          f"{'CPU s/experiment':>18}")  # fmt: skip
    for way, rate in rates.items():
        print(f"{way:<16}{rate:>14.2f}{rate / rates['bare']:>10.2f}"
              f"{rate / rates['local cold']:>15.2f}{cpu[way]:>18.3f}")  # fmt: skip
    least, one_line = floor
    ceiling = cpu["bare"] / (cpu["bare"] + least)
    allowed = cpu["bare"] * (1 / TARGET_LOCAL - 1)
    print(f"\n(warm ways: a pool refills during the batch; its last refills fall after it)\n"
          f"engine floor: a minimal fresh container costs {least * 1000:.0f} ms of this "
          f"machine's CPU (engine, shim, runtime); a cold one-line run through the runner "
          f"{one_line * 1000:.0f} ms (its Python, checks and streams added); a short "
          f"experiment's cold run {(cpu['local cold'] - cpu['bare']) * 1000:.0f} ms over bare.\n"
          f"With the cores the limit, experiments of {cpu['bare']:.2f} s of CPU plus the floor "
          f"run at {ceiling:.2f}x bare; {TARGET_LOCAL}x would allow {allowed * 1000:.0f} ms "
          f"a container")  # fmt: skip
    local, on_ray_cold = rates["local cold"], rates["Ray cold"]
    print(f"\ntargets: local cold (the default) / bare {local / rates['bare']:.2f} "
          f"(>= {TARGET_LOCAL}); Ray cold / local cold {on_ray_cold / local:.2f} "
          f"(>= 0.85)")  # fmt: skip
    bind, copy, on_ray = overhead["local, bind"], overhead["local, copy"], overhead["Ray"]
    print(f"\none-line script one at a time, {runs} runs each, medians: local {bind:.3f} s "
          f"(files bind-mounted), {copy:.3f} s (copied), Ray {on_ray:.3f} s: "
          f"{(on_ray - bind) * 1000:+.0f} ms a task over a local run (the node unpacks and "
          f"binds the files), {(copy - bind) * 1000:+.0f} ms more where files must be copied "
          f"into a volume")  # fmt: skip


def write_docs(
    args: argparse.Namespace,
    rates: dict[str, float],
    cpu: dict[str, float],
    floor: tuple[float, float],
    overhead: dict[str, float],
    where: str,
) -> None:
    """The three tables into docs/performance.md, each with the machine and this command."""
    batch = docs_table.markdown_table(
        ["way", f"experiments/s (median of {args.rounds} rounds)", "vs bare", "vs local cold",
         "CPU s an experiment"],
        [(way, f"{rate:.2f}", docs_table.ratio(rate, rates["bare"]),
          docs_table.ratio(rate, rates["local cold"]), f"{cpu[way]:.3f}")
         for way, rate in rates.items()],
        align="lrrrr",
    )  # fmt: skip
    bind = overhead["local, bind"]
    one = docs_table.markdown_table(
        ["way", f"seconds (median of {args.runs})", "over local, bind", "vs local, bind"],
        [(way, f"{seconds:.3f}", f"{(seconds - bind) * 1000:+.0f} ms",
          docs_table.ratio(seconds, bind))
         for way, seconds in overhead.items()],
        align="lrrr",
    )  # fmt: skip
    least, one_line = floor
    allowed = cpu["bare"] * (1 / TARGET_LOCAL - 1)
    machine_cpu = docs_table.markdown_table(
        ["what", "machine CPU"],
        [
            (f"a minimal fresh container (`true`, no network; median of {args.floor})",
             f"{least * 1000:.0f} ms"),
            ("a cold one-line run through the runner, interleaved with those",
             f"{one_line * 1000:.0f} ms"),
            ("a short experiment, bare", f"{cpu['bare'] * 1000:.0f} ms"),
            ("a short experiment, local cold, over bare",
             f"{(cpu['local cold'] - cpu['bare']) * 1000:+.0f} ms"),
            (f"what a container may cost for local cold to reach {TARGET_LOCAL}x bare",
             f"{allowed * 1000:.0f} ms"),
        ],
        align="lr",
    )  # fmt: skip
    again = docs_table.command()
    docs_table.write_sections({
        name: docs_table.section(table, where, again)
        for name, table in (("ray", batch), ("ray-one-at-a-time", one), ("ray-cpu", machine_cpu))
    })  # fmt: skip


if __name__ == "__main__":
    main()
