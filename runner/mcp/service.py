"""``runner mcp``: the sandbox as Model Context Protocol tools for any agent.

Three tools, each call a fresh hardened container under the server's policy:
``run_python`` (code, a few small files beside it, arguments), ``run_experiment``
(an ``ExperimentSpec`` on a data set the server was given by name) and
``list_results`` (the server's history). A client may lower the timeout and
the memory cap, never raise them; oversized requests are refused with a
message. What a script does, failure included, is an ordinary tool result
(``isError`` when it failed), never a protocol error. Logs go to stderr:
stdout is the protocol.

Needs the official SDK: ``pip install 'experiment-runner[mcp]'``. The SDK is
imported by ``build_server`` only, so the rest (``SandboxService``) runs and is
tested without it.
"""

import argparse
import base64
import itertools
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, ExperimentSpec, PreprocessingConfig, TaskType
from runner.core.settings import ExperimentDefaults, Transfer
from runner.core.sizes import parse_size
from runner.experiment.checks import check_args
from runner.experiment.codegen import CodeGenerator
from runner.experiment.runner import ExperimentRunner
from runner.results.history import ResultsHistory, best_first
from runner.sandbox.engine import DockerEngine, Engine

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

log = logging.getLogger(__name__)

SERVER_NAME = "experiment-runner"
SCRIPT_NAME = "main.py"
#: What a client may send, by default: code, and small text files beside it.
MAX_CODE_BYTES = 256 * 1024
MAX_FILES = 20
MAX_FILES_BYTES = 1024 * 1024
#: The smallest memory cap a client may ask for (a Python interpreter needs some).
MIN_MEMORY = 32 * 1024**2
#: Bytes of stdout and of stderr in a tool result (the tail; the history keeps more).
TAIL_BYTES = 16 * 1024
#: Images among the artifacts come back as image content up to these sizes.
MAX_IMAGE_BYTES = 4 * 1024**2
MAX_IMAGES_BYTES = 8 * 1024**2
#: Text of a tool result: a summary, then at most this much of the script's own words.
TEXT_CHARS = 2000
#: Runners kept for distinct (timeout, memory) requests; each checks its engine once.
MAX_RUNNERS = 8
_FILE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
#: Images recognised by their first bytes, never by the name the script chose.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class Refused(Exception):
    """A request the server will not run; the message says why and what is allowed."""


# What the tools return ---------------------------------------------------------


class Limits(BaseModel):
    """The limits a run had: the server's, or lower ones the client asked for."""

    timeout: float
    memory_limit: str
    cpu_limit: float


class ArtifactInfo(BaseModel):
    """A file the script wrote to its working directory."""

    name: str
    size: int
    sha256: str
    #: Set for images, which also come back as image content.
    mime_type: str | None = None


class RunReport(BaseModel):
    """How one sandboxed run ended, for an agent."""

    model_config = {"protected_namespaces": ()}

    experiment_name: str
    success: bool
    error_message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    stdout: str = ""
    stderr: str = ""
    #: True when only the tail of the output is here.
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    execution_time: float
    image_id: str | None = None
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
    artifacts_message: str | None = None
    limits: Limits
    mlflow_run_id: str | None = None
    tracking_error: str | None = None


class ResultSummary(BaseModel):
    """One recorded result, in brief."""

    model_config = {"protected_namespaces": ()}

    experiment_name: str
    iteration: int
    model_type: str
    success: bool
    metrics: dict[str, float]
    execution_time: float
    timed_out: bool
    oom_killed: bool
    error_message: str | None
    timestamp: datetime


class ResultList(BaseModel):
    """Recorded results, best first."""

    results: list[ResultSummary]
    #: How many matched (``results`` holds at most ``limit`` of them).
    total: int


@dataclass(frozen=True)
class Image:
    """An image among a run's artifacts, for image content."""

    name: str
    mime_type: str
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """A finished run: the report, a short text, and its images."""

    report: RunReport
    text: str
    images: tuple[Image, ...] = ()


# The service: everything but the protocol ------------------------------------------


@dataclass(frozen=True)
class ServerPolicy:
    """What the server allows; clients can only ask for less."""

    timeout: float
    memory_limit: str
    cpu_limit: float
    image: str | None = None
    runtime: str | None = None
    transfer: Transfer | None = None
    #: Data sets ``run_experiment`` may use, by name; the client never names a host path.
    data: Mapping[str, Path] = field(default_factory=dict)
    #: The results history (None: results are kept in memory for this server's life).
    history: Path | None = None
    tracking_uri: str | None = None
    #: Where each call's script and outputs are kept (None: removed after the call).
    workdir: Path | None = None
    max_code_bytes: int = MAX_CODE_BYTES
    max_files: int = MAX_FILES
    max_files_bytes: int = MAX_FILES_BYTES

    @classmethod
    def from_settings(cls, settings: ExperimentDefaults, **overrides: Any) -> "ServerPolicy":
        """The settings' limits, with ``overrides`` (None values ignored) on top."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return cls(
            **{
                "timeout": float(settings.experiment_timeout),
                "memory_limit": settings.memory_limit,
                "cpu_limit": settings.cpu_limit,
                "image": settings.image,
                "runtime": settings.runtime,
                "transfer": settings.transfer,
                "tracking_uri": settings.tracking_uri,
                **given,
            }
        )


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
        # Fail at start, not at the first call, when tracking cannot work at all.
        self._runner(policy.timeout, policy.memory_limit)

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
            memory = memory_limit.strip()
        return Limits(timeout=timeout, memory_limit=memory, cpu_limit=policy.cpu_limit)

    def _runner(self, timeout: float, memory_limit: str) -> ExperimentRunner:
        key = (timeout, memory_limit)
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                if self._engine is None:
                    self._engine = DockerEngine()
                if len(self._runners) >= MAX_RUNNERS:
                    oldest = next(iter(self._runners))
                    self._runners.pop(oldest).close()
                runner = ExperimentRunner(
                    timeout=timeout,
                    image=self.policy.image,
                    memory_limit=memory_limit,
                    cpu_limit=self.policy.cpu_limit,
                    runtime=self.policy.runtime,
                    transfer=self.policy.transfer,
                    history=self._history,
                    tracking_uri=self.policy.tracking_uri,
                    settings=self.settings,
                    engine=self._engine,
                )
                self._runners[key] = runner
            return runner

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
    ) -> Outcome:
        """Run ``code`` as a script beside ``files``; ``Refused`` before anything runs."""
        written = self.check_code(code, files)
        checked = _checked_args(args)
        limits = self.limits(timeout, memory_limit)
        spec = _spec(experiment_name=name, model_type="script")
        with self._call_directory(spec.experiment_name) as directory:
            code_dir = directory / "code"
            for relative, content in written.items():
                _write(code_dir, relative, content)
            return await self._run(code_dir / SCRIPT_NAME, spec, limits, checked, directory)

    async def run_experiment(
        self,
        spec: ExperimentSpec,
        dataset: str,
        target_column: str,
        task_type: TaskType,
        timeout: float | None = None,
        memory_limit: str | None = None,
    ) -> Outcome:
        """Generate the spec's script for a known data set and run it."""
        data = self.policy.data.get(dataset)
        if data is None:
            known = ", ".join(sorted(self.policy.data)) or "none (start the server with --data)"
            raise Refused(f"unknown dataset {dataset!r}; this server has: {known}.")
        limits = self.limits(timeout, memory_limit)
        with self._call_directory(spec.experiment_name) as directory:
            try:
                script = CodeGenerator(directory / "experiments").generate(
                    spec, data, target_column, task_type
                )
            except (ValueError, FileNotFoundError) as e:
                raise Refused(str(e)) from e
            return await self._run(script, spec, limits, (), directory)

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
            results=[
                ResultSummary(
                    experiment_name=r.experiment_name,
                    iteration=r.iteration,
                    model_type=r.model_type,
                    success=r.success,
                    metrics=r.metrics,
                    execution_time=r.execution_time,
                    timed_out=r.timed_out,
                    oom_killed=r.oom_killed,
                    error_message=_cut(r.error_message, 500),
                    timestamp=r.timestamp,
                )
                for r in shown
            ],
            total=len(results),
        )

    def close(self) -> None:
        """Remove whatever the runners keep (none keeps a pool, so this is quick)."""
        with self._lock:
            for runner in self._runners.values():
                runner.close()
            self._runners.clear()

    # one run -----------------------------------------------------------------------

    async def _run(
        self,
        script: Path,
        spec: ExperimentSpec,
        limits: Limits,
        args: Sequence[str],
        directory: Path,
    ) -> Outcome:
        runner = self._runner(limits.timeout, limits.memory_limit)
        iteration = next(self._iterations.setdefault(spec.experiment_name, itertools.count()))
        result = await runner.arun(
            script, spec, iteration, args=args, outputs_dir=directory / "outputs"
        )
        if self._history is None:
            self._memory.append(result)
        images = _images(result)
        report = _report(result, limits, {image.name: image.mime_type for image in images})
        return Outcome(report, _text(report), images)

    def _call_directory(self, name: str) -> "_CallDirectory":
        return _CallDirectory(self.policy.workdir, name)


class _CallDirectory:
    """A directory for one call: kept under the workdir, or temporary."""

    def __init__(self, workdir: Path | None, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.path: Path | None = None

    def __enter__(self) -> Path:
        if self.workdir is None:
            self.path = Path(tempfile.mkdtemp(prefix="runner-mcp-"))
        else:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name)[:40]
            self.path = self.workdir.resolve() / f"{stamp}-{slug}-{uuid.uuid4().hex[:6]}"
            self.path.mkdir(parents=True)
        self.path.chmod(0o755)  # the sandbox's user reads the script in place
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.workdir is None and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def _spec(**fields: Any) -> ExperimentSpec:
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


def _sniff(data: bytes) -> str | None:
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _images(result: ExperimentResult) -> tuple[Image, ...]:
    """The artifacts that are images, read before their directory goes, within the caps."""
    images: list[Image] = []
    total = 0
    for artifact in result.artifacts:
        if artifact.size > MAX_IMAGE_BYTES or total + artifact.size > MAX_IMAGES_BYTES:
            continue
        try:
            data = Path(artifact.path).read_bytes()
        except OSError:
            continue
        mime = _sniff(data)
        if mime is not None:
            images.append(Image(artifact.name, mime, data))
            total += len(data)
    return tuple(images)


def _tail(text: str) -> tuple[str, bool]:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= TAIL_BYTES:
        return text, False
    return data[-TAIL_BYTES:].decode("utf-8", "replace"), True


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _report(result: ExperimentResult, limits: Limits, images: Mapping[str, str]) -> RunReport:
    stdout, stdout_cut = _tail(result.stdout)
    stderr, stderr_cut = _tail(result.stderr)
    return RunReport(
        experiment_name=result.experiment_name,
        success=result.success,
        error_message=result.error_message,
        metrics=result.metrics,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        oom_killed=result.oom_killed,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=stdout_cut or result.stdout_truncated,
        stderr_truncated=stderr_cut or result.stderr_truncated,
        execution_time=result.execution_time,
        image_id=result.image_id,
        peak_memory_bytes=result.peak_memory_bytes,
        cpu_seconds=result.cpu_seconds,
        artifacts=[
            ArtifactInfo(name=a.name, size=a.size, sha256=a.sha256, mime_type=images.get(a.name))
            for a in result.artifacts
        ],
        artifacts_message=result.artifacts_message,
        limits=limits,
        mlflow_run_id=result.mlflow_run_id,
        tracking_error=result.tracking_error,
    )


def _text(report: RunReport) -> str:
    """A few lines for a reader: how it ended, metrics or error, then the output's tail."""
    if report.success:
        outcome = "succeeded"
    elif report.timed_out:
        outcome = f"timed out after {report.limits.timeout:g} s"
    elif report.oom_killed:
        outcome = f"ran out of memory ({report.limits.memory_limit})"
    else:
        outcome = "failed"
    lines = [f"{outcome} in {report.execution_time:.2f} s, exit code {report.exit_code}"]
    if report.metrics:
        lines.append("metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in report.metrics.items()))
    if report.error_message:
        lines.append(f"error: {report.error_message}")
    if report.artifacts:
        lines.append("artifacts: " + ", ".join(a.name for a in report.artifacts[:20]))
    if report.tracking_error:
        lines.append(f"note: {report.tracking_error}")
    for stream in ("stdout", "stderr"):
        text: str = getattr(report, stream)
        if text.strip():
            shown = text[-TEXT_CHARS:]
            more = "..." if len(shown) < len(text) else ""
            lines.append(f"{stream} (end):\n{more}{shown.rstrip()}")
    return "\n".join(lines)


# The protocol ----------------------------------------------------------------------


def build_server(service: SandboxService) -> "MCPServer[Any]":
    """An ``MCPServer`` (the official SDK) serving ``service``'s three tools."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
    except ImportError as e:
        raise ExperimentExecutionError(
            "`runner mcp` needs the MCP SDK, which is not installed.",
            hint="install the extra: pip install 'experiment-runner[mcp]'.",
        ) from e

    policy = service.policy
    server: MCPServer[Any] = MCPServer(
        SERVER_NAME,
        instructions=(
            "Runs Python in fresh, hardened, single-use containers with scikit-learn, "
            "pandas, numpy and matplotlib, and no network. A script reports metrics by "
            'printing a last line like {"success": true, "metrics": {"accuracy": 0.9}}. '
            "Files written to the working directory come back as artifacts (images as "
            f"images). Limits: {policy.timeout:g} s, {policy.memory_limit} memory, "
            f"{policy.cpu_limit:g} CPU."
        ),
        log_level="INFO",
    )

    def outcome_result(outcome: Outcome) -> CallToolResult:
        content: list[Any] = [TextContent(text=outcome.text)]
        content += [
            ImageContent(data=base64.b64encode(i.data).decode(), mime_type=i.mime_type)
            for i in outcome.images
        ]
        return CallToolResult(
            content=content,
            structured_content=outcome.report.model_dump(mode="json"),
            is_error=not outcome.report.success,
        )

    async def guarded(call: Callable[[], Awaitable[Outcome]]) -> CallToolResult:
        """A refusal, or a machine that cannot run anything, is a tool error with a message."""
        try:
            return outcome_result(await call())
        except Refused as e:
            raise ToolError(f"Refused: {e}") from None
        except ExperimentExecutionError as e:
            raise ToolError(f"Could not run: {e}") from None

    annotations = ToolAnnotations(read_only_hint=False, open_world_hint=False)

    @server.tool(annotations=annotations)
    async def run_python(
        code: Annotated[str, Field(description="Python source, run as main.py")],
        files: Annotated[
            dict[str, str] | None,
            Field(description="small text files beside the script: relative name -> content"),
        ] = None,
        args: Annotated[list[str] | None, Field(description="the script's sys.argv[1:]")] = None,
        timeout: Annotated[
            float | None,
            Field(description=f"seconds, at most {policy.timeout:g} (the default)"),
        ] = None,
        memory_limit: Annotated[
            str | None,
            Field(description=f"e.g. '512m', at most {policy.memory_limit} (the default)"),
        ] = None,
        name: Annotated[str, Field(description="a name for the run in the results")] = "run_python",
    ) -> Annotated[CallToolResult, RunReport]:
        """Run Python code in a fresh sandbox (no network, read-only files but its working
        directory and /tmp) and return how it ended: success, metrics, exit code, timeout,
        out-of-memory, the output's tail, and the files it wrote."""
        return await guarded(
            lambda: service.run_python(code, files, args, timeout, memory_limit, name)
        )

    @server.tool(annotations=annotations)
    async def run_experiment(
        experiment_name: str,
        model_type: Annotated[
            str, Field(description="a scikit-learn estimator, e.g. RandomForestClassifier")
        ],
        dataset: Annotated[
            str, Field(description=f"one of: {', '.join(sorted(policy.data)) or '(none)'}")
        ],
        target_column: str,
        task_type: Literal["classification", "regression"] = "classification",
        model_params: dict[str, Any] | None = None,
        preprocessing: PreprocessingConfig | None = None,
        hypothesis: str = "",
        reasoning: str = "",
        timeout: float | None = None,
        memory_limit: str | None = None,
    ) -> Annotated[CallToolResult, RunReport]:
        """Train and evaluate a scikit-learn model on one of the server's data sets, in a
        fresh sandbox; returns the metrics and how the run ended."""

        async def call() -> Outcome:
            spec = _spec(
                experiment_name=experiment_name,
                model_type=model_type,
                model_params=model_params or {},
                preprocessing=preprocessing or PreprocessingConfig(),
                hypothesis=hypothesis,
                reasoning=reasoning,
            )
            return await service.run_experiment(
                spec, dataset, target_column, task_type, timeout, memory_limit
            )

        return await guarded(call)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def list_results(
        name: Annotated[
            str | None, Field(description="only experiments whose name contains this")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> ResultList:
        """The results this server recorded, best first (by accuracy, r2, f1 or roc_auc)."""
        return service.list_results(name, limit)

    return server


# The command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``runner mcp``'s options (the server's policy and its transport)."""
    parser.add_argument("--timeout", type=float, help="seconds per run, the most a client gets")
    parser.add_argument("--memory", help="memory cap per run, the most a client gets (e.g. 2g)")
    parser.add_argument("--cpus", type=float, help="CPU cap per run")
    parser.add_argument("--runtime", help="OCI runtime registered with the engine: runc or runsc")
    parser.add_argument("--image", help="the sandbox image (default: RUNNER_IMAGE or pinned)")
    parser.add_argument("--transfer", choices=("auto", "bind", "copy"))
    parser.add_argument(
        "--data", action="append", default=[], metavar="NAME=PATH",
        help="a CSV data set run_experiment may use by NAME (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, metavar="DIR",
        help="keep each call's script and outputs under DIR (default: removed after the call)",
    )  # fmt: skip
    parser.add_argument(
        "--max-code-bytes", type=int, default=MAX_CODE_BYTES, metavar="N",
        help=f"largest code a client may send (default {MAX_CODE_BYTES})",
    )  # fmt: skip
    parser.add_argument(
        "--http", action="store_true",
        help="serve streamable HTTP instead of stdio (on --host, 127.0.0.1 by default)",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")


def data_sets(pairs: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` pairs as a mapping; ``ExperimentExecutionError`` for a bad one."""
    data: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ExperimentExecutionError(
                f"--data {pair!r} is not NAME=PATH.", hint="e.g. --data churn=data/churn.csv"
            )
        data[name] = Path(path).expanduser().resolve()
    return data


def serve(args: argparse.Namespace, history: Path | None, engine: Engine | None = None) -> int:
    """Run the server until the client goes (stdio) or it is interrupted (HTTP)."""
    settings = ExperimentDefaults()
    policy = ServerPolicy.from_settings(
        settings,
        timeout=args.timeout,
        memory_limit=args.memory,
        cpu_limit=args.cpus,
        image=args.image,
        runtime=args.runtime,
        transfer=args.transfer,
        data=data_sets(args.data),
        history=history,
        tracking_uri=args.mlflow,
        workdir=args.workdir,
        max_code_bytes=args.max_code_bytes,
    )
    service = SandboxService(policy, engine=engine, settings=settings)
    server = build_server(service)
    where = f"http://{args.host}:{args.port}/mcp" if args.http else "stdio"
    log.info("experiment-runner MCP server on %s", where)
    try:
        if args.http:
            server.run("streamable-http", host=args.host, port=args.port)
        else:
            server.run("stdio")
    finally:
        service.close()
    return 0
