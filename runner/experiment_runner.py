"""``ExperimentRunner``: one script, one fresh hardened container, one typed result."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.backend import DockerBackend, RunRequest
from runner.engine import Engine
from runner.exceptions import ExperimentExecutionError
from runner.history import ResultsHistory
from runner.lifecycle import Execution
from runner.models import ExperimentResult, ExperimentSpec
from runner.output import OutputCallback
from runner.parsing import Ending, interpret, printable
from runner.sandbox import SandboxPolicy, parse_size, unreadable
from runner.settings import ExperimentDefaults
from runner.transfer import Transfer

#: One job of a batch: (script_path, spec, iteration).
Job = tuple[Path | str, ExperimentSpec, int]


class ExperimentRunner:
    """Runs experiment scripts, each in a fresh container from the pinned image.

    Hardened by default: no network, read-only root filesystem and script
    directory, capped memory (no swap), CPU and PIDs, non-root, no
    capabilities, ``no-new-privileges``, and a deadline that kills.

    With ``warm_pool=N``, N containers with the same controls are started ahead
    with the ``preload`` modules imported; each runs one script and is
    destroyed. A pool container shows the files below its root: by default the
    experiments directory at first, and the pool moves to take in a script whose
    files lie elsewhere (that run is cold, while the pool refills); an explicit
    ``pool_root`` stays put, and scripts outside it run cold. Close the runner
    (``close()`` or ``with``) to remove the pool.
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
        transfer: Transfer | None = None,
        settings: ExperimentDefaults | None = None,
        engine: Engine | None = None,
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
        if warm_pool < 0:
            raise ValueError("warm_pool must be 0 (off) or a positive number of containers")
        self._backend = DockerBackend(
            self.policy,
            engine=engine,
            python_executable=python_executable,
            settings=defaults,
            preload=preload,
            pool_root=pool_root,
            transfer=transfer,
        )
        if warm_pool:
            self._backend.start_pool(min(warm_pool, self.default_workers()), self.timeout)

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

    @property
    def preload(self) -> tuple[str, ...]:
        """The modules a warm pool container imports ahead of its script."""
        return self._backend.preload

    @property
    def pool_root(self) -> Path | None:
        """Scripts and inputs below this directory can run warm now (None: not yet)."""
        return self._backend.pool_root

    @property
    def warm_pool_size(self) -> int:
        """Containers the warm pool keeps ready (0: no pool)."""
        pool = self._backend.pool
        return pool.size if pool is not None else 0

    def wait_for_warm(self, timeout: float = 60.0) -> bool:
        """Block until every pool slot is ready; False on timeout or without a pool."""
        pool = self._backend.pool
        if pool is None:
            return False
        ready = pool.wait_ready(timeout)
        if not ready and pool.error is not None:
            raise pool.error
        return ready

    def close(self) -> None:
        """Remove the warm pool's containers; the runner then runs scripts cold."""
        self._backend.close()

    def __enter__(self) -> ExperimentRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # many runs -------------------------------------------------------------

    def default_workers(self) -> int:
        """Runs at once that never book more CPU cores or memory than the engine has.

        The engine's machine is this one for a local engine; for a remote engine
        its own count of CPUs and memory is used.
        """
        cores, memory = self._backend.capacity()
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
        self._backend.abort(tokens)

    # the steps of one run ---------------------------------------------------

    def execute(
        self,
        script_path: Path,
        *,
        inputs: Iterable[str | Path] = (),
        on_output: OutputCallback | None = None,
        token: object | None = None,
    ) -> Execution:
        """Check the script and inputs, then have the backend run them; the raw record."""
        script, mounts = self._prepare_mounts(script_path, inputs)
        request = RunRequest(
            script, mounts, self.timeout, self.output_limit, unreadable([*mounts, script])
        )
        return self._backend.execute(request, on_output, token or object())

    @property
    def backend(self) -> DockerBackend:
        """The execution seam this runner stands on."""
        return self._backend

    @property
    def engine(self) -> Engine:
        """The Docker seam, connected on first use."""
        return self._backend.engine

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
        return script, tuple(paths)


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
