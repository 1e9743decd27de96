"""One container's life, the same for every run, cold or warm.

Create it (and check every control is in force), attach to its output, start it
or hand it a script, supervise it against a deadline, collect what it printed
and used, and remove it with everything that was made for it. ``Sandbox`` is a
context manager: leaving the ``with`` block removes the container whatever
happened, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from pydantic import ConfigDict

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import Artifact, RunOutcome
from runner.core.provenance import EngineRecord, SandboxFacts
from runner.core.sizes import parse_size
from runner.sandbox.artifacts import COLLECT_SECONDS, ArtifactSink, Outputs
from runner.sandbox.controls import gaps
from runner.sandbox.engine import (
    Engine,
    EngineError,
    EngineUnavailable,
    OutputStream,
    StdinChannel,
)
from runner.sandbox.identity import UidLease
from runner.sandbox.podman import adapt, tmpfs_volume_options
from runner.sandbox.policy import Run, SandboxPolicy, container_config
from runner.sandbox.streams import CapturedOutput, OutputCallback, OutputCollector
from runner.sandbox.telemetry import CgroupTelemetry, Usage

#: How long output may keep arriving after the container has stopped.
DRAIN_GRACE = 2.0
#: Peak memory at this share of the cap, with a SIGKILL, counts as an OOM kill (Podman).
OOM_SHARE = 0.95

Frames = Iterator[tuple[bytes | None, bytes | None]]


class Execution(RunOutcome):
    """A finished container run: how it ended, what it printed, what came back."""

    model_config = ConfigDict(frozen=True)

    image_id: str
    #: False when the sandbox ended before the script's exit was recorded.
    exit_reported: bool = True
    #: With outputs on: the files copied back (what was not: ``artifacts_message``).
    artifacts: tuple[Artifact, ...] = ()
    #: The machine as the sandbox saw it before the script (``runner.sandbox.facts``).
    facts: SandboxFacts | None = None
    #: The engine and runtime that ran it (set by the backend: ``DockerBackend.execute``).
    engine: EngineRecord | None = None


class ActiveRuns:
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
        """The token's container is gone; an abort still stands (see ``forget``)."""
        with self._lock:
            self._containers.pop(token, None)

    def aborted(self, token: object) -> bool:
        with self._lock:
            return token in self._aborted

    def forget(self, token: object) -> None:
        """The token's run is over, every attempt of it: its abort no longer matters."""
        with self._lock:
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


class Reaper:
    """Removes containers in the background once their runs are over for the caller
    (``Sandbox.run``): nobody waits for the engine to stop and remove them.

    ``drain`` waits until every removal it was given is done (a backend's ``close``).
    A removal that fails is left to the sweep of containers past their deadline
    (``runner.sandbox.cleanup``), as a crashed caller's would be.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def remove(self, step: Callable[[], None]) -> None:
        thread = threading.Thread(
            target=self._remove, args=(step,), name="runner-reaper", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _remove(self, step: Callable[[], None]) -> None:
        try:
            with contextlib.suppress(ExperimentExecutionError):
                step()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def drain(self, timeout: float = 60.0) -> None:
        """Wait (up to ``timeout`` seconds) until every removal handed over is done."""
        until = time.monotonic() + timeout
        with self._lock:
            # A backend collected by the garbage collector inside a removal thread
            # drains from that thread (its finalizer): it cannot wait for itself.
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(max(until - time.monotonic(), 0.0))


@dataclass
class Resources:
    """What was made for one container and goes with it: its user ID, cgroup, files."""

    lease: UidLease
    cgroup_parent: str | None = None
    telemetry: CgroupTelemetry | None = None
    #: Further clean-ups (a slot's directory, a volume of copied files), run last.
    extra: list[Callable[[], None]] = field(default_factory=list)

    def release(self) -> None:
        """Undo what was made, last things first; what an engine that went away could not
        remove, it removes once it answers again (``Engine.remove_leftovers``)."""
        try:
            for step in self.extra:
                with contextlib.suppress(EngineUnavailable):
                    step()
        finally:
            self.lease.release()
            if self.cgroup_parent is not None and self.telemetry is not None:
                self.telemetry.release(self.cgroup_parent)

    def usage(self) -> Usage:
        if self.cgroup_parent is None or self.telemetry is None:
            return Usage(None, None)
        return self.telemetry.read(self.cgroup_parent)


class Sandbox:
    """A created container and what belongs to it, removed on ``destroy()`` or leaving ``with``."""

    def __init__(
        self, engine: Engine, container_id: str, image_id: str, resources: Resources
    ) -> None:
        self.engine = engine
        self.container_id = container_id
        self.image_id = image_id
        self.resources = resources
        self._stream: OutputStream | None = None
        self._frames: Frames | None = None
        self._destroyed = False
        #: The memory cap, where the engine never reports an OOM kill itself (Podman).
        self.infer_oom_at: int | None = None
        #: The memory cap (bytes): peak memory near it may be an OOM kill.
        self.memory_cap: int | None = None
        #: Removes the container in the background, once the run is over (see ``run``).
        self._reaper: Reaper | None = None
        #: stdin, attached ahead for a warm slot's hand-over (``open_stdin``).
        self._stdin: StdinChannel | None = None

    @classmethod
    def create(
        cls,
        engine: Engine,
        image_id: str,
        policy: SandboxPolicy,
        run: Run,
        resources: Resources,
    ) -> Sandbox:
        """Create the container for ``run`` and check every control is in force.

        On failure, or when the engine would run it with a control missing,
        nothing is left: ``resources`` are released and the error raised.
        """
        try:
            config = container_config(policy, run)
            support = run.support
            if run.podman:
                if support is None:
                    raise ValueError("a sandbox on Podman needs the engine's support files")
                # Podman: each tmpfs on a volume of its own (its caps kept), then its form.
                if not run.tmp_volumes:
                    volumes = _tmpfs_volumes(engine, config["tmpfs"], run.labels, resources)
                    run = dataclasses.replace(run, tmp_volumes=volumes)
                config = adapt(config, support, dict(run.tmp_volumes))
            container_id = engine.create(image_id, run.command, **config)
        except BaseException:
            resources.release()
            raise
        sandbox = cls(engine, container_id, image_id, resources)
        sandbox.memory_cap = parse_size(policy.memory_limit)
        sandbox.infer_oom_at = sandbox.memory_cap if run.podman else None
        try:
            missing = gaps(engine.inspect(container_id), policy, run)
            if missing:
                raise ExperimentExecutionError(
                    f"{engine.describe()} would run the sandbox without: {'; '.join(missing)}. "
                    "It was not started.",
                    hint="use an engine that enforces every control (`runner doctor` lists "
                    "each engine's gaps); the runner never runs a weaker sandbox.",
                )
        except BaseException:
            sandbox.destroy()
            raise
        return sandbox

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # output -----------------------------------------------------------------

    def attach(self) -> Frames:
        """Attach to stdout and stderr; call before ``start`` so nothing is missed."""
        self._stream = self.engine.attach(self.container_id)
        self._frames = iter(self._stream)
        return self._frames

    @property
    def frames(self) -> Frames:
        """The attached output, from where it was last read."""
        if self._frames is None:
            raise RuntimeError("attach() first")
        return self._frames

    def collector(
        self,
        limit: int,
        on_output: OutputCallback | None,
        artifacts: ArtifactSink | None = None,
        *,
        facts: bool = False,
    ) -> OutputCollector:
        """A started collector of the rest of the output (after anything already read);
        with ``facts``, stderr starts with the sandbox's facts record."""
        if self._stream is None or self._frames is None:
            raise RuntimeError("attach() first")
        collector = OutputCollector(
            _Rest(self._stream, self._frames),
            limit,
            on_output,
            artifacts=artifacts,
            facts=facts,
        )
        collector.start()
        return collector

    # running ----------------------------------------------------------------

    def start(self) -> None:
        self.engine.start(self.container_id)

    def open_stdin(self) -> None:
        """Attach to stdin now (before ``start``), for a ``hand_over`` that costs no request."""
        self._stdin = self.engine.open_stdin(self.container_id)

    def hand_over(self, data: bytes) -> None:
        """Write ``data`` to the started container's stdin (a warm slot's script path)."""
        stdin, self._stdin = self._stdin, None
        if stdin is None:
            self.engine.send_stdin(self.container_id, data)
            return
        try:
            stdin.send(data)
        except OSError as e:
            raise EngineError(f"The hand-over to the sandbox failed: {e}") from e

    @property
    def running(self) -> bool:
        return self.engine.state(self.container_id).running

    def supervise(
        self,
        collector: OutputCollector,
        timeout: float,
        started: float,
        *,
        outputs: bool = False,
    ) -> tuple[int | None, bool, CapturedOutput]:
        """Wait out the deadline counted from ``started``, kill on expiry, collect the output.

        With ``outputs``, the deadline ends only the script (SIGALRM, which the
        sandbox's ``sh`` turns into a kill of the script), so what it wrote is
        still collected; the container is killed if that takes too long.
        """
        exit_code = self.engine.wait(self.container_id, timeout - (time.monotonic() - started))
        timed_out = exit_code is None
        if timed_out and outputs:
            self.engine.kill(self.container_id, signal="SIGALRM")
            exit_code = self.engine.wait(self.container_id, COLLECT_SECONDS + 5.0)
        if exit_code is None:
            self.engine.kill(self.container_id)
            exit_code = self.engine.wait(self.container_id, 5.0)
        return exit_code, timed_out, collector.finish(DRAIN_GRACE)

    def completed_run(
        self,
        collector: OutputCollector,
        timeout: float,
        started: float,
        *,
        cpu_before: float = 0.0,
        warm: bool = False,
        trusted: bool = False,
    ) -> Execution | None:
        """The record of a run that is complete (``OutputCollector.completed``) while its
        container may still be stopping; None when it is not, or not surely, over.

        Waits until the run is complete, its output ends, or its deadline comes.
        A script that exited by itself (a status below 128) is over when the
        kernel's telemetry, read now (final: the script has exited), shows its peak
        memory clear of the cap. Otherwise (a signal ended it, an OOM kill may have
        happened, or there is no telemetry to tell) None: the engine's own record of
        the exit is waited for (``supervise``). ``trusted``: the runner's own program
        (``RunRequest.ends_with_result``), whose record alone is enough.
        """
        collector.settled.wait(max(timeout - (time.monotonic() - started), 0.0))
        status = collector.completed
        if status is None or status >= 128:
            return None
        usage = self.resources.usage()
        cap, peak = self.memory_cap, usage.peak_memory_bytes
        clear = cap is not None and peak is not None and peak < cap * OOM_SHARE
        if not (clear or trusted):
            return None
        output = collector.finish(0.0)
        cpu = usage.cpu_seconds
        return Execution(
            exit_code=status,
            stdout=output.stdout,
            stderr=output.stderr,
            stdout_truncated=output.stdout_truncated,
            stderr_truncated=output.stderr_truncated,
            execution_time=time.monotonic() - started,
            image_id=self.image_id,
            peak_memory_bytes=peak,
            cpu_seconds=max(cpu - cpu_before, 0.0) if cpu is not None else None,
            warm_start=warm,
            exit_reported=output.exit_reported,
            facts=output.facts,
        )

    def record(
        self,
        exit_code: int | None,
        timed_out: bool,
        output: CapturedOutput,
        duration: float,
        *,
        cpu_before: float = 0.0,
        warm: bool = False,
    ) -> Execution:
        """The run's record: how the container ended, what it printed and used."""
        state = self.engine.state(self.container_id)
        usage = self.resources.usage()
        cpu = usage.cpu_seconds
        code = exit_code if exit_code is not None else state.exit_code
        oom_killed = state.oom_killed or self._looks_oom_killed(code, usage)
        return Execution(
            exit_code=code,
            timed_out=timed_out,
            oom_killed=oom_killed and not timed_out,
            stdout=output.stdout,
            stderr=output.stderr,
            stdout_truncated=output.stdout_truncated,
            stderr_truncated=output.stderr_truncated,
            execution_time=duration,
            image_id=self.image_id,
            peak_memory_bytes=usage.peak_memory_bytes,
            cpu_seconds=max(cpu - cpu_before, 0.0) if cpu is not None else None,
            warm_start=warm,
            # A deadline kill or an OOM kill of the whole sandbox also leaves no record.
            exit_reported=output.exit_reported or timed_out or oom_killed,
            facts=output.facts,
        )

    def _looks_oom_killed(self, exit_code: int, usage: Usage) -> bool:
        """Killed (137) with peak memory at the cap: what an engine that never says shows."""
        cap = self.infer_oom_at
        peak = usage.peak_memory_bytes
        return cap is not None and peak is not None and exit_code == 137 and peak >= cap * OOM_SHARE

    def run(
        self,
        timeout: float,
        output_limit: int,
        on_output: OutputCallback | None,
        *,
        hand_over: bytes | None = None,
        started: float | None = None,
        cpu_before: float = 0.0,
        outputs: Outputs | None = None,
        facts: bool = False,
        reaper: Reaper | None = None,
        trusted: bool = False,
    ) -> Execution:
        """Start the container (or hand it ``hand_over``), supervise it, and record the run.

        ``started`` (``time.monotonic()``) is when the run's deadline began, if
        before this call (a warm hand-over counts its staging). With ``outputs``
        (the container must have been made for them), what the script wrote is
        copied back, however the run ended. With ``facts``, the command asks the
        machine's facts first (``self_limited(facts=True)``).

        The run is over once it is complete (``completed_run``; ``trusted``: the
        runner's own program); the engine's wait is needed only when that cannot
        tell. With a ``reaper``, a run that returns leaves its container (stopping,
        or still being waited for by nobody) to be removed in the background.
        """
        sink = ArtifactSink(outputs.limits.stream_limit) if outputs is not None else None
        try:
            collector = self.collector(output_limit, on_output, sink, facts=facts)
            begun = time.monotonic() if started is None else started
            if hand_over is None:
                self.start()
            else:
                self.hand_over(hand_over)
            warm = hand_over is not None
            execution = self.completed_run(
                collector, timeout, begun, cpu_before=cpu_before, warm=warm, trusted=trusted
            )
            if execution is None:
                try:
                    exit_code, timed_out, output = self.supervise(
                        collector, timeout, begun, outputs=outputs is not None
                    )
                    execution = self.record(
                        exit_code,
                        timed_out,
                        output,
                        time.monotonic() - begun,
                        cpu_before=cpu_before,
                        warm=warm,
                    )
                except EngineUnavailable as e:
                    raise e.while_running() from e  # the script had started: it was cut off
                except EngineError as e:
                    e.after_start = True
                    raise
            if outputs is not None:
                collected = outputs.collect(sink)
                execution = execution.model_copy(
                    update={
                        "artifacts": tuple(collected.artifacts),
                        "artifacts_message": collected.message(),
                    }
                )
            self._reaper = reaper  # the rest is removal: nobody needs to wait for it
            return execution
        finally:
            if sink is not None:
                sink.close()

    # the end ----------------------------------------------------------------

    def destroy(self) -> None:
        """Remove the container and release what was made for it; safe to call twice.

        After a run that returned with a reaper (``run``), the reaper does it in the
        background."""
        if self._destroyed:
            return
        self._destroyed = True
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.remove(self._remove)
            return
        self._remove()

    def _remove(self) -> None:
        try:
            if self._stdin is not None:
                self._stdin.close()
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    self._stream.close()
            with contextlib.suppress(EngineUnavailable):  # removed once it answers again
                self.engine.remove(self.container_id)
        finally:
            self.resources.release()


def _tmpfs_volumes(
    engine: Engine, tmpfs: Mapping[str, str], labels: Mapping[str, str], resources: Resources
) -> tuple[tuple[str, str], ...]:
    """A fresh volume for each tmpfs of the container, with its caps; removed with it."""
    made = []
    for target, options in tmpfs.items():
        name = engine.create_volume(labels, tmpfs_volume_options(options)).name
        resources.extra.append(functools.partial(engine.remove_volume, name))
        made.append((target, name))
    return tuple(made)


class _Rest:
    """The rest of an attached output stream, after what was already read from it."""

    def __init__(self, stream: OutputStream, frames: Frames) -> None:
        self._stream = stream
        self._frames = frames

    def __iter__(self) -> Frames:
        return self._frames

    def close(self) -> None:
        self._stream.close()


@contextlib.contextmanager
def registered(active: ActiveRuns, token: object, sandbox: Sandbox) -> Iterator[None]:
    """Register ``sandbox`` as ``token``'s container for the ``with`` block (abortable)."""
    if not active.register(token, sandbox.container_id):
        raise ExperimentExecutionError("The run was cancelled before it started.")
    try:
        yield
    finally:
        active.release(token)
