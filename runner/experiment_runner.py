"""``ExperimentRunner``: one script, one fresh hardened container, one typed result."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.engine import DockerEngine
from runner.exceptions import ExperimentExecutionError
from runner.models import ExperimentResult, ExperimentSpec
from runner.output import OutputCollector
from runner.parsing import Ending, interpret
from runner.sandbox import (
    Run,
    SandboxPolicy,
    build_labels,
    check_readable,
    container_config,
    deadline_after,
)
from runner.settings import ExperimentDefaults

#: How long output may keep arriving after the container has stopped.
_DRAIN_GRACE = 2.0


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


class ExperimentRunner:
    """Runs experiment scripts, each in a fresh container from the pinned image.

    Hardened by default: no network, read-only root filesystem and script
    directory, capped memory (no swap), CPU and PIDs, non-root, no
    capabilities, ``no-new-privileges``, and a deadline that kills.
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
        self._engine = engine
        self._runtime_checked = False

    # public API -------------------------------------------------------------

    def run(
        self,
        script_path: Path | str,
        spec: ExperimentSpec,
        iteration: int,
        *,
        inputs: Iterable[str | Path] = (),
    ) -> ExperimentResult:
        """Run ``script_path`` in the sandbox and return its typed result.

        What the script does (exit code, timeout, OOM kill, bad JSON) is in the
        result; only what the caller or the machine got wrong raises
        ``ExperimentExecutionError``.
        """
        timestamp = datetime.now(UTC)
        script = Path(script_path)
        common: dict[str, Any] = {
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
        started = time.monotonic()
        try:
            execution = self.execute(script, inputs=inputs)
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
            Ending(execution.exit_code, execution.timed_out, execution.oom_killed),
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
        )

    def run_script_directly(self, script_path: Path | str) -> dict[str, Any]:
        """Run a script in the sandbox and return its raw output.

        Keys: ``stdout``, ``stderr``, ``returncode`` (as in the document), plus
        ``timed_out`` and ``oom_killed``. A timed-out run has returncode 137.
        """
        execution = self.execute(Path(script_path))
        return {
            "stdout": execution.stdout,
            "stderr": execution.stderr,
            "returncode": execution.exit_code if execution.exit_code is not None else -1,
            "timed_out": execution.timed_out,
            "oom_killed": execution.oom_killed,
        }

    # the steps of one run ---------------------------------------------------

    def execute(self, script_path: Path, *, inputs: Iterable[str | Path] = ()) -> Execution:
        """Prepare mounts, create, start, wait with a deadline, collect, remove."""
        script, mounts = self._prepare_mounts(script_path, inputs)
        engine = self.engine
        self._check_runtime(engine)
        image_id = engine.image_id(self.policy.image)
        deadline = deadline_after(self.timeout)
        run = Run(
            command=[self.python_executable, str(script)],
            workdir=script.parent,
            read_only_paths=mounts,
            deadline=deadline,
            labels=build_labels(deadline),
        )
        with self._container(engine, image_id, run) as container_id:
            collector = OutputCollector(engine.attach(container_id), self.output_limit)
            collector.start()
            started = time.monotonic()
            engine.start(container_id)
            exit_code = engine.wait(container_id, self.timeout - (time.monotonic() - started))
            timed_out = exit_code is None
            if timed_out:
                engine.kill(container_id)
                exit_code = engine.wait(container_id, 5.0)
            duration = time.monotonic() - started
            output = collector.finish(_DRAIN_GRACE)
            state = engine.state(container_id)
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
        )

    @property
    def engine(self) -> DockerEngine:
        """The Docker seam, connected on first use."""
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

    def _check_runtime(self, engine: DockerEngine) -> None:
        runtime = self.policy.runtime
        if runtime is None or self._runtime_checked:
            return
        registered = engine.runtimes()
        if runtime not in registered:
            raise ExperimentExecutionError(
                f"Runtime {runtime!r} is not registered with the Docker engine "
                f"(registered: {', '.join(sorted(registered)) or 'none'}).",
                hint="register it in /etc/docker/daemon.json and reload the engine, or choose "
                "one of the registered runtimes; the runner never falls back to another.",
            )
        self._runtime_checked = True

    @contextmanager
    def _container(self, engine: DockerEngine, image_id: str, run: Run) -> Iterator[str]:
        """Create the container and remove it whatever happens, Ctrl-C included."""
        config = container_config(self.policy, run)
        container_id = engine.create(image_id, run.command, **config)
        try:
            yield container_id
        finally:
            engine.remove(container_id)
