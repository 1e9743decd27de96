"""What the MCP tools return, made from an ``ExperimentResult``: a report for the
agent (structured content), a few lines of text, and the images among the artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from runner.core.models import (
    ArtifactInfo,
    ExperimentResult,
    MetricsSource,
    RunOutcome,
    Tracking,
    Verdict,
    fields_of,
)
from runner.core.provenance import Provenance

#: Bytes of stdout and of stderr in a tool result (the tail; the history keeps more).
TAIL_BYTES = 16 * 1024


#: Images among the artifacts come back as image content up to these sizes.
MAX_IMAGE_BYTES = 4 * 1024**2


MAX_IMAGES_BYTES = 8 * 1024**2


#: Text of a tool result: a summary, then at most this much of the script's own words.
TEXT_CHARS = 2000


#: Images recognised by their first bytes, never by the name the script chose.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class Limits(BaseModel):
    """The limits a run had: the server's, or lower ones the client asked for."""

    timeout: float
    memory_limit: str
    cpu_limit: float


class ReportedArtifact(ArtifactInfo):
    """A file the script wrote to its working directory (its host path is not shown)."""

    #: Set for images, which also come back as image content.
    mime_type: str | None = None


class RunReport(Tracking, RunOutcome, Verdict):
    """How one sandboxed run ended, for an agent: the result's verdict, outcome and
    tracking, with the output's tail and the limits the run had."""

    experiment_name: str
    artifacts: list[ReportedArtifact] = Field(default_factory=list)
    limits: Limits
    #: The result's ID, and what ran (``Provenance``), with file names for host paths.
    run_id: str | None = None
    provenance: Provenance | None = None


class ResultSummary(BaseModel):
    """One recorded result, in brief."""

    model_config = {"protected_namespaces": ()}

    experiment_name: str
    iteration: int
    model_type: str
    success: bool
    metrics: dict[str, float]
    #: Who computed ``metrics``: the server, on held-out rows ("holdout"), or the script.
    metrics_source: MetricsSource = "script"
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


def _sniff(data: bytes) -> str | None:
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def images_of(result: ExperimentResult) -> tuple[Image, ...]:
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


def report_of(result: ExperimentResult, limits: Limits, images: Mapping[str, str]) -> RunReport:
    """The agent's report of ``result``: each stream's tail (marked truncated when cut
    here), the artifacts without their host paths, no host name."""
    stdout, stdout_cut = _tail(result.stdout)
    stderr, stderr_cut = _tail(result.stderr)
    return RunReport(
        **fields_of(result, Verdict),
        **fields_of(result, Tracking),
        **{
            **fields_of(result, RunOutcome),
            "stdout": stdout,
            "stderr": stderr,
            "stdout_truncated": stdout_cut or result.stdout_truncated,
            "stderr_truncated": stderr_cut or result.stderr_truncated,
            "node": None,  # the server's host name is none of the client's business
        },
        experiment_name=result.experiment_name,
        artifacts=[
            ReportedArtifact(**fields_of(a, ArtifactInfo), mime_type=images.get(a.name))
            for a in result.artifacts
        ],
        limits=limits,
        run_id=result.run_id,
        provenance=_without_host_paths(result.provenance),
    )


def _without_host_paths(provenance: Provenance | None) -> Provenance | None:
    """``provenance`` with each host path cut to its file name (as artifacts are shown)."""
    if provenance is None:
        return None
    return provenance.model_copy(
        update={
            "script_path": PurePosixPath(provenance.script_path).name,
            "inputs": [
                i.model_copy(update={"path": PurePosixPath(i.path).name}) for i in provenance.inputs
            ],
        }
    )


def summary_of(result: ExperimentResult) -> ResultSummary:
    """``result`` in brief, for ``list_results`` (its error cut short)."""
    return ResultSummary(
        **{**fields_of(result, ResultSummary), "error_message": _cut(result.error_message, 500)}
    )


def text_of(report: RunReport) -> str:
    """A few lines for a reader: how it ended, metrics or error, then the output's tail."""
    if report.success:
        outcome = "succeeded"
    elif report.timed_out:
        outcome = f"timed out after {report.limits.timeout:g} s"
    elif report.oom_killed:
        outcome = f"ran out of memory ({report.limits.memory_limit})"
    else:
        outcome = "failed"
    where = " in a warm sandbox" if report.warm_start else ""
    lines = [f"{outcome} in {report.execution_time:.2f} s{where}, exit code {report.exit_code}"]
    if report.metrics:
        lines.append(
            ("verified metrics (the server's scores on held-out rows): " if report.verified
             else "metrics (the script's own, unverified): ")
            + ", ".join(f"{k}={v:.6g}" for k, v in report.metrics.items())
        )  # fmt: skip
    if report.verified and report.reported_metrics:
        claimed = report.reported_metrics.items()
        lines.append("the script reported: " + ", ".join(f"{k}={v:.6g}" for k, v in claimed))
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
