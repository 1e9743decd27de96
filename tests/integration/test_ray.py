"""The Ray backend on a local cluster of two nodes, every one bound to 127.0.0.1.

Both nodes drive the suite's engine (``DOCKER_HOST``, inherited by the Ray
workers): on one machine they share it, as they would share nothing on real
machines; each node still runs no more sandboxes than its CPUs and memory hold.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.backends.ray.local import local_cluster
from runner.backends.ray.node import LABEL_RUN
from runner.backends.ray.placement import LOCAL_RAY_ENVIRONMENT as RAY_ENVIRONMENT
from runner.backends.ray.placement import LOOPBACK
from runner.sandbox.cleanup import cleanup
from runner.sandbox.engine import DockerEngine
from tests.conftest import TEST_ENGINE, our_containers, our_volumes
from tests.integration.conftest import RUNTIME, interruptible_cli, run_once
from tests.integration.test_lifecycle import wait_until_none_left

# Before Ray is imported: no usage statistics, and Ray's own addresses stay on the loopback.
os.environ.update(RAY_ENVIRONMENT)

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.skipif(
    RUNTIME != "runc" or TEST_ENGINE not in ("local", "dind"),
    reason="a Ray task runs the DockerBackend path, which the suite's runs under runsc and "
    "against Podman cover; the cluster is tested on Docker and Docker-in-Docker, under runc",
)

#: Two CPUs and 8 GiB a node: two sandboxes of 1 CPU and 1 GiB at once each.
NODE = {
    "num_cpus": 2,
    "memory": 8 * 1024**3,
    "object_store_memory": 150 * 1024**2,
    "node_ip_address": LOOPBACK,
}
# The wait is a `sleep` process: what `docker top` shows of a script under way, cold or warm.
SLEEPER = """\
import json, subprocess, sys, time
start = time.time()
subprocess.run(["sleep", sys.argv[1] if len(sys.argv) > 1 else "1.5"], check=True)
print(json.dumps({"success": True, "metrics": {"start": start, "end": time.time()}}))
"""


@pytest.fixture(scope="module")
def cluster(engine: DockerEngine) -> Iterator[Cluster]:
    """A head and one more node on 127.0.0.1, started after the engine (workers inherit it)."""
    with local_cluster(2, **NODE) as cluster:
        yield cluster


@pytest.fixture
def ray_runner(cluster: Cluster) -> ExperimentRunner:
    return ExperimentRunner(timeout=60, cpu_limit=1.0, memory_limit="1g", cluster=cluster.address)


@pytest.fixture
def sleepers(write_script: Callable[..., Path]) -> Callable[[int], list[Any]]:
    def make(count: int) -> list[Any]:
        script = write_script(SLEEPER, "sleeper.py")
        return [
            (script, ExperimentSpec(experiment_name=f"job{i}", model_type="script"), i)
            for i in range(count)
        ]

    return make


def alive_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that overlap at one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_batch_spreads_over_both_nodes_within_each_nodes_capacity(
    ray_runner: ExperimentRunner, sleepers: Callable[[int], list[Any]]
) -> None:
    """Eight jobs on two nodes of two sandboxes: all succeed, both nodes run, two at most each."""
    assert ray_runner.default_workers() == 4
    jobs = sleepers(8)
    results = ray_runner.run_many(jobs, max_workers=8)  # more than fit: Ray queues the rest
    assert [r.experiment_name for r in results] == [f"job{i}" for i in range(8)]
    assert all(r.success for r in results), [r.error_message for r in results]
    assert {r.node for r in results} == alive_nodes()
    assert all(r.image_id and r.image_id.startswith("sha256:") for r in results)
    for node in alive_nodes():
        spans = [(r.metrics["start"], r.metrics["end"]) for r in results if r.node == node]
        assert most_at_once(spans) <= 2
    everywhere = [(r.metrics["start"], r.metrics["end"]) for r in results]
    assert most_at_once(everywhere) >= 3  # both nodes at work at once


def test_warm_pools_live_on_each_node_and_go_with_the_runner(
    cluster: Cluster, engine: DockerEngine, sleepers: Callable[[int], list[Any]]
) -> None:
    """warm_pool=2: each node keeps its own; runs take their slots there, within capacity."""
    jobs = [(*job, ["0.5"]) for job in sleepers(8)]
    root = jobs[0][0].parent.parent
    with ExperimentRunner(timeout=60, cpu_limit=1.0, memory_limit="1g", cluster=cluster.address,
                          warm_pool=2, pool_root=root) as runner:  # fmt: skip
        assert runner.warm_pool_size == 2
        assert runner.wait_for_warm(120)
        # Started slots (each volume's filling helper is never started).
        slots = [c for c in our_containers(engine) if c.status.startswith("Up")]
        assert len(slots) == 2 * len(alive_nodes())
        results = runner.run_many(jobs)
        assert all(r.success for r in results), [r.error_message for r in results]
        warm = [r for r in results if r.warm_start]
        assert len(warm) >= 4  # at least the slots that were ready
        assert {r.node for r in warm} == alive_nodes()
        for node in alive_nodes():
            spans = [(r.metrics["start"], r.metrics["end"]) for r in results if r.node == node]
            assert most_at_once(spans) <= 2
    # Closing the runner ends each node's pool: no slot is left on any engine.
    assert our_containers(engine) == []
    assert our_volumes(engine) == []


def test_files_and_inputs_travel_through_the_object_store(
    ray_runner: ExperimentRunner, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """The script's directory and a private input (mode 0700) reach the sandbox; outputs return."""
    data = tmp_path / "private" / "data.txt"
    data.parent.mkdir(mode=0o700)
    data.write_text("41")
    script = write_script(
        f"""\
        import json, os
        value = int(open({str(data)!r}).read()) + int(open("side.txt").read())
        open(os.path.join(os.environ["OUTPUT_DIR"], "answer.txt"), "w").write(str(value))
        print(json.dumps({{"success": True, "metrics": {{"value": value}}}}))
        """
    )
    (script.parent / "side.txt").write_text("1")
    outputs = tmp_path / "out"
    result = ray_runner.run(script, ExperimentSpec(experiment_name="io", model_type="s"), 0,
                            inputs=[data], outputs_dir=outputs)  # fmt: skip
    assert result.success, result.error_message
    assert result.metrics == {"value": 42.0}
    assert [a.name for a in result.artifacts] == ["answer.txt"]
    assert (outputs / "answer.txt").read_text() == "42"
    assert result.node in alive_nodes()


def test_a_missing_image_names_the_nodes(cluster: Cluster, workdir: Path) -> None:
    """An image no node has stops the run before any task, naming each node; a node builds
    only the runner's own image, even when asked to build what is missing."""
    script = workdir / "x.py"
    script.write_text("print(1)\n")
    for build_missing in (False, True):
        runner = ExperimentRunner(image="experiment-runner/absent:0", cluster=cluster.address,
                                  build_missing=build_missing)  # fmt: skip
        with pytest.raises(ExperimentExecutionError) as info:
            runner.run(script, ExperimentSpec(experiment_name="x", model_type="s"), 0)
        assert str(info.value).count("node ") == len(alive_nodes())
        assert "runner image build" in str(info.value)
        said = "builds only the runner's own image" if build_missing else "--build-missing"
        assert said in str(info.value)


@run_once
def test_a_node_lacking_the_image_builds_it_when_asked(
    cluster: Cluster, engine: DockerEngine, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_missing: the runner's own image, missing on the nodes, is built there, then runs."""
    tag = "experiment-runner-test/node-build:1"
    monkeypatch.setenv("RUNNER_IMAGE", tag)  # the runner's own image, under a tag of the test
    script = workdir / "x.py"
    script.write_text("print('{\"success\": true}')\n")
    assert not engine.image_exists(tag)
    try:
        runner = ExperimentRunner(timeout=60, cluster=cluster.address, build_missing=True)
        result = runner.run(script, ExperimentSpec(experiment_name="x", model_type="s"), 0)
        assert result.success, result.error_message
        assert result.image_id == engine.image_id(tag)
    finally:
        if engine.image_exists(tag):
            engine.remove_image(tag)


@pytest.mark.parametrize("warm_pool", [0, 1], ids=["cold", "warm"])
def test_a_node_killed_mid_batch_has_its_jobs_run_once_elsewhere(
    cluster: Cluster,
    engine: DockerEngine,
    sleepers: Callable[[int], list[Any]],
    tmp_path: Path,
    warm_pool: int,
) -> None:
    """Jobs of a node that dies run again on the others; each result is recorded once."""
    doomed = cluster.add_node(**NODE)
    raylet = doomed.all_processes["raylet"][0].process.pid
    history = tmp_path / "results.jsonl"
    jobs = [(*job, ["4"]) for job in sleepers(6)]
    found: list[list[Any]] = []
    # The runner (with it, each node's pool) ends whatever happens: a pool books its node.
    with ExperimentRunner(timeout=60, cpu_limit=1.0, memory_limit="1g",
                          cluster=cluster.address, history=history, warm_pool=warm_pool,
                          pool_root=jobs[0][0].parent.parent) as runner:  # fmt: skip
        if warm_pool:
            assert runner.wait_for_warm(120)
        batch = threading.Thread(
            target=lambda: found.append(runner.run_many(jobs, max_workers=6)), daemon=True
        )
        batch.start()
        on_doomed: list[str] = []
        deadline = time.monotonic() + 60
        while not on_doomed and time.monotonic() < deadline:
            time.sleep(0.2)
            on_doomed = [c.id for c in _running(engine) if _owner_parent(c) == raylet]
        assert on_doomed, "no sandbox started on the third node"
        workers = _doomed_workers(raylet)
        cluster.remove_node(doomed)
        batch.join(120)
        assert not batch.is_alive()
    results = found[0]
    assert all(r.success for r in results), [r.error_message for r in results]
    assert doomed.unique_id not in {r.node for r in results}
    recorded = [json.loads(line)["experiment_name"] for line in history.read_text().splitlines()]
    assert sorted(recorded) == [f"job{i}" for i in range(6)]
    # A dead node's workers may still make a container as they go down (here the nodes
    # share one engine): once they are gone it is abandoned, and cleanup takes it.
    _wait_gone(workers, timeout=60)
    cleanup(engine)
    # A live worker's last removals may still be under way in its background.
    wait_until_none_left(engine)


def _make_a_container_and_return() -> str:
    """In a Ray worker: make and start a container of this process's, return its ID, and
    leave its removal to later (a run's removal still under way in the background)."""
    from runner.core.settings import ExperimentDefaults
    from runner.sandbox.cleanup import build_labels, deadline_after

    engine = DockerEngine()
    image = engine.image_id(ExperimentDefaults().image)
    labels = build_labels(deadline_after(600))
    container = engine.create(image, ["sleep", "600"], labels=labels, network_mode="none")
    engine.start(container)
    return container


def test_a_worker_that_exits_with_a_removal_under_way_leaves_no_container(
    cluster: Cluster, engine: DockerEngine
) -> None:
    """A Ray worker that exits (here: after its one call) kills its child processes first:
    the lifeline helper is not one of them, so what the worker left goes all the same, with
    no sweep (the container's deadline is ten minutes away)."""
    task = ray.remote(num_cpus=0, max_calls=1)(_make_a_container_and_return)
    container = ray.get(task.remote(), timeout=120)
    assert container in [c.id for c in our_containers(engine)]
    deadline = time.monotonic() + 60
    while container in [c.id for c in our_containers(engine)]:
        assert time.monotonic() < deadline, "the worker's container outlived it"
        time.sleep(0.2)


def _running_script(container: Any) -> bool:
    """Whether the container runs a script's ``sleep`` (SLEEPER's), cold or warm.

    Read from this machine's /proc (the engines of the suite, Docker-in-Docker
    too, run their containers on this kernel): a ``sleep`` process in the
    container's cgroup. ``docker top`` would need ``ps`` on the engine's machine.
    """
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes().startswith(b"sleep\0") and (
                container.id in (proc / "cgroup").read_text()
            ):
                return True
        except OSError:
            continue
    return False


def _doomed_workers(raylet: int) -> list[int]:
    """The worker processes the raylet started (they outlive it for a moment)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == raylet:
                found.append(int(stat.parent.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)


def _owner_parent(container: Any) -> int:
    """The parent PID of the process that made the container (its owner label)."""
    pid = container.labels["io.experiment-runner.owner"].split(":")[1]
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


@pytest.mark.parametrize("warm", [[], ["--warm", "1"]], ids=["cold", "warm"])
def test_ctrl_c_on_runner_batch_removes_every_sandbox(
    cluster: Cluster, engine: DockerEngine, write_script: Callable[..., Path], warm: list[str]
) -> None:
    """SIGINT to `runner batch --ray` cancels its runs and removes their containers (and the
    nodes' warm pools): exit 130."""
    scripts = [write_script(SLEEPER.replace("1.5", "60"), f"long{i}.py") for i in range(3)]
    command = interruptible_cli("batch", *map(str, scripts), "--ray", cluster.address,
                                "--cpus", "1", "--memory", "1g", "--no-record", *warm)  # fmt: skip
    caller = subprocess.Popen(command, env={**os.environ, **RAY_ENVIRONMENT},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        # At least two running (on a busy machine a third may still be on its way).
        deadline = time.monotonic() + 90
        while len(_running(engine)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(_running(engine)) < 2:
            caller.kill()
            out, err = caller.communicate()
            raise AssertionError(
                f"fewer than two scripts running after 90 s; the batch said:\n"
                f"{out.decode(errors='replace')[-3000:]}\n{err.decode(errors='replace')[-3000:]}"
            )
        caller.send_signal(signal.SIGINT)
        _, err = caller.communicate(timeout=60)
    finally:
        caller.kill()
    assert caller.returncode == 130, err.decode()
    assert our_containers(engine) == []
    assert our_volumes(engine) == []


def _running(engine: DockerEngine) -> list[Any]:
    """The project's containers running a script (a warm slot carries no run's label)."""
    return [c for c in our_containers(engine) if LABEL_RUN in c.labels or _running_script(c)]


def test_runner_batch_json_prints_one_result_a_line_with_its_node(
    cluster: Cluster, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """`runner batch a.py b.py --ray ADDRESS --json` prints each result on a line with `node`."""
    good = write_script(SLEEPER.replace("1.5", "0"), "a.py")
    bad = write_script("raise SystemExit('no data')\n", "b.py")
    junit = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "batch", str(good), str(bad), "--ray", "auto",
         "--json", "--junit", str(junit), "--no-record"],
        env={**os.environ, **RAY_ENVIRONMENT, "RAY_ADDRESS": cluster.address},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["experiment_name"] for line in lines) == ["a", "b"]
    assert all(line["node"] in alive_nodes() for line in lines)
    assert {line["experiment_name"]: line["success"] for line in lines} == {"a": True, "b": False}
    report = junit.read_text()
    assert report.count("<testcase ") == 2 and report.count("<failure ") == 1
    assert "no data" in report


def test_every_ray_process_listens_on_the_loopback_only(
    ray_runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """After a run, no socket of the cluster, its workers or this driver listens elsewhere."""
    script = write_script(SLEEPER.replace("1.5", "0"))
    assert ray_runner.run(script, ExperimentSpec(experiment_name="l", model_type="s"), 0).success
    ray_pids = {os.getpid()} | {
        int(proc.name)
        for proc in Path("/proc").iterdir()
        if proc.name.isdigit() and _mentions_ray(proc)
    }
    listening = _listening_inodes()
    found = {}
    for pid in ray_pids:
        for fd in _fds(pid):
            inode = fd.removeprefix("socket:[").removesuffix("]")
            if inode in listening:
                found[inode] = (pid, listening[inode])
    assert found, "no Ray listener found: the check would prove nothing"
    elsewhere = {k: v for k, v in found.items() if v[1] not in ("127.0.0.1", "::ffff:127.0.0.1")}
    assert elsewhere == {}


def _mentions_ray(proc: Path) -> bool:
    try:
        command = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return any(word in command for word in (b"ray", b"gcs_server", b"raylet"))


def _fds(pid: int) -> list[str]:
    try:
        return [str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return []


def _listening_inodes() -> dict[str, str]:
    """Inode of each listening TCP socket on the machine, and its local address."""
    found = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address = bytes.fromhex(fields[1].split(":")[0])
            if width == 4:
                host = ".".join(str(b) for b in reversed(address))
            else:
                words = [address[i : i + 4][::-1] for i in range(0, 16, 4)]
                host = ipaddress.IPv6Address(b"".join(words)).compressed
                mapped = ipaddress.IPv6Address(b"".join(words)).ipv4_mapped
                host = f"::ffff:{mapped}" if mapped is not None else host
            found[fields[9]] = host
    return found
