"""``ExperimentRunner``: one script, one fresh hardened container, one typed result."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, BackendOptions, PoolSpec, open_backend
from runner.backends.bootstrap import DEFAULT_PRELOAD
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import (
    ExperimentRecord,
    ExperimentResult,
    ExperimentSpec,
    RunOutcome,
    Verdict,
    fields_of,
)
from runner.core.options import RunnerOptions
from runner.core.settings import ExperimentDefaults, Transfer
from runner.core.sizes import parse_size
from runner.core.text import printable
from runner.experiment.checks import RunChecks
from runner.experiment.hints import Context, Evidence, explain
from runner.experiment.holdout import Holdout
from runner.experiment.jobs import Asked, BatchJob, Job
from runner.experiment.scoring import HeldOutRuns
from runner.experiment.verdict import Ending, interpret, interpret_held_out
from runner.results.history import ResultsHistory
from runner.results.mlflow import MlflowTracker, track
from runner.results.provenance import before_run, describe
from runner.results.store import ScriptStore, store_dir_for
from runner.sandbox.artifacts import OutputLimits
from runner.sandbox.engine import Engine
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import policy_from
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback


class ExperimentRunner:
    """Runs experiment scripts, each in a fresh container from the pinned image.

    Hardened by default: no network, read-only root filesystem and script
    directory, capped memory (no swap), CPU and PIDs, non-root, no
    capabilities, ``no-new-privileges``, and a deadline that kills.

    Every option is a field of ``RunnerOptions`` (pass ``options=``, or the same
    names as keyword arguments, which win); what is left unset takes its
    setting (``RUNNER_*``, ``settings=``), else the default.

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

    Every result has a ``run_id`` and its ``provenance`` (``runner.core.provenance``).
    With a ``history``, the script's directory is also kept, content-addressed, in a
    store beside it (``store``: another ``ScriptStore``), for ``runner replay``.

    With ``tracking_uri`` (MLflow), each result is also logged as an MLflow run;
    a tracking server that fails only adds ``result.tracking_error``.

    With ``holdout=`` (``run``, ``arun``, ``run_many``), the runner splits the data
    itself and the script sees only the training rows and the test rows' features
    (``$TRAIN_PATH``, ``$TEST_PATH``); it writes predictions to ``$PREDICTIONS_PATH``
    and the runner's scorer, in a sandbox of its own, computes ``result.metrics``
    (``metrics_source == "holdout"``); what the script printed is
    ``result.reported_metrics`` (``runner.experiment.scoring``, docs/holdout.md).

    With ``cluster`` (a Ray address, or ``auto``), each run is a Ray task that
    runs the same sandbox on its node's engine (``runner.backends.ray``); a warm
    pool is then kept on each node, and ``build_missing`` builds the runner's
    own image on a node that lacks it.
    """

    def __init__(
        self,
        timeout: int | float | None = None,
        python_executable: str | None = None,
        *,
        image: str | None = None,
        memory_limit: str | None = None,
        cpu_limit: float | None = None,
        pids_limit: int | None = None,
        runtime: str | None = None,
        inputs: Iterable[str | Path] | None = None,
        output_limit: int | None = None,
        tmpfs_size: str | None = None,
        history: ResultsHistory | Path | str | None = None,
        warm_pool: int | None = None,
        preload: Sequence[str] | None = None,
        pool_root: Path | str | None = None,
        pool_outputs: bool | None = None,
        transfer: Transfer | None = None,
        outputs_dir: Path | str | None = None,
        tracking_uri: str | None = None,
        settings: ExperimentDefaults | None = None,
        engine: Engine | None = None,
        cluster: str | None = None,
        build_missing: bool | None = None,
        options: RunnerOptions | None = None,
        store: ScriptStore | None = None,
    ) -> None:
        asked = (options or RunnerOptions()).merged(
            timeout=timeout, python_executable=python_executable, image=image,
            memory_limit=memory_limit, cpu_limit=cpu_limit, pids_limit=pids_limit,
            runtime=runtime, inputs=tuple(inputs) if inputs else None,
            output_limit=output_limit, tmpfs_size=tmpfs_size, warm_pool=warm_pool,
            preload=tuple(preload) if preload is not None else None, pool_root=pool_root,
            pool_outputs=pool_outputs,
            transfer=transfer, outputs_dir=outputs_dir, tracking_uri=tracking_uri,
            cluster=cluster, build_missing=build_missing,
        )  # fmt: skip
        defaults = settings or ExperimentDefaults()
        #: What this runner was told (before the settings filled in the rest).
        self.options = asked
        self.timeout: float = asked.timeout or defaults.experiment_timeout
        self.python_executable = asked.python_executable
        self.policy = policy_from(asked, defaults)
        outputs = asked.outputs_dir or defaults.outputs_dir
        #: Where outputs come back (None: off); ``output_limits`` bound them.
        self.outputs_dir = Path(outputs).expanduser().resolve() if outputs is not None else None
        self.output_limits = OutputLimits.from_settings(defaults)
        self.output_limit = asked.output_limit or defaults.output_limit
        self.inputs = tuple(asked.inputs)
        if history is None or isinstance(history, ResultsHistory):
            self.history = history
        else:
            self.history = ResultsHistory(history)
        #: Where script directories are kept for ``runner replay`` (default: beside the
        #: history; None without one: results then carry the digests only).
        self.store = store
        if store is None and self.history is not None:
            self.store = ScriptStore(
                store_dir_for(self.history.path), parse_size(defaults.store_max_bytes)
            )
        uri = asked.tracking_uri or defaults.tracking_uri
        #: Where each result is logged in MLflow (None: tracking off).
        self.tracker = MlflowTracker(uri) if uri else None
        #: The Ray cluster runs go to (None or empty: this machine's engine).
        self.cluster = asked.cluster if asked.cluster is not None else defaults.cluster
        #: Tokens of runs cancelled by their caller: a held-out run is then never scored.
        self._cancelled: set[object] = set()
        self._cancel_lock = threading.Lock()
        self._backend: Backend = open_backend(
            BackendOptions(
                self.policy,
                self.python_executable,
                transfer=asked.transfer or defaults.transfer,
                cache_dir=defaults.cache_dir,
                default_image=defaults.image,
                pool=self._pool_spec(asked, defaults),
                engine=engine,
                cluster=self.cluster or None,
                build_missing=asked.build_missing,
            )
        )
        self._held_out = HeldOutRuns(self._backend)

    @property
    def checks(self) -> RunChecks:
        """What each run is checked against, from the runner's bounds as they are now."""
        return RunChecks(
            self.timeout, self.output_limit, self.inputs, self.outputs_dir, self.output_limits
        )

    def _pool_spec(self, asked: RunnerOptions, defaults: ExperimentDefaults) -> PoolSpec | None:
        if not asked.warm_pool:
            return None
        return PoolSpec(
            size=asked.warm_pool,
            timeout=self.timeout,
            outputs=self.output_limits
            if self.outputs_dir is not None or asked.pool_outputs
            else None,
            root=Path(asked.pool_root or defaults.experiments_dir).expanduser().resolve(),
            root_fixed=asked.pool_root is not None,
            preload=DEFAULT_PRELOAD if asked.preload is None else asked.preload,
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
        holdout: Holdout | None = None,
    ) -> ExperimentResult:
        """Run ``script_path`` in the sandbox and return its typed result.

        What the script does (exit code, timeout, OOM kill, bad JSON) is in the
        result; only what the caller or the machine got wrong raises
        ``ExperimentExecutionError``. ``args`` (strings) become the script's
        ``sys.argv[1:]``, exactly. ``on_output(stream, line)`` is called, on
        another thread, with each line as the script prints it. With a
        ``history``, the result is also appended to it. ``outputs_dir``
        (default: the runner's) is where the script's outputs come back.
        With ``holdout``, the runner scores the script's predictions on held-out
        rows (the class docstring; docs/holdout.md).
        """
        asked = Asked(
            Path(script_path), spec, iteration, tuple(inputs), args, outputs_dir, holdout=holdout
        )
        return self._keep(self._result(asked, on_output, object()))

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
        holdout: Holdout | None = None,
    ) -> ExperimentResult:
        """``run`` for asyncio; cancelling the task removes its container."""
        asked = Asked(
            Path(script_path), spec, iteration, tuple(inputs), args, outputs_dir, holdout=holdout
        )
        token = object()
        try:
            result = await asyncio.to_thread(self._result, asked, on_output, token)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._abort, [token])
            raise
        return await asyncio.to_thread(self._keep, result)

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

    def _abort(self, tokens: Sequence[object]) -> None:
        with self._cancel_lock:
            self._cancelled.update(tokens)
        self._backend.abort(tokens)

    def _result(
        self, asked: Asked, on_output: OutputCallback | None, token: object
    ) -> ExperimentResult:
        """Check, execute and judge one run; what the caller got wrong raises."""
        try:
            if asked.holdout is not None:
                return self._held_out_result(asked, on_output, token)
            return self._script_result(asked, on_output, token)
        finally:
            with self._cancel_lock:
                self._cancelled.discard(token)

    def _held_out_result(
        self, asked: Asked, on_output: OutputCallback | None, token: object
    ) -> ExperimentResult:
        """A run whose metrics the runner computes on held-out rows (``HeldOutRuns``)."""
        if asked.holdout is None:
            raise AssertionError("a held-out run needs its holdout")
        record = asked.record(datetime.now(UTC))

        def cancelled() -> bool:
            with self._cancel_lock:
                return token in self._cancelled

        scored = self._held_out.run(
            asked.script,
            asked.holdout,
            self.checks,
            lambda execution, request: self._judge(execution, request, interpret_held_out),
            inputs=asked.inputs,
            args=asked.args,
            outputs_dir=asked.outputs_dir,
            outputs_below=asked.outputs_below,
            on_output=on_output,
            token=token,
            cancelled=cancelled,
            store=self.store,
        )
        provenance = describe(scored.described, scored.request, self.policy, scored.execution)
        return ExperimentResult(
            **fields_of(record, ExperimentRecord),
            **scored.verdict.model_dump(),
            **fields_of(scored.execution, RunOutcome),
            artifacts=scored.artifacts,
            run_id=new_run_id(),
            # The sandbox ran a staged copy of the script; the caller's is the one to name.
            provenance=provenance.model_copy(update={"script_path": str(asked.script)}),
        )

    def _script_result(
        self, asked: Asked, on_output: OutputCallback | None, token: object
    ) -> ExperimentResult:
        """A run judged by what its script printed."""
        record = asked.record(datetime.now(UTC))
        started = time.monotonic()
        try:
            request = self.checks.request(
                asked.script,
                inputs=asked.inputs,
                args=asked.args,
                outputs_dir=asked.outputs_dir,
                outputs_below=asked.outputs_below,
            )
            described = before_run(request, self.store)
            execution = self._backend.execute(request, on_output, token)
        except ExperimentExecutionError:
            raise
        except Exception as e:  # noqa: BLE001 - the document's "unexpected exceptions" case
            return _failed(record, str(e) or type(e).__name__, time.monotonic() - started)
        return ExperimentResult(
            **fields_of(record, ExperimentRecord),
            **self._judge(execution, request).model_dump(),
            **fields_of(execution, RunOutcome),
            artifacts=list(execution.artifacts),
            run_id=new_run_id(),
            provenance=describe(described, request, self.policy, execution),
        )

    def _judge(
        self,
        execution: Execution,
        request: RunRequest,
        interpreter: Callable[..., Verdict] = interpret,
    ) -> Verdict:
        """The verdict on a run, with one more line on what to do when the sandbox was why."""
        ending = Ending(
            execution.exit_code,
            execution.timed_out,
            execution.oom_killed,
            exit_reported=execution.exit_reported,
        )
        verdict = interpreter(
            ending,
            execution.stdout,
            execution.stderr,
            timeout=self.timeout,
            memory_limit=self.policy.memory_limit,
        )
        if verdict.error_message is None:
            return verdict
        hint = explain(
            Evidence.of(ending, execution.stdout, execution.stderr),
            Context(image=self.policy.image, visible=request.mounts),
        )
        if hint is None:
            return verdict
        return verdict.model_copy(update={"error_message": f"{verdict.error_message}\n{hint}"})

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
            if self.checks.outputs(outputs_dir) is not None
            else {}
        )

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
        """Containers the warm pool keeps ready (0: no pool); on a cluster, on each node."""
        return self._backend.pool_size

    def wait_for_warm(self, timeout: float = 60.0) -> bool:
        """Block until every pool slot is ready; False on timeout or without a pool."""
        return self._backend.wait_for_warm(timeout)

    def close(self) -> None:
        """Remove the warm pool's containers and the held-out runs' directory; the runner
        then runs scripts cold."""
        self._backend.close()
        self._held_out.close()

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
        holdout: Holdout | None = None,
    ) -> list[ExperimentResult]:
        """Run jobs in parallel; results come back in the order of the jobs.

        ``max_workers`` defaults to ``default_workers()``. A job that cannot run
        at all (say, its script is missing) gets a failed result instead of
        raising, so it never costs the others theirs. ``on_result(index,
        result)`` is called as each finishes. Interrupting the batch (Ctrl-C)
        removes every container it started, then re-raises. ``holdout`` scores
        every job on held-out rows but a ``BatchJob`` that names its own.
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
                pool.submit(self._job_result, job, token, index, holdout): index
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

    def _job_result(
        self, job: Job, token: object, index: int, holdout: Holdout | None = None
    ) -> ExperimentResult:
        """One job of a batch: whatever goes wrong becomes its failed result, never the batch's."""
        if isinstance(job, BatchJob):
            script_path, spec, iteration, args = job.script, job.spec, job.iteration, job.args
            holdout = job.holdout or holdout
        else:
            script_path, spec, iteration = job[:3]
            args = job[3] if len(job) > 3 else ()
        # Each job of a batch brings its outputs back into a directory of its own.
        below: tuple[str, ...] = ()
        if self.outputs_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.experiment_name).strip("-.")[:60]
            below = (f"{index:04d}-{slug or 'job'}",)
        asked = Asked(Path(script_path), spec, iteration, (), args, None, below, holdout)
        try:
            return self._result(asked, None, token)
        except ExperimentExecutionError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - one job must never sink the batch
            error = f"The runner failed on this job: {type(e).__name__}: {e}"
        return _failed(asked.record(datetime.now(UTC)), printable(error, limit=2000), 0.0)

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
        return self.checks.request(script_path, inputs=inputs, args=args, outputs_dir=outputs_dir)

    @property
    def backend(self) -> Backend:
        """The execution seam this runner stands on."""
        return self._backend

    @property
    def engine(self) -> Engine:
        """The Docker seam, connected on first use (this machine's runs only)."""
        return self._backend.engine


def new_run_id() -> str:
    """A new result's ID: random, so that two machines never make the same one."""
    return uuid.uuid4().hex


def _failed(record: ExperimentRecord, error: str, duration: float) -> ExperimentResult:
    """The result of a run that never got to run: what went wrong, in its own words."""
    return ExperimentResult(
        **fields_of(record, ExperimentRecord),
        run_id=new_run_id(),
        execution_time=duration,
        success=False,
        error_message=error,
    )


def _note(stderr: str, note: str) -> str:
    """``stderr`` with a line of the runner's own at the end."""
    separator = "\n" if stderr and not stderr.endswith("\n") else ""
    return f"{stderr}{separator}[runner] {note}\n"
