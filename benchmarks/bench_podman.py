"""A cold one-line run on Podman against the same run on Docker, and where each spends its time.

    sudo .venv/bin/python benchmarks/bench_podman.py [--runs 21] [--first 5] [--calls] [--docs]

Starts a Podman service of its own the way the test suites do (``tests/engines.py``:
a network namespace of its own, its own storage, the sandbox images loaded from
the local engine; stopped and removed at the end), then, on each engine, under a
``RUNNER_GROUP`` of its own, interleaved (which engine goes first alternates):

- cold: ``ExperimentRunner.run`` of a one-line script in a fresh sandbox (no warm
  pool), ``--runs`` times on one runner per engine, after one untimed run each;
- first run: a new ``ExperimentRunner()`` (its engine from ``DOCKER_HOST``) and its
  first run, ``--first`` times: what a ``runner run`` command pays, the client's
  connection and the engine's probe (kind, version, runtimes, files, support
  volume) included.

Prints the median and p95 of each on each engine and the ratio of the medians
(Podman / Docker). With ``--calls``, also each engine API call of a run: its
median time and how often a run makes it, side by side; a call made by another
thread while a run was timed (a container's removal after the run's result) is
marked as in the background. With ``--docs``, the
tables go into ``docs/performance.md`` (sections ``podman``, ``podman-calls`` and
``podman-first-calls``), with the machine and this command under each.

``measure(runs, first_runs)`` does the measuring, for a benchmark that combines several.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docs_table
from docker.api.client import APIClient

from runner import ExperimentRunner, ExperimentSpec
from runner.core.settings import ExperimentDefaults
from runner.sandbox.engine import DockerEngine
from tests.engines import podman_engine

ONE_LINE = "print('{\"success\": true}')\n"
SPEC = ExperimentSpec(experiment_name="bench", model_type="script")
ENGINES = ("docker", "podman")
WAYS = ("cold", "first")
#: Marks a call another thread made while a run was timed: not on the run's path.
BACKGROUND = " (background)"
#: The sections of docs/performance.md that ``--docs`` writes.
DOCS_SECTIONS = ("podman", "podman-calls", "podman-first-calls")
#: What varies between calls of one kind: the API version, IDs and names, the query.
_VARIABLE = [
    (re.compile(r"^/v\d+\.\d+/"), "/"),
    (re.compile(r"/[0-9a-f]{64}"), "/{id}"),
    (re.compile(r"^/((?:libpod/)?volumes)/(?!create|prune)[^/]+$"), r"/\1/{name}"),
    (re.compile(r"^/((?:libpod/)?images)/.+/json$"), r"/\1/{image}/json"),
]


@dataclass
class Comparison:
    """Seconds of each timed run, by way and engine, and the engine API calls they made."""

    runs: int
    first_runs: int
    #: By way (``cold``: a cold run of a runner in use; ``first``: a new runner's first run),
    #: then engine: the seconds of each run.
    times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {way: {e: [] for e in ENGINES} for way in WAYS}
    )
    #: By way and engine, each call (``POST /containers/{id}/start``): its durations.
    calls: dict[str, dict[str, dict[str, list[float]]]] = field(
        default_factory=lambda: {way: {e: defaultdict(list) for e in ENGINES} for way in WAYS}
    )
    podman_version: str = "?"
    docker_version: str = "?"

    def median(self, engine: str, way: str = "cold") -> float:
        return statistics.median(self.times[way][engine])

    def p95(self, engine: str, way: str = "cold") -> float:
        return p95(self.times[way][engine])

    def ratio(self, way: str = "cold") -> float:
        """Podman's median over Docker's, both from this run."""
        return self.median("podman", way) / self.median("docker", way)

    def call_rows(self, way: str = "cold") -> list[tuple[str, str, str, str, str]]:
        """Each call: median ms and calls per run on Docker, then on Podman (most time first)."""
        calls = self.calls[way]
        runs = self.runs if way == "cold" else self.first_runs
        names = {name for engine in ENGINES for name in calls[engine]}

        def per_run(engine: str, name: str) -> tuple[float, float]:
            spent = calls[engine].get(name) or []
            return (statistics.median(spent) * 1000 if spent else 0.0), len(spent) / runs

        def cells(engine: str, name: str) -> tuple[str, str]:
            ms, count = per_run(engine, name)
            return (f"{ms:.1f}", f"{count:.1f}") if count else ("", "")

        def weight(name: str) -> float:
            return max(ms * count for ms, count in (per_run(e, name) for e in ENGINES))

        return [
            (name, *cells("docker", name), *cells("podman", name))
            for name in sorted(names, key=weight, reverse=True)
        ]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def call_name(method: str, url: str) -> str:
    """``POST /containers/{id}/start`` for a call to any container, on either engine."""
    path = re.sub(r"^[a-z+]+://[^/]*", "", url).split("?", 1)[0]
    for pattern, replacement in _VARIABLE:
        path = pattern.sub(replacement, path)
    return f"{method} {path}"


class CallLog:
    """Times every request of every docker-py client to the engine being timed, into the
    way it is timed for; ``podman_socket`` tells the Podman service's clients apart."""

    def __init__(
        self, calls: dict[str, dict[str, dict[str, list[float]]]], podman_socket: str
    ) -> None:
        self._calls = calls
        self._podman_socket = podman_socket
        self._lock = threading.Lock()

    def engine_of(self, client: APIClient) -> str:
        adapter = getattr(client, "_custom_adapter", None)
        return (
            "podman" if getattr(adapter, "socket_path", None) == self._podman_socket else "docker"
        )

    @contextlib.contextmanager
    def timing(self, way: str, engine: str) -> Iterator[None]:
        """Record what is sent to ``engine`` in the ``with`` block, as ``way``."""
        send = APIClient.request
        log = self
        caller = threading.current_thread()

        def request(client: APIClient, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return send(client, method, url, *args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                if log.engine_of(client) == engine:
                    name = call_name(method, url)
                    if threading.current_thread() is not caller:
                        name += BACKGROUND  # off the run's path (a removal after its result)
                    with log._lock:
                        log._calls[way][engine][name].append(spent)

        APIClient.request = request
        try:
            yield
        finally:
            APIClient.request = send


def measure(runs: int, first_runs: int = 5) -> Comparison:
    """Cold one-line runs on Docker and on a Podman service of its own, interleaved.

    ``runs`` cold runs each of one runner per engine (after one untimed run), then
    ``first_runs`` first runs each of a new runner (``ExperimentRunner()`` with
    ``DOCKER_HOST`` naming the engine: the client, the engine's probe and its
    support volume included). Needs root and ``podman`` (``bash scripts/engines.sh``)
    and a local Docker engine with the sandbox image; starts and removes the Podman
    service itself.
    """
    os.environ.setdefault("RUNNER_GROUP", "bench-podman")
    result = Comparison(runs, first_runs)
    with tempfile.TemporaryDirectory(prefix="bench-podman-") as tmp, podman_engine() as host:
        log = CallLog(result.calls, host.removeprefix("unix://"))
        directory = Path(tmp)
        directory.chmod(0o755)  # the sandbox's user reads the script in place
        script = directory / "one_line.py"
        script.write_text(ONE_LINE)
        script.chmod(0o644)
        hosts = {"docker": os.environ.get("DOCKER_HOST"), "podman": host}
        engines = {engine: _engine(docker_host) for engine, docker_host in hosts.items()}
        runners = {
            engine: ExperimentRunner(timeout=60, warm_pool=0, engine=made)
            for engine, made in engines.items()
        }
        try:
            for engine, runner in runners.items():
                _run(runner, script)  # untimed: the engine's probe and support volume
                version = str(engines[engine].info().get("ServerVersion") or "?")
                setattr(result, f"{engine}_version", version)
            for round_ in range(runs):
                for engine in _in_turn(round_):
                    with log.timing("cold", engine):
                        started = time.perf_counter()
                        _run(runners[engine], script)
                        result.times["cold"][engine].append(time.perf_counter() - started)
        finally:
            for runner in runners.values():
                runner.close()
        for round_ in range(first_runs):
            for engine in _in_turn(round_):
                with _docker_host(hosts[engine]), log.timing("first", engine):
                    started = time.perf_counter()
                    runner = ExperimentRunner(
                        timeout=60, warm_pool=0
                    )  # its engine from DOCKER_HOST
                    try:
                        _run(runner, script)
                        result.times["first"][engine].append(time.perf_counter() - started)
                    finally:
                        runner.close()
    return result


def _engine(docker_host: str | None) -> DockerEngine:
    if docker_host is None:
        return DockerEngine()
    return DockerEngine(docker.DockerClient(base_url=docker_host, version="auto", max_pool_size=64))


def _in_turn(round_: int) -> tuple[str, ...]:
    """The engines in the order of this round: which goes first alternates."""
    return ENGINES if round_ % 2 == 0 else ENGINES[::-1]


@contextlib.contextmanager
def _docker_host(value: str | None) -> Iterator[None]:
    saved = os.environ.get("DOCKER_HOST")
    _set("DOCKER_HOST", value)
    try:
        yield
    finally:
        _set("DOCKER_HOST", saved)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _run(runner: ExperimentRunner, script: Path) -> None:
    outcome = runner.run(script, SPEC, 0)
    if not outcome.success:
        raise SystemExit(f"a run failed: {outcome.error_message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--first", type=int, default=5, help="first runs of a new runner")
    parser.add_argument("--calls", action="store_true", help="also print each engine API call")
    parser.add_argument(
        "--docs", action="store_true", help="also write the tables into docs/performance.md"
    )
    args = parser.parse_args()
    if args.docs:
        docs_table.check_sections(DOCS_SECTIONS)
    result = measure(args.runs, args.first)
    print(f"one-line script, Docker {result.docker_version}, Podman {result.podman_version}; "
          "seconds, interleaved")  # fmt: skip
    print(f"{'run':<34}{'docker':>8}{'p95':>8}{'podman':>8}{'p95':>8}{'ratio':>8}")
    for way, label in run_labels(result).items():
        print(f"{label:<34}{result.median('docker', way):>8.3f}{result.p95('docker', way):>8.3f}"
              f"{result.median('podman', way):>8.3f}{result.p95('podman', way):>8.3f}"
              f"{result.ratio(way):>7.2f}x")  # fmt: skip
    print(f"Podman / Docker, cold: x{result.ratio():.2f} (medians)")
    if args.calls or args.docs:
        for way, label in run_labels(result).items():
            print(f"\nengine API calls of a {label}: median ms, calls per run")
            print(f"{'call':<46}{'docker ms':>10}{'per run':>8}{'podman ms':>10}{'per run':>8}")
            for row in result.call_rows(way):
                print(f"{row[0]:<46}{row[1]:>10}{row[2]:>8}{row[3]:>10}{row[4]:>8}")
    if args.docs:
        write_docs(result)


def run_labels(result: Comparison) -> dict[str, str]:
    return {
        "cold": f"cold run ({result.runs} runs)",
        "first": f"first run of a new runner ({result.first_runs})",
    }


def write_docs(result: Comparison) -> None:
    """The tables into docs/performance.md, each with the machine and this command."""
    where = docs_table.machine(
        [f"Docker {result.docker_version}, Podman {result.podman_version}",
         ExperimentDefaults().image]
    )  # fmt: skip
    again = docs_table.command(prefix=["sudo"])
    runs = [
        (label, f"{result.median('docker', way):.3f}", f"{result.p95('docker', way):.3f}",
         f"{result.median('podman', way):.3f}", f"{result.p95('podman', way):.3f}",
         docs_table.ratio(result.median("podman", way), result.median("docker", way)))
        for way, label in run_labels(result).items()
    ]  # fmt: skip
    header = ["engine API call", "Docker ms", "per run", "Podman ms", "per run"]
    tables = {
        "podman": docs_table.markdown_table(
            ["run", "Docker median s", "p95 s", "Podman median s", "p95 s", "Podman / Docker"],
            runs,
            align="lrrrrr",
        ),
        "podman-calls": docs_table.markdown_table(header, result.call_rows(), align="lrrrr"),
        "podman-first-calls": docs_table.markdown_table(
            header, result.call_rows("first"), align="lrrrr"
        ),
    }
    docs_table.write_sections(
        {name: docs_table.section(table, where, again) for name, table in tables.items()}
    )


if __name__ == "__main__":
    main()
