"""``ExperimentRunner``: one script, one fresh hardened container, one typed result."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.bootstrap import DEFAULT_PRELOAD, SOURCE
from runner.cleanup import cleanup
from runner.engine import DockerEngine, SandboxStartError
from runner.exceptions import ExperimentExecutionError
from runner.history import ResultsHistory
from runner.identity import lease_uid
from runner.models import ExperimentResult, ExperimentSpec
from runner.output import CapturedOutput, OutputCallback, OutputCollector
from runner.parsing import Ending, interpret, printable
from runner.pool import (
    Slot,
    StageExpired,
    StageRefused,
    WarmPool,
    new_slot_dir,
    remainder,
    stage,
)
from runner.sandbox import (
    LABEL_SLOT,
    Run,
    SandboxPolicy,
    build_labels,
    check_readable,
    container_config,
    deadline_after,
    parse_size,
    self_limited,
)
from runner.settings import ExperimentDefaults
from runner.telemetry import CgroupTelemetry, Usage

#: How long output may keep arriving after the container has stopped.
_DRAIN_GRACE = 2.0
#: How long a warm pool container may wait for a script before it ends itself.
POOL_IDLE_MAX = 3600

#: One job of a batch: (script_path, spec, iteration).
Job = tuple[Path | str, ExperimentSpec, int]


class _SlotUnusable(Exception):
    """A pool slot could not take its script; the run goes cold instead."""


class _ActiveRuns:
    """Containers of runs in flight, by token, so a batch or task can be aborted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._containers: dict[object, str] = {}
        self._aborted: set[object] = set()

    def register(self, token: object, container_id: str) -> bool:
        """Record a new container; False when its run was aborted meanwhile."""
        with self._lock:
            if token in self._aborted:
                return False
            self._containers[token] = container_id
            return True

    def release(self, token: object) -> None:
        with self._lock:
            self._containers.pop(token, None)
            self._aborted.discard(token)

    def abort(self, tokens: Iterable[object]) -> list[str]:
        """Mark runs aborted; return the containers they have, to be removed."""
        with self._lock:
            found = []
            for token in tokens:
                self._aborted.add(token)
                if token in self._containers:
                    found.append(self._containers.pop(token))
            return found


@dataclass(frozen=True)
class Execution:
    """A finished container run: how it ended and what it printed."""

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration: float
    image_id: str
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    warm: bool = False
    #: False when the sandbox ended before the script's exit was recorded.
    exit_reported: bool = True


class ExperimentRunner:
    """Runs experiment scripts, each in a fresh container from the pinned image.

    Hardened by default: no network, read-only root filesystem and script
    directory, capped memory (no swap), CPU and PIDs, non-root, no
    capabilities, ``no-new-privileges``, and a deadline that kills.

    With ``warm_pool=N``, N containers with the same controls are started ahead
    with the ``preload`` modules imported; each runs one script from under
    ``pool_root`` (default: the experiments directory) and is destroyed. Close
    the runner (``close()`` or ``with``) to remove the pool.
    """

    def __init__(
        self,
        timeout: int | float | None = None,
        python_executable: str = "python",
        *,
        image: str | None = None,
        memory_limit: str | None = None,
        cpu_limit: float | None = None,
        pids_limit: int | None = None,
        runtime: str | None = None,
        inputs: Iterable[str | Path] = (),
        output_limit: int | None = None,
        tmpfs_size: str | None = None,
        history: ResultsHistory | Path | str | None = None,
        warm_pool: int = 0,
        preload: Sequence[str] | None = None,
        pool_root: Path | str | None = None,
        settings: ExperimentDefaults | None = None,
        engine: DockerEngine | None = None,
    ) -> None:
        defaults = settings or ExperimentDefaults()
        self.timeout: float = timeout if timeout is not None else defaults.experiment_timeout
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.python_executable = python_executable
        self.policy = SandboxPolicy(
            image=image or defaults.image,
            memory_limit=memory_limit or defaults.memory_limit,
            cpu_limit=cpu_limit if cpu_limit is not None else defaults.cpu_limit,
            pids_limit=pids_limit if pids_limit is not None else defaults.pids_limit,
            runtime=runtime if runtime is not None else defaults.runtime,
            tmpfs_size=tmpfs_size or defaults.tmpfs_size,
        )
        self.inputs = tuple(Path(p) for p in inputs)
        self.output_limit = output_limit if output_limit is not None else defaults.output_limit
        if self.output_limit <= 0:
            raise ValueError("output_limit must be positive")
        if history is None or isinstance(history, ResultsHistory):
            self.history = history
        else:
            self.history = ResultsHistory(history)
        self._engine = engine
        self._engine_lock = threading.Lock()
        self._engine_ready = False
        self._telemetry = CgroupTelemetry()
        self._telemetry_on = False
        self._user_kernel = False
        self._active = _ActiveRuns()
        self.preload = tuple(DEFAULT_PRELOAD if preload is None else preload)
        self.pool_root = Path(pool_root or defaults.experiments_dir).resolve()
        self._pool_dir = defaults.cache_dir / "pool"
        self._pool: WarmPool | None = None
        if warm_pool < 0:
            raise ValueError("warm_pool must be 0 (off) or a positive number of containers")
        if warm_pool:
            self._start_pool(warm_pool)

    # public API -------------------------------------------------------------

    def run(
        self,
        script_path: Path | str,
        spec: ExperimentSpec,
        iteration: int,
        *,
        inputs: Iterable[str | Path] = (),
        on_output: OutputCallback | None = None,
    ) -> ExperimentResult:
        """Run ``script_path`` in the sandbox and return its typed result.

        What the script does (exit code, timeout, OOM kill, bad JSON) is in the
        result; only what the caller or the machine got wrong raises
        ``ExperimentExecutionError``. ``on_output(stream, line)`` is called, on
        another thread, with each line as the script prints it. With a
        ``history``, the result is also appended to it.
        """
        result = self._run(script_path, spec, iteration, inputs, on_output, token=object())
        if self.history is not None:
            self.history.append(result)
        return result

    def _run(
        self,
        script_path: Path | str,
        spec: ExperimentSpec,
        iteration: int,
        inputs: Iterable[str | Path],
        on_output: OutputCallback | None,
        token: object,
    ) -> ExperimentResult:
        timestamp = datetime.now(UTC)
        script = Path(script_path)
        common = _spec_fields(spec, iteration, script, timestamp)
        started = time.monotonic()
        try:
            execution = self.execute(script, inputs=inputs, on_output=on_output, token=token)
        except ExperimentExecutionError:
            raise
        except Exception as e:  # noqa: BLE001 - the document's "unexpected exceptions" case
            return ExperimentResult(
                **common,
                execution_time=time.monotonic() - started,
                success=False,
                error_message=str(e) or type(e).__name__,
            )
        verdict = interpret(
            Ending(
                execution.exit_code,
                execution.timed_out,
                execution.oom_killed,
                exit_reported=execution.exit_reported,
            ),
            execution.stdout,
            execution.stderr,
            timeout=self.timeout,
            memory_limit=self.policy.memory_limit,
        )
        return ExperimentResult(
            **common,
            metrics=verdict.metrics,
            execution_time=execution.duration,
            success=verdict.success,
            error_message=verdict.error_message,
            exit_code=execution.exit_code,
            timed_out=execution.timed_out,
            oom_killed=execution.oom_killed,
            stdout=execution.stdout,
            stderr=execution.stderr,
            stdout_truncated=execution.stdout_truncated,
            stderr_truncated=execution.stderr_truncated,
            image_id=execution.image_id,
            peak_memory_bytes=execution.peak_memory_bytes,
            cpu_seconds=execution.cpu_seconds,
            warm_start=execution.warm,
        )

    def run_script_directly(self, script_path: Path | str) -> dict[str, Any]:
        """Run a script in the sandbox and return its raw output.

        Keys: ``stdout``, ``stderr``, ``returncode`` (as in the document), plus
        ``timed_out`` and ``oom_killed``. A timed-out run has returncode 137.
        """
        execution = self.execute(Path(script_path))
        stderr = execution.stderr
        if not execution.exit_reported:
            stderr += "\n[runner] the sandbox ended before the script did\n"
        return {
            "stdout": execution.stdout,
            "stderr": stderr,
            "returncode": execution.exit_code if execution.exit_code is not None else -1,
            "timed_out": execution.timed_out,
            "oom_killed": execution.oom_killed,
        }

    # the warm pool ---------------------------------------------------------

    def _start_pool(self, size: int) -> None:
        engine = self.engine
        self._prepare_engine(engine)
        engine.image_id(self.policy.image)  # fail now, with a hint, if the image is missing
        self.pool_root.mkdir(parents=True, exist_ok=True)
        pool = WarmPool(min(size, self.default_workers()), self._new_slot, self._drop_slot)
        self._pool = pool
        # The pool goes with the runner, or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, pool.close)

    @property
    def warm_pool_size(self) -> int:
        """Containers the warm pool keeps ready (0: no pool)."""
        return self._pool.size if self._pool is not None else 0

    def wait_for_warm(self, timeout: float = 60.0) -> bool:
        """Block until every pool slot is ready; False on timeout or without a pool."""
        if self._pool is None:
            return False
        ready = self._pool.wait_ready(timeout)
        if not ready and self._pool.error is not None:
            raise self._pool.error
        return ready

    def close(self) -> None:
        """Remove the warm pool's containers; the runner then runs scripts cold."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    def __enter__(self) -> ExperimentRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_slot(self) -> Slot:
        engine = self.engine
        host_dir = new_slot_dir(self._pool_dir)
        lease = lease_uid()
        container_id: str | None = None
        try:
            lifetime = POOL_IDLE_MAX + self.timeout
            deadline = deadline_after(lifetime)
            run = Run(
                command=self_limited(
                    [self.python_executable, "-c", SOURCE, *self.preload], lifetime
                ),
                workdir=self.pool_root,
                read_only_paths=(),
                deadline=deadline,
                uid=lease.uid,
                labels=build_labels(deadline, {LABEL_SLOT: host_dir.name}),
                cgroup_parent=self._telemetry.new_parent() if self._telemetry_on else None,
                relocated=((host_dir, self.pool_root),),
                stdin_open=True,
                user_kernel=self._user_kernel,
            )
            # The slot records the image it was made from: that is what its run reports.
            image_id = engine.image_id(self.policy.image)
            container_id = engine.create(
                image_id, run.command, **container_config(self.policy, run)
            )
            stream = engine.attach(container_id)
            engine.start(container_id)
        except BaseException:
            try:
                if container_id is not None:
                    engine.remove(container_id)
            finally:
                shutil.rmtree(host_dir, ignore_errors=True)
                lease.release()
            raise
        return Slot(
            container_id, host_dir, stream, iter(stream), run.cgroup_parent, image_id, lease
        )

    def _drop_slot(self, slot: Slot) -> None:
        try:
            slot.stream.close()
            self.engine.remove(slot.container_id)
        finally:
            shutil.rmtree(slot.host_dir, ignore_errors=True)
            slot.lease.release()
            if slot.cgroup_parent is not None:
                self._telemetry.release(slot.cgroup_parent)

    def _warm_eligible(self, script: Path, inputs: Sequence[Path]) -> bool:
        """A pooled container can only see what lies under the pool root."""
        return (
            self._pool is not None
            and script.parent.is_relative_to(self.pool_root)
            and script.parent != self.pool_root
            and all(path.is_relative_to(script.parent) for path in inputs)
            and "\n" not in str(script)
        )

    def _execute_warm(
        self, engine: DockerEngine, slot: Slot, script: Path, on_output: OutputCallback | None,
        token: object,
    ) -> Execution:  # fmt: skip
        try:
            if not self._active.register(token, slot.container_id):
                raise ExperimentExecutionError("The run was cancelled before it started.")
            if not engine.state(slot.container_id).running:
                raise _SlotUnusable  # it died while waiting (say, its idle deadline passed)
            # The hand-over counts against the run's deadline.
            started = time.monotonic()
            try:
                stage(script.parent, self.pool_root, slot.host_dir, deadline=started + self.timeout)
            except StageRefused as e:
                raise _SlotUnusable from e  # a cold run shows this directory exactly
            except StageExpired:
                return _expired_in_hand_over(slot, time.monotonic() - started)
            cpu_before = 0.0
            if slot.cgroup_parent is not None:
                cpu_before = self._telemetry.read(slot.cgroup_parent).cpu_seconds or 0.0
            collector = OutputCollector(remainder(slot), self.output_limit, on_output)
            collector.start()
            engine.send_stdin(slot.container_id, os.fsencode(str(script)) + b"\n")
            exit_code, timed_out, output = self._supervise(
                engine, slot.container_id, collector, started
            )
            duration = time.monotonic() - started
            # Telemetry first: dropping the slot releases its cgroup.
            return self._finished(
                engine, slot.container_id, slot.image_id, exit_code, timed_out, output, duration,
                slot.cgroup_parent, cpu_before=cpu_before, warm=True,
            )  # fmt: skip
        finally:
            self._active.release(token)
            self._drop_slot(slot)

    # many runs -------------------------------------------------------------

    def default_workers(self) -> int:
        """Runs at once that never book more CPU cores or memory than the host has."""
        cores = len(os.sched_getaffinity(0))
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        by_cpu = math.floor(cores / self.policy.cpu_limit)
        by_memory = memory // parse_size(self.policy.memory_limit)
        return max(1, min(by_cpu, by_memory))

    def run_many(
        self,
        jobs: Iterable[Job],
        max_workers: int | None = None,
        *,
        on_result: Callable[[int, ExperimentResult], None] | None = None,
    ) -> list[ExperimentResult]:
        """Run jobs in parallel; results come back in the order of the jobs.

        ``max_workers`` defaults to ``default_workers()``. A job that cannot run
        at all (say, its script is missing) gets a failed result instead of
        raising, so it never costs the others theirs. ``on_result(index,
        result)`` is called as each finishes. Interrupting the batch (Ctrl-C)
        removes every container it started, then re-raises.
        """
        batch: Sequence[Job] = list(jobs)
        workers = max_workers if max_workers is not None else self.default_workers()
        if workers < 1:
            raise ValueError("max_workers must be at least 1")
        tokens = [object() for _ in batch]
        results: list[ExperimentResult | None] = [None] * len(batch)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="runner-job")
        try:
            futures: dict[Future[ExperimentResult], int] = {
                pool.submit(self._run_job, job, token): index
                for index, (job, token) in enumerate(zip(batch, tokens, strict=True))
            }
            for future in as_completed(futures):
                index = futures[future]
                result = results[index] = future.result()
                if self.history is not None:
                    self.history.append(result)
                if on_result is not None:
                    on_result(index, result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            self._abort(tokens)
            raise
        pool.shutdown()
        return [result for result in results if result is not None]

    async def arun(
        self,
        script_path: Path | str,
        spec: ExperimentSpec,
        iteration: int,
        *,
        inputs: Iterable[str | Path] = (),
        on_output: OutputCallback | None = None,
    ) -> ExperimentResult:
        """``run`` for asyncio; cancelling the task removes its container."""
        token = object()
        try:
            result = await asyncio.to_thread(
                self._run, script_path, spec, iteration, inputs, on_output, token
            )
        except asyncio.CancelledError:
            await asyncio.to_thread(self._abort, [token])
            raise
        if self.history is not None:
            await asyncio.to_thread(self.history.append, result)
        return result

    def _run_job(self, job: Job, token: object) -> ExperimentResult:
        """One job of a batch: whatever goes wrong becomes its failed result, never the batch's."""
        script_path, spec, iteration = job
        try:
            result = self._run(script_path, spec, iteration, (), None, token)
        except ExperimentExecutionError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - one job must never sink the batch
            error = f"The runner failed on this job: {type(e).__name__}: {e}"
        else:
            return result
        return ExperimentResult(
            **_spec_fields(spec, iteration, Path(script_path), datetime.now(UTC)),
            execution_time=0.0,
            success=False,
            error_message=printable(error, limit=2000),
        )

    def _abort(self, tokens: Iterable[object]) -> None:
        for container_id in self._active.abort(tokens):
            self.engine.remove(container_id)

    # the steps of one run ---------------------------------------------------

    def execute(
        self,
        script_path: Path,
        *,
        inputs: Iterable[str | Path] = (),
        on_output: OutputCallback | None = None,
        token: object | None = None,
    ) -> Execution:
        """Prepare mounts, create, start, wait with a deadline, collect, remove."""
        inputs = tuple(inputs)
        script, mounts = self._prepare_mounts(script_path, inputs)
        engine = self.engine
        self._prepare_engine(engine)
        image_id = engine.image_id(self.policy.image)
        if self._warm_eligible(script, mounts[1:]):
            slot = self._pool.take() if self._pool is not None else None
            if slot is not None:
                try:
                    return self._execute_warm(engine, slot, script, on_output, token or object())
                except _SlotUnusable:
                    pass  # run cold instead

        for attempt in (1, 2):
            deadline = deadline_after(self.timeout)
            lease = lease_uid()
            run = Run(
                command=self_limited([self.python_executable, str(script)], self.timeout),
                workdir=script.parent,
                read_only_paths=mounts,
                deadline=deadline,
                uid=lease.uid,
                labels=build_labels(deadline),
                cgroup_parent=self._telemetry.new_parent() if self._telemetry_on else None,
                user_kernel=self._user_kernel,
            )
            try:
                return self._execute_once(engine, image_id, run, on_output, token or object())
            except SandboxStartError:
                # A sandbox that failed to start ran nothing; gVisor occasionally fails
                # to set one up, so one fresh attempt is safe and worth it.
                if attempt == 2:
                    raise
            finally:
                lease.release()  # the container is gone by now
                if run.cgroup_parent is not None:
                    self._telemetry.release(run.cgroup_parent)
        raise AssertionError("unreachable")

    def _supervise(
        self, engine: DockerEngine, container_id: str, collector: OutputCollector, started: float
    ) -> tuple[int | None, bool, CapturedOutput]:
        """Wait out the deadline counted from ``started``, kill on expiry, collect the output."""
        exit_code = engine.wait(container_id, self.timeout - (time.monotonic() - started))
        timed_out = exit_code is None
        if timed_out:
            engine.kill(container_id)
            exit_code = engine.wait(container_id, 5.0)
        return exit_code, timed_out, collector.finish(_DRAIN_GRACE)

    def _execute_once(
        self,
        engine: DockerEngine,
        image_id: str,
        run: Run,
        on_output: OutputCallback | None,
        token: object,
    ) -> Execution:
        with self._container(engine, image_id, run, token) as container_id:
            collector = OutputCollector(engine.attach(container_id), self.output_limit, on_output)
            collector.start()
            started = time.monotonic()
            engine.start(container_id)
            exit_code, timed_out, output = self._supervise(engine, container_id, collector, started)
            duration = time.monotonic() - started
            return self._finished(
                engine, container_id, image_id, exit_code, timed_out, output, duration,
                run.cgroup_parent,
            )  # fmt: skip

    def _finished(
        self,
        engine: DockerEngine,
        container_id: str,
        image_id: str,
        exit_code: int | None,
        timed_out: bool,
        output: CapturedOutput,
        duration: float,
        cgroup_parent: str | None,
        *,
        cpu_before: float = 0.0,
        warm: bool = False,
    ) -> Execution:
        """The run's record: how the container ended, what it printed and used."""
        state = engine.state(container_id)
        usage = (
            self._telemetry.read(cgroup_parent) if cgroup_parent is not None else Usage(None, None)
        )
        cpu = usage.cpu_seconds
        return Execution(
            exit_code=exit_code if exit_code is not None else state.exit_code,
            timed_out=timed_out,
            oom_killed=state.oom_killed and not timed_out,
            stdout=output.stdout,
            stderr=output.stderr,
            stdout_truncated=output.stdout_truncated,
            stderr_truncated=output.stderr_truncated,
            duration=duration,
            image_id=image_id,
            peak_memory_bytes=usage.peak_memory_bytes,
            cpu_seconds=max(cpu - cpu_before, 0.0) if cpu is not None else None,
            warm=warm,
            # A deadline kill or an OOM kill of the whole sandbox also leaves no record.
            exit_reported=output.exit_reported or timed_out or state.oom_killed,
        )

    @property
    def engine(self) -> DockerEngine:
        """The Docker seam, connected on first use."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = DockerEngine()
            return self._engine

    def _prepare_mounts(
        self, script_path: Path, inputs: Iterable[str | Path]
    ) -> tuple[Path, tuple[Path, ...]]:
        script = script_path.expanduser().resolve()
        if not script.is_file():
            raise ExperimentExecutionError(
                f"Script not found: {script_path}",
                hint="pass the path of an existing Python file.",
            )
        paths = [script.parent]
        for raw in (*self.inputs, *inputs):
            path = Path(raw).expanduser().resolve()
            if not path.exists():
                raise ExperimentExecutionError(
                    f"Input not found: {raw}", hint="inputs must be existing files or directories."
                )
            if path not in paths:
                paths.append(path)
        check_readable([*paths, script])
        return script, tuple(paths)

    def _prepare_engine(self, engine: DockerEngine) -> None:
        """Once per runner: check the runtime, find telemetry, sweep abandoned containers."""
        with self._engine_lock:
            if self._engine_ready:
                return
            info = engine.info()
            runtime = self.policy.runtime
            registered = set(info.get("Runtimes") or {})
            if runtime is not None and runtime not in registered:
                raise ExperimentExecutionError(
                    f"Runtime {runtime!r} is not registered with the Docker engine "
                    f"(registered: {', '.join(sorted(registered)) or 'none'}).",
                    hint="register it in /etc/docker/daemon.json and reload the engine, or "
                    "choose one of the registered runtimes; the runner never falls back.",
                )
            self._user_kernel = runtime is not None and is_user_kernel(info, runtime)
            self._telemetry_on = self._telemetry.available(info)
            # Containers of callers that crashed (or outlived their deadline) go now, and
            # so do the slot directories of pools that went with them.
            cleanup(
                engine,
                telemetry=self._telemetry if self._telemetry_on else None,
                slots_dir=self._pool_dir,
            )
            self._engine_ready = True

    @contextmanager
    def _container(
        self, engine: DockerEngine, image_id: str, run: Run, token: object
    ) -> Iterator[str]:
        """Create the container and remove it whatever happens, Ctrl-C included."""
        config = container_config(self.policy, run)
        container_id = engine.create(image_id, run.command, **config)
        try:
            if not self._active.register(token, container_id):
                raise ExperimentExecutionError("The run was cancelled before it started.")
            yield container_id
        finally:
            self._active.release(token)
            engine.remove(container_id)


def is_user_kernel(engine_info: dict[str, Any], runtime: str) -> bool:
    """True when ``runtime`` is gVisor's runsc (by its program, whatever its name)."""
    entry = (engine_info.get("Runtimes") or {}).get(runtime) or {}
    program = Path(str(entry.get("path") or runtime)).name
    return program == "runsc" or runtime == "runsc"


def _expired_in_hand_over(slot: Slot, duration: float) -> Execution:
    """The record of a run whose deadline passed before its script was handed over."""
    return Execution(
        exit_code=None,
        timed_out=True,
        oom_killed=False,
        stdout="",
        stderr="[runner] the deadline passed while the script's directory was handed over\n",
        stdout_truncated=False,
        stderr_truncated=False,
        duration=duration,
        image_id=slot.image_id,
        warm=True,
    )


def _spec_fields(
    spec: ExperimentSpec, iteration: int, script: Path, timestamp: datetime
) -> dict[str, Any]:
    """The result fields that come from the request rather than from the run."""
    return {
        "experiment_name": spec.experiment_name,
        "iteration": iteration,
        "model_type": spec.model_type,
        "model_params": spec.model_params,
        "preprocessing": spec.preprocessing,
        "hypothesis": spec.hypothesis,
        "reasoning": spec.reasoning,
        "code_path": str(script),
        "timestamp": timestamp,
    }
