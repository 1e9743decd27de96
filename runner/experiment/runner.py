"""``ExperimentRunner``: one script, one fresh hardened container, one typed result."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.backends.local import DockerBackend, RunRequest
from runner.backends.pool import WarmPool
from runner.backends.ray.backend import RayBackend
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, ExperimentSpec
from runner.core.settings import ExperimentDefaults
from runner.experiment.checks import check_args
from runner.experiment.hints import Context, Evidence, explain
from runner.experiment.verdict import Ending, interpret, printable
from runner.results.history import ResultsHistory
from runner.results.mlflow import MlflowTracker, track
from runner.sandbox.artifacts import OUTPUTS_PATH, OutputLimits, Outputs
from runner.sandbox.engine import Engine
from runner.sandbox.files.transfer import Transfer
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy, unreadable
from runner.sandbox.streams import OutputCallback

#: One job of a batch: (script_path, spec, iteration), or with the script's
#: arguments: (script_path, spec, iteration, args).
Job = tuple[Path | str, ExperimentSpec, int] | tuple[Path | str, ExperimentSpec, int, Sequence[str]]


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

    With ``outputs_dir``, the script's working directory is writable (a capped
    tmpfs, also ``$OUTPUT_DIR``, with links to its own files) and what it writes
    there comes back under ``outputs_dir``, listed in ``result.artifacts``.

    With ``tracking_uri`` (MLflow), each result is also logged as an MLflow run;
    a tracking server that fails only adds ``result.tracking_error``.

    With ``cluster`` (a Ray address, or ``auto``), each run is a Ray task that
    runs the same sandbox on its node's engine (``runner.backends.ray.backend``); a warm pool
    is then kept on each node, and ``build_missing`` builds the runner's own
    image on a node that lacks it.
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
        outputs_dir: Path | str | None = None,
        tracking_uri: str | None = None,
        settings: ExperimentDefaults | None = None,
        engine: Engine | None = None,
        cluster: str | None = None,
        build_missing: bool = False,
    ) -> None:
        defaults = settings or ExperimentDefaults()
        outputs = outputs_dir if outputs_dir is not None else defaults.outputs_dir
        #: Where outputs come back (None: off); ``output_limits`` bound them.
        self.outputs_dir = Path(outputs).expanduser().resolve() if outputs is not None else None
        self.output_limits = OutputLimits.from_settings(defaults)
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
        uri = tracking_uri if tracking_uri is not None else defaults.tracking_uri
        #: Where each result is logged in MLflow (None: tracking off).
        self.tracker = MlflowTracker(uri) if uri else None
        if warm_pool < 0:
            raise ValueError("warm_pool must be 0 (off) or a positive number of containers")
        #: The Ray cluster runs go to (None: this machine's engine).
        self.cluster = cluster if cluster is not None else defaults.cluster
        self._backend: DockerBackend | RayBackend
        if build_missing and not self.cluster:
            raise ValueError(
                "build_missing builds the image on a cluster's nodes; on this machine's "
                "engine: runner image build"
            )
        if self.cluster:
            if engine is not None:
                raise ValueError(
                    "on a Ray cluster each node runs sandboxes on its own engine: "
                    "engine= is for this machine's engine"
                )
            self._backend = RayBackend(
                self.policy,
                address=self.cluster,
                python_executable=python_executable,
                build_missing=build_missing,
                default_image=defaults.image,
            )
            if warm_pool:
                # Each node keeps its own (at most the sandboxes it holds at once).
                self._backend.start_pool(
                    warm_pool,
                    self.timeout,
                    outputs=self.output_limits if self.outputs_dir is not None else None,
                    pool_root=Path(pool_root or defaults.experiments_dir).resolve(),
                    pool_root_fixed=pool_root is not None,
                    preload=preload,
                )
            return
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
            self._backend.start_pool(
                min(warm_pool, self.default_workers()),
                self.timeout,
                outputs=self.output_limits if self.outputs_dir is not None else None,
            )

    # public API -------------------------------------------------------------

    def run(
        self,
        script_path: Path | str,
        spec: ExperimentSpec,
        iteration: int,
        *,
        inputs: Iterable[str | Path] = (),
        on_output: OutputCallback | None = None,
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
    ) -> ExperimentResult:
        """Run ``script_path`` in the sandbox and return its typed result.

        What the script does (exit code, timeout, OOM kill, bad JSON) is in the
        result; only what the caller or the machine got wrong raises
        ``ExperimentExecutionError``. ``args`` (strings) become the script's
        ``sys.argv[1:]``, exactly. ``on_output(stream, line)`` is called, on
        another thread, with each line as the script prints it. With a
        ``history``, the result is also appended to it. ``outputs_dir``
        (default: the runner's) is where the script's outputs come back.
        """
        result = self._run(
            script_path,
            spec,
            iteration,
            inputs,
            on_output,
            token=object(),
            args=args,
            outputs=outputs_dir,
        )
        return self._keep(result)

    def _keep(self, result: ExperimentResult) -> ExperimentResult:
        """Log ``result`` to MLflow and append it to the history, as configured.

        Tracking never fails a run: what went wrong is noted on the result, and
        the history records it all the same.
        """
        if self.tracker is not None:
            result = track(self.tracker, result, runtime=self.policy.runtime)
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
        args: Sequence[str] = (),
        outputs: Path | str | None = None,
    ) -> ExperimentResult:
        timestamp = datetime.now(UTC)
        script = Path(script_path)
        common = _spec_fields(spec, iteration, script, timestamp)
        started = time.monotonic()
        try:
            request = self.request(script, inputs=inputs, args=args, outputs_dir=outputs)
            execution = self._backend.execute(request, on_output, token)
        except ExperimentExecutionError:
            raise
        except Exception as e:  # noqa: BLE001 - the document's "unexpected exceptions" case
            return ExperimentResult(
                **common,
                execution_time=time.monotonic() - started,
                success=False,
                error_message=str(e) or type(e).__name__,
            )
        ending = Ending(
            execution.exit_code,
            execution.timed_out,
            execution.oom_killed,
            exit_reported=execution.exit_reported,
        )
        verdict = interpret(
            ending,
            execution.stdout,
            execution.stderr,
            timeout=self.timeout,
            memory_limit=self.policy.memory_limit,
        )
        error_message = verdict.error_message
        if error_message is not None:
            # When the output shows the sandbox was the reason, one more line says what to do.
            hint = explain(
                Evidence.of(ending, execution.stdout, execution.stderr),
                Context(image=self.policy.image, visible=request.mounts),
            )
            if hint is not None:
                error_message = f"{error_message}\n{hint}"
        return ExperimentResult(
            **common,
            metrics=verdict.metrics,
            execution_time=execution.duration,
            success=verdict.success,
            error_message=error_message,
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
            artifacts=list(execution.artifacts),
            artifacts_message=execution.artifacts_message,
            node=execution.node,
        )

    def run_script_directly(
        self,
        script_path: Path | str,
        *,
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
    ) -> dict[str, Any]:
        """Run a script in the sandbox and return its raw output.

        Keys: ``stdout``, ``stderr``, ``returncode`` (as in the document), plus
        ``timed_out`` and ``oom_killed``. A timed-out run has returncode 137,
        and a line at the end of ``stderr`` says so. ``args`` become the
        script's ``sys.argv[1:]``. With outputs on, also ``artifacts``
        (``Artifact`` objects) and ``artifacts_message``.
        """
        execution = self.execute(Path(script_path), args=args, outputs_dir=outputs_dir)
        stderr = execution.stderr
        if execution.timed_out:
            stderr = _note(
                stderr, f"the script was killed at its timeout of {self.timeout:g} seconds"
            )
        elif not execution.exit_reported:
            stderr = _note(stderr, "the sandbox ended before the script did")
        return {
            "stdout": execution.stdout,
            "stderr": stderr,
            "returncode": execution.exit_code if execution.exit_code is not None else -1,
            "timed_out": execution.timed_out,
            "oom_killed": execution.oom_killed,
        } | (
            {
                "artifacts": list(execution.artifacts),
                "artifacts_message": execution.artifacts_message,
            }
            if self._outputs(outputs_dir) is not None
            else {}
        )

    # the warm pool ---------------------------------------------------------

    @property
    def preload(self) -> tuple[str, ...]:
        """The modules a warm pool container imports ahead of its script."""
        return self._backend.preload if isinstance(self._backend, DockerBackend) else ()

    @property
    def pool_root(self) -> Path | None:
        """Scripts and inputs below this directory can run warm now (None: not yet)."""
        return self._backend.pool_root if isinstance(self._backend, DockerBackend) else None

    @property
    def warm_pool_size(self) -> int:
        """Containers the warm pool keeps ready (0: no pool); on a cluster, on each node."""
        if isinstance(self._backend, RayBackend):
            return self._backend.pool_size
        pool = self._local_pool()
        return pool.size if pool is not None else 0

    def _local_pool(self) -> WarmPool | None:
        return self._backend.pool if isinstance(self._backend, DockerBackend) else None

    def wait_for_warm(self, timeout: float = 60.0) -> bool:
        """Block until every pool slot is ready; False on timeout or without a pool."""
        if isinstance(self._backend, RayBackend):
            return self._backend.wait_for_warm(timeout)
        pool = self._local_pool()
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
        its own count of CPUs and memory is used; on a Ray cluster, the sum over
        its nodes, each counted from Ray's CPU and memory resources.
        """
        return self._backend.default_workers()

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
                pool.submit(self._run_job, job, token, index): index
                for index, (job, token) in enumerate(zip(batch, tokens, strict=True))
            }
            for future in as_completed(futures):
                index = futures[future]
                result = results[index] = self._keep(future.result())
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
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
    ) -> ExperimentResult:
        """``run`` for asyncio; cancelling the task removes its container."""
        token = object()
        try:
            result = await asyncio.to_thread(
                self._run,
                script_path,
                spec,
                iteration,
                inputs,
                on_output,
                token,
                args,
                outputs_dir,
            )
        except asyncio.CancelledError:
            await asyncio.to_thread(self._abort, [token])
            raise
        return await asyncio.to_thread(self._keep, result)

    def _run_job(self, job: Job, token: object, index: int) -> ExperimentResult:
        """One job of a batch: whatever goes wrong becomes its failed result, never the batch's."""
        script_path, spec, iteration = job[:3]
        args: Sequence[str] = job[3] if len(job) > 3 else ()
        # Each job of a batch brings its outputs back into a directory of its own.
        outputs = None
        if self.outputs_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.experiment_name).strip("-.")[:60]
            outputs = self.outputs_dir / f"{index:04d}-{slug or 'job'}"
        try:
            result = self._run(script_path, spec, iteration, (), None, token, args, outputs)
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
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
    ) -> Execution:
        """Check the script, inputs and arguments, have the backend run them; the raw record."""
        request = self.request(script_path, inputs=inputs, args=args, outputs_dir=outputs_dir)
        return self._backend.execute(request, on_output, token or object())

    def request(
        self,
        script_path: Path,
        *,
        inputs: Iterable[str | Path] = (),
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
    ) -> RunRequest:
        """The checked request for one run; ``ExperimentExecutionError`` says what is wrong."""
        checked = check_args(args)
        script, mounts = self._prepare_mounts(script_path, inputs)
        destination = self._outputs(outputs_dir)
        outputs = None
        if destination is not None:
            if any(path.is_relative_to(OUTPUTS_PATH) for path in mounts):
                raise ExperimentExecutionError(
                    f"With outputs on, the sandbox's working directory is {OUTPUTS_PATH}: "
                    "a script or input there would be hidden.",
                    hint=f"move the script and inputs out of {OUTPUTS_PATH}, or run without "
                    "outputs_dir.",
                )
            outputs = Outputs(destination, self.output_limits, links=script.parent)
        return RunRequest(
            script,
            mounts,
            self.timeout,
            self.output_limit,
            unreadable([*mounts, script]),
            args=checked,
            outputs=outputs,
        )

    def _outputs(self, outputs_dir: Path | str | None) -> Path | None:
        """Where a run's outputs go: its own directory, else the runner's, else nowhere."""
        if outputs_dir is not None:
            return Path(outputs_dir).expanduser().resolve()
        return self.outputs_dir

    @property
    def backend(self) -> DockerBackend | RayBackend:
        """The execution seam this runner stands on."""
        return self._backend

    @property
    def engine(self) -> Engine:
        """The Docker seam, connected on first use (this machine's runs only)."""
        if isinstance(self._backend, RayBackend):
            raise ValueError("on a Ray cluster, each node's own engine runs the sandboxes")
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


def _note(stderr: str, note: str) -> str:
    """``stderr`` with a line of the runner's own at the end."""
    separator = "\n" if stderr and not stderr.endswith("\n") else ""
    return f"{stderr}{separator}[runner] {note}\n"


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
