"""The MCP server's service: what the tools do, under a ``ServerPolicy``, with no
protocol in it (``runner.mcp.server`` serves it with the official SDK).

Three tools, each call a fresh hardened container under the server's policy:
``run_python`` (code, a few small files beside it, arguments), ``run_experiment``
(an ``ExperimentSpec`` on a data set the server was given by name) and
``list_results`` (the server's history). A client may lower the timeout and
the memory cap, never raise them; oversized requests are refused with a
message (``Refused``). What a script does, failure included, is an ordinary
tool result (``isError`` when it failed), never a protocol error.

Calls under the server's own limits run in single-use warm sandboxes when one is
ready (``ServerPolicy.warm``): every call's files lie in a directory of its own
below the server's (``CallDirectories``), the root the warm pool's slots are
mounted at, and each slot shows only the files handed to it for its one run.
A call that lowers a limit runs cold, in a sandbox made with its own limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import tempfile
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from runner.backends.pool import may_be_pool_root
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, ExperimentSpec, TaskType
from runner.core.options import RunnerOptions
from runner.core.settings import ExperimentDefaults
from runner.core.sizes import parse_size
from runner.experiment.checks import check_args
from runner.experiment.codegen import CodeGenerator
from runner.experiment.holdout import Holdout
from runner.experiment.runner import ExperimentRunner
from runner.mcp.reports import (
    Limits,
    Outcome,
    ResultList,
    images_of,
    report_of,
    summary_of,
    text_of,
)
from runner.results.history import ResultsHistory, best_first
from runner.sandbox.engine import DockerEngine, Engine

log = logging.getLogger(__name__)


SCRIPT_NAME = "main.py"


#: What a client may send, by default: code, and small text files beside it.
MAX_CODE_BYTES = 256 * 1024


MAX_FILES = 20


MAX_FILES_BYTES = 1024 * 1024


#: The smallest memory cap a client may ask for (a Python interpreter needs some).
MIN_MEMORY = 32 * 1024**2


#: Cold runners kept for distinct lower (timeout, memory) requests; each checks its
#: engine once. The server's own runner (its limits, its warm pool) is kept besides.
MAX_RUNNERS = 8


_FILE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")


class Refused(Exception):
    """A request the server will not run; the message says why and what is allowed."""


class RunGate:
    """How many runs the server has at once, and who waits: at most ``limit`` run at a
    time, server-wide; the calls beyond wait their turn in the order they came, and a
    client may have at most ``backlog`` calls waiting: further ones are refused at once.

    So one client alone may use every slot, but a client that floods the server holds
    at most ``limit + backlog`` calls, and another client's call waits behind at most
    ``backlog`` of each other client's.
    """

    def __init__(self, limit: int, backlog: int) -> None:
        if limit < 1 or backlog < 0:
            raise ValueError("a server runs at least one call at once, and waits for none or more")
        self.limit = limit
        self.backlog = backlog
        self._slots = asyncio.Semaphore(limit)
        self._waiting: Counter[object] = Counter()
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    @contextlib.asynccontextmanager
    async def turn(self, client: object) -> AsyncIterator[None]:
        """A slot for one of ``client``'s runs, for the ``async with`` block."""
        if self._slots.locked() and self._waiting[client] >= self.backlog:
            raise Refused(
                f"this server runs at most {self.limit} call(s) at once and this client "
                f"already has {self._waiting[client]} waiting; wait for one to finish."
            )
        self._waiting[client] += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting[client] -= 1
            if not self._waiting[client]:
                del self._waiting[client]
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._slots.release()


@dataclass(frozen=True)
class ServerPolicy:
    """What the server allows; clients can only ask for less."""

    #: The runs' options, their timeout, memory and CPU caps settled: the most a client
    #: gets (it may ask for a lower timeout and memory cap, never higher ones).
    options: RunnerOptions
    #: Data sets ``run_experiment`` may use, by name; the client never names a host path.
    data: Mapping[str, Path] = field(default_factory=dict)
    #: The results history (None: results are kept in memory for this server's life).
    history: Path | None = None
    #: Where each call's script and outputs are kept (None: removed after the call).
    workdir: Path | None = None
    max_code_bytes: int = MAX_CODE_BYTES
    max_files: int = MAX_FILES
    max_files_bytes: int = MAX_FILES_BYTES
    #: Runs at once, server-wide (None: what the engine holds, ``default_workers()``).
    max_runs: int | None = None
    #: Calls one client may have waiting for a run (None: as many as ``max_runs``).
    max_waiting: int | None = None
    #: Warm sandboxes kept for calls under the server's own limits (None: as many as run
    #: at once, ``max_runs``; 0: every call cold). A call that lowers a limit runs cold.
    warm: int | None = None

    def __post_init__(self) -> None:
        if self.warm is not None and self.warm < 0:
            raise ValueError("warm is a number of sandboxes: 0 or more")
        if self.options.warm_pool or self.options.pool_root is not None:
            raise ValueError(
                "a server's warm sandboxes are ServerPolicy.warm, mounted at the server's "
                "own directory: leave options.warm_pool and options.pool_root unset"
            )

    @property
    def timeout(self) -> float:
        return float(self.options.timeout or 0)

    @property
    def memory_limit(self) -> str:
        return str(self.options.memory_limit)

    @property
    def cpu_limit(self) -> float:
        return float(self.options.cpu_limit or 0)

    @classmethod
    def from_settings(
        cls,
        settings: ExperimentDefaults,
        options: RunnerOptions | None = None,
        **given: Any,
    ) -> ServerPolicy:
        """``options`` and any runner option among ``given`` (None ignored) over the
        settings' limits; the rest of ``given`` are the server's own fields."""
        own = {k: v for k, v in given.items() if k not in RunnerOptions.model_fields}
        asked = (options or RunnerOptions()).merged(
            **{k: v for k, v in given.items() if k in RunnerOptions.model_fields}
        )
        settled = asked.merged(
            timeout=asked.timeout or float(settings.experiment_timeout),
            memory_limit=asked.memory_limit or settings.memory_limit,
            cpu_limit=asked.cpu_limit or settings.cpu_limit,
        )
        return cls(options=settled, **{k: v for k, v in own.items() if v is not None})


class SandboxService:
    """Runs what the tools ask for under a ``ServerPolicy``; raises ``Refused``."""

    def __init__(
        self,
        policy: ServerPolicy,
        *,
        engine: Engine | None = None,
        settings: ExperimentDefaults | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings or ExperimentDefaults()
        self._engine = engine
        #: Cold runners for calls that lowered a limit, by (timeout, memory).
        self._runners: dict[tuple[float, str], ExperimentRunner] = {}
        self._lock = threading.Lock()
        self._history = ResultsHistory(policy.history) if policy.history else None
        self._memory: list[ExperimentResult] = []
        self._iterations: dict[str, itertools.count[int]] = {}
        for name, path in policy.data.items():
            if not path.is_file():
                raise ExperimentExecutionError(
                    f"Data set {name!r}: {path} is not a file.",
                    hint="pass --data NAME=PATH with an existing CSV file.",
                )
        #: Where every call's files lie (each in a directory of its own).
        self.directories = CallDirectories(policy.workdir)
        # Fail at start, not at the first call, when tracking cannot work at all.
        first = self._new_runner(policy.timeout, policy.memory_limit)
        limit = policy.max_runs or first.default_workers()
        self.gate = RunGate(limit, limit if policy.max_waiting is None else policy.max_waiting)
        warm = self._warm_size(limit)
        #: The runner of calls under the server's own limits: the one with a warm pool.
        self._server = first
        if warm:
            # The pool fills in the background: calls before it is ready run cold.
            self._server = self._new_runner(policy.timeout, policy.memory_limit, warm=warm)
            first.close()

    def _warm_size(self, runs_at_once: int) -> int:
        """The warm sandboxes to keep: the policy's, or as many as run at once; none when
        the server's directory cannot be a pool root."""
        warm = runs_at_once if self.policy.warm is None else self.policy.warm
        root = self.directories.root
        if warm and not may_be_pool_root(root):
            log.warning(
                "calls run cold: %s cannot be the warm sandboxes' root (mounted there, it "
                "would hide the image's own files); choose another --workdir or TMPDIR",
                root,
            )
            return 0
        return warm

    @property
    def warm_pool_size(self) -> int:
        """Warm sandboxes kept for calls under the server's limits (0: every call is cold)."""
        return self._server.warm_pool_size

    def wait_for_warm(self, timeout: float) -> bool:
        """Block until every warm sandbox is ready; False on timeout or without any."""
        return self._server.wait_for_warm(timeout)

    # limits --------------------------------------------------------------------

    def limits(self, timeout: float | None, memory_limit: str | None) -> Limits:
        """The run's limits: the server's, or lower ones; ``Refused`` for anything higher."""
        policy = self.policy
        if timeout is None:
            timeout = policy.timeout
        elif not 0 < timeout <= policy.timeout:
            raise Refused(
                f"timeout {timeout:g} s is not allowed: this server runs scripts for at most "
                f"{policy.timeout:g} s (ask for a positive number up to that)."
            )
        memory = policy.memory_limit
        if memory_limit is not None:
            try:
                asked = parse_size(memory_limit.strip())
            except ValueError:
                raise Refused(
                    f"memory_limit {memory_limit!r} is not a size: use a number with k, m or g, "
                    "e.g. '512m'."
                ) from None
            ceiling = parse_size(policy.memory_limit)
            if not MIN_MEMORY <= asked <= ceiling:
                raise Refused(
                    f"memory_limit {memory_limit} is not allowed: this server allows "
                    f"{MIN_MEMORY // 1024**2}m up to {policy.memory_limit}."
                )
            # The server's own cap however it is written: such a call can run warm.
            memory = policy.memory_limit if asked == ceiling else memory_limit.strip()
        return Limits(timeout=timeout, memory_limit=memory, cpu_limit=policy.cpu_limit)

    def _runner(self, timeout: float, memory_limit: str) -> ExperimentRunner:
        """The runner for a call with these limits: the server's own (warm) for its
        limits, else a cold one made with exactly these."""
        if (timeout, memory_limit) == (self.policy.timeout, self.policy.memory_limit):
            return self._server
        key = (timeout, memory_limit)
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                if len(self._runners) >= MAX_RUNNERS:
                    # Not closed: a call may still be running on it (its held-out
                    # directory goes with its last reference).
                    self._runners.pop(next(iter(self._runners)))
                runner = self._new_runner(timeout, memory_limit)
                self._runners[key] = runner
            return runner

    def _new_runner(self, timeout: float, memory_limit: str, *, warm: int = 0) -> ExperimentRunner:
        """A runner with these limits; with ``warm``, that many slots mounted at the
        server's directory, made for runs with outputs (every call has its own)."""
        if self._engine is None:
            self._engine = DockerEngine()
        pool: dict[str, Any] = {}
        if warm:
            pool = {"warm_pool": warm, "pool_root": self.directories.root, "pool_outputs": True}
        return ExperimentRunner(
            options=self.policy.options.merged(timeout=timeout, memory_limit=memory_limit, **pool),
            history=self._history,
            settings=self.settings,
            engine=self._engine,
        )

    # the tools -------------------------------------------------------------------

    def check_code(self, code: str, files: Mapping[str, str] | None) -> dict[str, bytes]:
        """The code and files as bytes to write; ``Refused`` when over a limit or misnamed."""
        data = code.encode("utf-8", "surrogatepass")
        if len(data) > self.policy.max_code_bytes:
            raise Refused(
                f"code is {len(data)} bytes; this server takes at most "
                f"{self.policy.max_code_bytes} bytes of code."
            )
        written = {SCRIPT_NAME: data}
        files = files or {}
        if len(files) > self.policy.max_files:
            raise Refused(
                f"{len(files)} files sent; this server takes at most {self.policy.max_files}."
            )
        total = 0
        for name, text in files.items():
            problem = _file_name_problem(name)
            if problem is not None:
                raise Refused(f"file name {name[:100]!r} is not allowed: {problem}.")
            content = text.encode("utf-8", "surrogatepass")
            total += len(content)
            if total > self.policy.max_files_bytes:
                raise Refused(
                    f"files are over {self.policy.max_files_bytes} bytes in all, this "
                    "server's limit; send smaller files."
                )
            written[name] = content
        return written

    async def run_python(
        self,
        code: str,
        files: Mapping[str, str] | None = None,
        args: Sequence[str] | None = None,
        timeout: float | None = None,
        memory_limit: str | None = None,
        name: str = "run_python",
        client: object = None,
    ) -> Outcome:
        """Run ``code`` as a script beside ``files``; ``Refused`` before anything runs.

        ``client`` (its session) waits its turn at the server's ``gate``."""
        written = self.check_code(code, files)
        checked = _checked_args(args)
        limits = self.limits(timeout, memory_limit)
        spec = spec_of(experiment_name=name, model_type="script")
        with self._call_directory(spec.experiment_name) as directory:
            code_dir = directory / "code"
            for relative, content in written.items():
                _write(code_dir, relative, content)
            return await self._run_script(
                code_dir / SCRIPT_NAME, spec, limits, checked, directory, client
            )

    async def run_experiment(
        self,
        spec: ExperimentSpec,
        dataset: str,
        target_column: str,
        task_type: TaskType,
        timeout: float | None = None,
        memory_limit: str | None = None,
        client: object = None,
        holdout: bool = True,
    ) -> Outcome:
        """Generate the spec's script for a known data set and run it (``client``: as for
        ``run_python``). With ``holdout`` (the default) the runner holds a quarter of the
        rows out, the script never sees their labels, and the metrics are the runner's
        scores of its predictions; the client never sees the labels either."""
        data = self.policy.data.get(dataset)
        if data is None:
            known = ", ".join(sorted(self.policy.data)) or "none (start the server with --data)"
            raise Refused(f"unknown dataset {dataset!r}; this server has: {known}.")
        limits = self.limits(timeout, memory_limit)
        with self._call_directory(spec.experiment_name) as directory:
            try:
                script = CodeGenerator(directory / "experiments").generate(
                    spec, data, target_column, task_type, holdout=holdout
                )
                split = Holdout(data, target_column, task_type) if holdout else None
            except (ValueError, FileNotFoundError) as e:
                raise Refused(str(e)) from e
            return await self._run_script(
                script, spec, limits, (), directory, client, holdout=split
            )

    def list_results(self, name: str | None, limit: int) -> ResultList:
        """The recorded results (whose name contains ``name``), best first."""
        if self._history is not None:
            results, _ = self._history.read()
        else:
            results = list(self._memory)
        if name:
            results = [r for r in results if name in r.experiment_name]
        shown = best_first(results)[:limit]
        return ResultList(
            results=[summary_of(r) for r in shown],
            total=len(results),
        )

    def close(self) -> None:
        """Remove the warm sandboxes and whatever the runners keep, and the server's
        directory unless it is kept (``workdir``); calls after this run cold."""
        with self._lock:
            runners = [self._server, *self._runners.values()]
            self._runners.clear()
        for runner in runners:
            runner.close()
        self.directories.close()

    # one run -----------------------------------------------------------------------

    async def _run_script(
        self,
        script: Path,
        spec: ExperimentSpec,
        limits: Limits,
        args: Sequence[str],
        directory: Path,
        client: object,
        *,
        holdout: Holdout | None = None,
    ) -> Outcome:
        runner = self._runner(limits.timeout, limits.memory_limit)
        iteration = next(self._iterations.setdefault(spec.experiment_name, itertools.count()))
        async with self.gate.turn(client):
            result = await runner.arun(
                script, spec, iteration, args=args, outputs_dir=directory / "outputs",
                holdout=holdout,
            )  # fmt: skip
        if self._history is None:
            self._memory.append(result)
        images = images_of(result)
        report = report_of(result, limits, {image.name: image.mime_type for image in images})
        return Outcome(report, text_of(report), images)

    def _call_directory(self, name: str) -> contextlib.AbstractContextManager[Path]:
        return self.directories.call(name)


class CallDirectories:
    """The server's directory, and one directory below it for each call.

    Without a ``workdir`` the server's directory is temporary (removed with
    ``close`` or at exit) and so is each call's; with one, a new directory below
    it keeps every call's script and outputs. Either way every call's files lie
    below one ``root`` of this server's: the warm sandboxes are mounted there.
    """

    def __init__(self, workdir: Path | None) -> None:
        #: Calls' directories are kept (below a ``workdir``), not removed after the call.
        self.keep = workdir is not None
        if workdir is None:
            root = Path(tempfile.mkdtemp(prefix="runner-mcp-")).resolve()
        else:
            top = workdir.expanduser().resolve()
            top.mkdir(parents=True, exist_ok=True)
            root = top / f"server-{_stamp()}-{uuid.uuid4().hex[:6]}"
            root.mkdir()
        root.chmod(0o755)  # as each call's directory: the way down to the script is open
        self.root = root
        self._finalizer = (
            None if self.keep else weakref.finalize(self, shutil.rmtree, str(root), True)
        )

    @contextlib.contextmanager
    def call(self, name: str) -> Iterator[Path]:
        """A new directory for one call (``name`` in it), removed after unless kept."""
        slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
        path = self.root / f"{_stamp()}-{slug}-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        path.chmod(0o755)  # the sandbox's user reads the script in place
        try:
            yield path
        finally:
            if not self.keep:
                shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove the server's directory, unless it is kept."""
        if self._finalizer is not None:
            self._finalizer()


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def spec_of(**fields: Any) -> ExperimentSpec:
    try:
        return ExperimentSpec(**fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise Refused(f"the experiment is not valid: {problems}.") from None


def _checked_args(args: Sequence[str] | None) -> tuple[str, ...]:
    try:
        return check_args(list(args or ()))
    except ExperimentExecutionError as e:
        raise Refused(str(e)) from None


def _file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file beside the script, or None."""
    if not name or len(name) > 200:
        return "it must have 1 to 200 characters"
    if not set(name) <= _FILE_NAME_CHARS:
        return "use letters, digits, '.', '_', '-' and '/' only"
    parts = PurePosixPath(name).parts
    if name.startswith("/") or any(part in (".", "..") for part in parts):
        return "it must be a relative path without '.' or '..'"
    if name == SCRIPT_NAME:
        return f"{SCRIPT_NAME} is the code itself"
    return None


def _write(top: Path, relative: str, content: bytes) -> None:
    """Write ``top/relative``, every directory and the file readable by the sandbox's user."""
    path = top / relative
    try:
        for parent in reversed(PurePosixPath(relative).parents):  # ".", "a", "a/b"
            directory = top / parent
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        path.write_bytes(content)
        path.chmod(0o644)
    except OSError as e:
        raise Refused(f"file {relative!r} cannot be written beside the script: {e}.") from None
