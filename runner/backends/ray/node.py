"""What runs on a Ray node: the node's own local backend, its warm pool actor, the
sweeps that remove a run's containers there, and building the image there.

Everything here runs in Ray worker processes on the node, never in the caller's
process; the caller's side is ``runner.backends.ray.backend``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runner.backends.base import PoolSpec
from runner.backends.local import DockerBackend
from runner.backends.ray.placement import import_ray
from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.artifacts import OutputLimits, Outputs
from runner.sandbox.engine import DockerEngine, Engine
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.request import RunRequest

#: Each run's container and volumes carry this label, valued with the run's ID.
LABEL_RUN = "io.experiment-runner.ray-run"


@dataclass(frozen=True)
class NodeJob:
    """What a task takes to its node (the files travel beside it, packed)."""

    run_id: str
    policy: SandboxPolicy
    python_executable: str
    script: Path
    mounts: tuple[Path, ...]
    timeout: float
    output_limit: int
    args: tuple[str, ...]
    outputs: OutputLimits | None
    #: The run's own variables (``RunRequest.environment``).
    environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NodeOutcome:
    """What came back from a node: the run, or why it could not run there."""

    node: str
    execution: Execution | None = None
    #: With outputs on, the files the node collected, as a tar archive.
    artifacts: bytes | None = None
    error: str | None = None
    hint: str | None = None


# A Ray worker process runs task after task: its backend (the engine's connection, the
# checks of ``prepare``) is made once, not once per run.
@functools.lru_cache(maxsize=8)
def node_backend(policy: SandboxPolicy, python_executable: str, node: str) -> DockerBackend:
    """The node's backend, made once per Ray worker process (workers run task after task).

    Its engine is the node's own (``DOCKER_HOST`` as the node has it); files
    always arrive packed: unpacked on the node and bound where its engine sees
    the node's files, else copied into a volume there.
    """
    return DockerBackend(policy, python_executable=python_executable, transfer="auto", node=node)


def run_on_node(job: NodeJob, *packed: bytes) -> NodeOutcome:
    """A Ray task: run ``job`` in a fresh sandbox on this node's engine."""
    node = import_ray().get_runtime_context().get_node_id()
    backend = node_backend(job.policy, job.python_executable, node)
    _to_the_end(backend.prepare)
    return run_job(job, packed, backend)


def _to_the_end(work: Callable[[], object]) -> None:
    """Do ``work`` in a thread of its own, to its end even if the task is cancelled.

    Cancelling a task raises KeyboardInterrupt in its thread wherever it is; the
    backend's preparation makes helper containers that carry no run's label (the
    sweep would miss one made and not yet removed). The interrupt lands in the
    wait here instead, and the thread finishes and removes them.
    """
    # Leaving the block waits for the thread, interrupted or not.
    with ThreadPoolExecutor(1, thread_name_prefix="runner-prepare") as pool:
        pool.submit(work).result()


class NodePool:
    """A Ray actor on one node: that node's warm pool, and the runs that use it.

    ``RayBackend`` makes one per node (pinned there) when asked for warm pools.
    """

    def __init__(
        self,
        policy: SandboxPolicy,
        python_executable: str,
        node: str,
        pool: PoolSpec,
        engine: Engine | None = None,
    ) -> None:
        """``pool``: this node's (its size at most what the node holds at once)."""
        self.backend = DockerBackend(
            policy, engine=engine, python_executable=python_executable, transfer="auto", node=node
        )
        self.backend.start_pool(pool)
        self._tokens: dict[str, object] = {}
        self._aborted: set[str] = set()
        self._lock = threading.Lock()

    def started(self) -> str:
        """The node's ID, once the pool is starting (its errors raise here)."""
        return self.backend.node

    def wait_ready(self, timeout: float) -> bool:
        pool = self.backend.pool
        return pool is not None and pool.wait_ready(timeout)

    def run(self, job: NodeJob, *packed: bytes) -> NodeOutcome:
        """Run ``job`` in a warm slot of this node (or a cold sandbox, if none fits)."""
        token = object()
        with self._lock:
            if job.run_id in self._aborted:
                return NodeOutcome(node=self.backend.node, error="The run was cancelled.")
            self._tokens[job.run_id] = token
        try:
            return run_job(job, packed, self.backend, token)
        finally:
            with self._lock:
                self._tokens.pop(job.run_id, None)

    def abort(self, run_ids: Sequence[str]) -> None:
        """Remove the runs' containers (the ones not started never start)."""
        with self._lock:
            self._aborted.update(run_ids)
            tokens = [self._tokens[r] for r in run_ids if r in self._tokens]
        self.backend.abort(tokens)
        sweep(self.backend.engine, run_ids)

    def close(self) -> None:
        self.backend.close()


def run_job(
    job: NodeJob, packed: Sequence[bytes], backend: DockerBackend, token: object | None = None
) -> NodeOutcome:
    """Run ``job`` through ``backend`` with its packed files; what goes back to the caller."""
    try:
        # An earlier attempt of this run (its node's task died) may have left its sandbox.
        sweep(backend.engine, [job.run_id])
        with tempfile.TemporaryDirectory(prefix="runner-outputs-") as tmp:
            outputs = (
                Outputs(Path(tmp), job.outputs, links=job.script.parent)
                if job.outputs is not None
                else None
            )
            request = RunRequest(
                script=job.script,
                mounts=job.mounts,
                timeout=job.timeout,
                output_limit=job.output_limit,
                args=job.args,
                outputs=outputs,
                packed=tuple(packed),
                labels=((LABEL_RUN, job.run_id),),
                environment=job.environment,
            )
            execution = backend.execute(request, None, token or object())
            artifacts = _repack(Path(tmp), execution) if outputs is not None else None
    except ExperimentExecutionError as e:
        message = str(e).removesuffix(f" Hint: {e.hint}") if e.hint else str(e)
        return NodeOutcome(node=backend.node, error=message, hint=e.hint)
    return NodeOutcome(
        node=backend.node,
        execution=execution.model_copy(update={"artifacts": ()}),
        artifacts=artifacts,
    )


def _repack(directory: Path, execution: Execution) -> bytes:
    """The files the node collected (already checked there), as a tar for the caller."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for artifact in execution.artifacts:
            tar.add(directory / artifact.name, arcname=artifact.name, recursive=False)
    return out.getvalue()


def check_node(image: str) -> tuple[str | None, str]:
    """A Ray task: None when this node's engine has ``image``, else what is wrong; and
    the engine's ID (nodes on one machine may share an engine)."""
    engine = DockerEngine()
    try:
        engine_id = str(engine.info().get("ID") or "")
    except ExperimentExecutionError as e:
        return str(e), ""
    try:
        engine.image_id(image)
    except ExperimentExecutionError as e:
        return str(e), engine_id
    return None, engine_id


def build_node(image: str) -> str | None:
    """A Ray task: build ``image`` from the runner's own definition on this node's engine
    (as ``runner image build`` does); None when it is there, else what went wrong."""
    from runner.image.build import build_image

    try:
        build_image(DockerEngine(), tag=image, log=lambda message: None)
    except (ExperimentExecutionError, OSError, ValueError) as e:
        return f"building it failed: {e}"
    return None


def sweep_node(run_ids: Sequence[str]) -> int:
    """A Ray task: remove the containers and volumes of ``run_ids`` on this node's engine."""
    return sweep(DockerEngine(), run_ids)


def sweep(engine: Engine, run_ids: Iterable[str]) -> int:
    """Remove what carries ``LABEL_RUN`` with one of ``run_ids``: containers, then volumes."""
    removed = 0
    for run_id in run_ids:
        for container in engine.containers(f"{LABEL_RUN}={run_id}"):
            engine.remove(container.id)
            removed += 1
        for volume in engine.volumes(f"{LABEL_RUN}={run_id}"):
            # One a container elsewhere still mounts is refused; the project's cleanup takes it.
            with contextlib.suppress(ExperimentExecutionError):
                engine.remove_volume(volume.name)
    return removed
