"""The Ray backend's parts that need neither Ray's cluster nor Docker: the node's side of a
task on a fake engine, capacity from Ray's node table, packing, outputs coming back."""

import io
import os
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.backends.base import PoolSpec
from runner.backends.local import DockerBackend
from runner.backends.ray.backend import RayBackend, _with_artifacts, fingerprint
from runner.backends.ray.node import LABEL_RUN, NodeJob, NodePool, run_job
from runner.backends.ray.placement import Leases, cluster_capacity
from runner.sandbox.artifacts import ARTIFACTS_MARKER, OutputLimits, Outputs
from runner.sandbox.engine import ContainerInfo
from runner.sandbox.files.transfer import pack, reroot
from runner.sandbox.files.tree import TreeRefused
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.request import RunRequest
from tests.unit.fakes import FakeEngine, file_mounts

POLICY = SandboxPolicy(image="img", cpu_limit=1.0, memory_limit="1g")
LIMITS = OutputLimits(max_bytes=1 << 20, max_files=10, max_file_size=1 << 20)


def job_for(script: Path, *, run_id: str = "run1", outputs: OutputLimits | None = None) -> NodeJob:
    return NodeJob(
        run_id=run_id,
        policy=POLICY,
        python_executable="python",
        script=script,
        mounts=(script.parent,),
        timeout=5,
        output_limit=1000,
        args=("--seed", "1"),
        outputs=outputs,
    )


def node_backend(engine: FakeEngine, transfer: str = "copy") -> DockerBackend:
    return DockerBackend(POLICY, engine=engine, transfer=transfer, node="node-a")  # type: ignore[arg-type]


def test_a_task_copies_its_packed_files_into_a_volume_and_labels_its_run(script: Path) -> None:
    """On the node, the caller's archive goes into a volume; no path of the caller is bound."""
    engine = FakeEngine()
    packed = pack([script.parent])
    outcome = run_job(job_for(script), [packed], node_backend(engine))
    assert outcome.node == "node-a" and outcome.error is None
    assert outcome.execution is not None and outcome.execution.exit_code == 0
    assert packed in engine.archives.values()
    sandbox = engine.created[-1]
    (volume,) = engine.volumes_made
    assert [(m["Source"], m["Target"]) for m in file_mounts(sandbox)] == [
        (volume.mountpoint + str(script.parent), str(script.parent))
    ]
    assert sandbox["labels"][LABEL_RUN] == "run1"
    assert volume.labels[LABEL_RUN] == "run1"
    assert sandbox["command"][-3:] == [str(script), "--seed", "1"]


def test_a_node_whose_engine_sees_its_files_unpacks_and_binds_them(
    script: Path, tmp_path: Path
) -> None:
    """No volume: the archive is unpacked in a private directory, bound read-only, removed."""
    engine = FakeEngine()
    outcome = run_job(job_for(script), [pack([script.parent])], node_backend(engine, "auto"))
    assert outcome.error is None and outcome.execution is not None
    assert engine.volumes_made == [] and engine.archives == {}
    ((source, target, read_only),) = [
        (m["Source"], m["Target"], m["ReadOnly"]) for m in file_mounts(engine.created[-1])
    ]
    assert (target, read_only) == (str(script.parent), True)
    base = Path(source.removesuffix(str(script.parent)))
    assert base.name.startswith("runner-unpacked-")
    assert not base.exists()  # removed with the sandbox


def test_a_link_out_of_the_unpacked_directory_goes_through_the_engine(script: Path) -> None:
    """A symlink to an absolute path is refused by the unpacking filter: copied instead."""
    (script.parent / "passwd").symlink_to("/etc/passwd")
    engine = FakeEngine()
    outcome = run_job(job_for(script), [pack([script.parent])], node_backend(engine, "auto"))
    assert outcome.error is None
    (volume,) = engine.volumes_made
    assert [m["Source"] for m in file_mounts(engine.created[-1])] == [
        volume.mountpoint + str(script.parent)
    ]


def test_a_retried_task_first_removes_what_its_dead_attempt_left(script: Path) -> None:
    """A sandbox of the same run (its first node died) goes; others' sandboxes stay."""
    left = ContainerInfo("old", "old", "running", {LABEL_RUN: "run1"})
    other = ContainerInfo("other", "other", "running", {LABEL_RUN: "run2"})
    engine = FakeEngine(listed=[left, other])
    run_job(job_for(script), [pack([script.parent])], node_backend(engine))
    assert "old" in engine.removed and "other" not in engine.removed


def test_what_the_node_cannot_run_comes_back_as_its_error(script: Path) -> None:
    """A caller's error on the node (here: a refused runtime) is the outcome's, with its hint."""
    engine = FakeEngine()
    backend = DockerBackend(
        SandboxPolicy(image="img", runtime="kata"), engine=engine, transfer="copy", node="n"
    )
    outcome = run_job(job_for(script), [pack([script.parent])], backend)
    assert outcome.execution is None
    assert outcome.error is not None and "'kata' is not registered" in outcome.error
    assert outcome.hint is not None and "Hint:" not in outcome.error


def test_outputs_collected_on_the_node_come_back_as_an_archive(script: Path) -> None:
    """With outputs on, the node sends back the files it collected, packed."""
    engine = FakeEngine(stdout=b'{"success": true}\n' + ARTIFACTS_MARKER + _tar({"p.png": b"png"}))
    outcome = run_job(
        job_for(script, outputs=LIMITS), [pack([script.parent])], node_backend(engine)
    )
    assert outcome.artifacts is not None
    got = Outputs(script.parent.parent / "back", LIMITS)
    assert outcome.execution is not None
    back = _with_artifacts(outcome.execution, outcome.artifacts, got)
    assert [a.name for a in back.artifacts] == ["p.png"]
    assert (got.destination / "p.png").read_bytes() == b"png"


def test_returned_outputs_are_checked_again_where_they_land(tmp_path: Path) -> None:
    """The caller writes the node's files under its outputs directory, refusing bad names."""
    execution = Execution(exit_code=0, execution_time=1.0, image_id="sha256:x", node="n")
    outputs = Outputs(tmp_path / "out", LIMITS)
    got = _with_artifacts(execution, _tar({"a/b.txt": b"hi", "../escape": b"no"}), outputs)
    assert [a.name for a in got.artifacts] == ["a/b.txt"]
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"hi"
    assert not (tmp_path / "escape").exists()
    assert got.artifacts_message is not None and "'../escape'" in got.artifacts_message


def test_capacity_per_node_is_what_its_cpus_and_memory_hold() -> None:
    """Sandboxes per alive node = min(CPU / cpu_limit, memory / memory_limit); too small: 0."""
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "memory": 16 * 2**30}},
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 8.0, "memory": 3 * 2**30}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 0.5, "memory": 16 * 2**30}},
        {"NodeID": "d", "Alive": False, "Resources": {"CPU": 64.0, "memory": 64 * 2**30}},
    ]
    found = {n.node_id: n.sandboxes for n in cluster_capacity(nodes, POLICY)}
    assert found == {"a": 4, "b": 3, "c": 0}
    half = SandboxPolicy(image="img", cpu_limit=0.5, memory_limit="512m")
    assert {n.node_id: n.sandboxes for n in cluster_capacity(nodes, half)}["c"] == 1


def test_a_fingerprint_changes_with_any_file_below(tmp_path: Path) -> None:
    """An input is put in the object store again only when something below it changed."""
    (tmp_path / "sub").mkdir()
    data = tmp_path / "sub" / "data.csv"
    data.write_text("1")
    before = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == before
    data.write_text("22")
    assert fingerprint(tmp_path) != before
    changed = fingerprint(tmp_path)
    os.utime(data, ns=(0, 0))
    assert fingerprint(tmp_path) != changed


def test_pack_refuses_what_a_copy_refuses(tmp_path: Path) -> None:
    """A FIFO in the script's directory stops the run on the caller's side, with a hint."""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ExperimentExecutionError, match="cannot be copied"):
        pack([tmp_path])


def test_live_output_is_refused_on_a_cluster(script: Path) -> None:
    """on_output cannot be served from a node: a clear error before Ray is touched."""
    backend = RayBackend(POLICY, address="127.0.0.1:1")
    request = RunRequest(script, (script.parent,), 5, 1000)
    with pytest.raises(ExperimentExecutionError, match="on_output"):
        backend.execute(request, lambda stream, line: None, object())


def test_a_cluster_runner_refuses_a_local_engine_and_keeps_warm_pools_per_node(
    tmp_path: Path,
) -> None:
    """engine= is this machine's; warm_pool=N asks each node for N (started on connecting)."""
    with pytest.raises(ValueError, match="own engine"):
        ExperimentRunner(cluster="auto", engine=FakeEngine())
    runner = ExperimentRunner(cluster="auto")
    assert isinstance(runner.backend, RayBackend) and runner.cluster == "auto"
    assert runner.warm_pool_size == 0
    warm = ExperimentRunner(cluster="auto", warm_pool=3, pool_root=tmp_path, preload=["json"])
    assert warm.warm_pool_size == 3
    assert (warm.pool_root, warm.preload) == (tmp_path.resolve(), ("json",))


def test_the_cluster_comes_from_runner_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNNER_CLUSTER picks the cluster; an explicit empty one means this machine."""
    monkeypatch.setenv("RUNNER_CLUSTER", "10.0.0.1:6379")
    assert isinstance(ExperimentRunner().backend, RayBackend)
    assert isinstance(ExperimentRunner(cluster="", engine=FakeEngine()).backend, DockerBackend)


def test_a_local_result_names_this_host_as_its_node(script: Path) -> None:
    """result.node is set for runs on this machine too: its host name."""
    result = ExperimentRunner(timeout=5, engine=FakeEngine()).run(
        script, ExperimentSpec(experiment_name="n", model_type="s"), 0
    )
    assert result.node == socket.gethostname()


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_an_address_where_nothing_listens_fails_fast_with_a_hint(script: Path) -> None:
    """A cluster address nobody answers at is a one-line error within seconds, not a hang."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    runner = ExperimentRunner(cluster=f"127.0.0.1:{port}")
    with pytest.raises(ExperimentExecutionError, match="No Ray cluster answers") as info:
        runner.run(script, ExperimentSpec(experiment_name="x", model_type="s"), 0)
    assert info.value.hint is not None and "ray start" in info.value.hint


def test_a_node_pool_runs_packed_files_in_a_warm_slot_through_its_volume(script: Path) -> None:
    """On a node whose engine is elsewhere, a warm slot takes packed files through its
    volume, placed below its root."""
    engine = FakeEngine(remote=True)
    request = PoolSpec(1, 5, None, script.parent.parent, True, ())
    pool = NodePool(POLICY, "python", "node-a", request, engine)
    assert pool.started() == "node-a"
    assert pool.wait_ready(10)
    outcome = pool.run(job_for(script), pack([script.parent]))
    assert outcome.error is None and outcome.execution is not None
    assert outcome.execution.warm_start
    (archive,) = engine.archives.values()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
    assert names[0] == script.parent.name  # below the pool root, not from /
    assert f"{script.parent.name}/{script.name}" in names
    pool.close()


def test_a_node_pool_unpacks_into_a_slot_directory_where_its_engine_sees_it(
    script: Path, tmp_path: Path
) -> None:
    """Where the node's engine sees its files, the slot's own directory takes them."""
    seen: list[bytes] = []
    engine = FakeEngine()
    request = PoolSpec(1, 5, None, script.parent.parent, True, ())
    pool = NodePool(POLICY, "python", "node-a", request, engine)
    assert pool.wait_ready(10)
    slot = engine.created[-1]
    (source,) = [m["Source"] for m in slot["mounts"] if m["Target"] == str(script.parent.parent)]
    engine.on_wait = lambda: seen.append(
        (Path(source) / script.parent.name / script.name).read_bytes()
    )
    outcome = pool.run(job_for(script), pack([script.parent]))
    assert outcome.error is None and outcome.execution is not None and outcome.execution.warm_start
    assert seen == [script.read_bytes()]  # there while the script ran
    assert engine.archives == {}
    pool.close()


def test_an_aborted_run_on_a_node_pool_never_starts(script: Path) -> None:
    """A run the caller cancelled before it reached the node's pool is not run there."""
    request = PoolSpec(1, 5, None, script.parent.parent, True, ())
    pool = NodePool(POLICY, "python", "node-a", request, FakeEngine())
    pool.abort(["run1"])
    outcome = pool.run(job_for(script), pack([script.parent]))
    assert outcome.execution is None and outcome.error == "The run was cancelled."
    pool.close()


def test_leases_take_the_freest_node_wait_when_full_and_lose_dead_nodes() -> None:
    """No node runs more than it booked; a run waits for a free sandbox; a dead node's go."""
    leases = Leases({"a": 2, "b": 1})
    taken = [leases.take(), leases.take(), leases.take()]
    assert sorted(taken) == ["a", "a", "b"]
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(leases.take()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # every sandbox is busy: it waits
    leases.give_back("b")
    waiter.join(5)
    assert got == ["b"]
    leases.lose("a")
    leases.give_back("a")  # a run of the dead node ending gives nothing back
    leases.give_back("b")
    assert leases.take() == "b"
    leases.lose("b")
    with pytest.raises(ExperimentExecutionError, match="No node"):
        leases.take()


def test_reroot_places_packed_files_below_a_root_and_refuses_others(tmp_path: Path) -> None:
    """A pack from / becomes one from the slot's root; an entry outside it is refused."""
    inner = tmp_path / "root" / "exp"
    inner.mkdir(parents=True)
    (inner / "s.py").write_text("print(1)\n")
    with tarfile.open(fileobj=io.BytesIO(reroot(pack([inner]), tmp_path / "root"))) as tar:
        assert tar.getnames() == ["exp", "exp/s.py"]
        member = tar.extractfile("exp/s.py")
        assert member is not None and member.read() == b"print(1)\n"
    with pytest.raises(TreeRefused, match="outside"):
        reroot(pack([inner]), tmp_path / "elsewhere")
