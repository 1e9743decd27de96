"""One line saying what to do, when a failed run's own output shows the sandbox was why.

Never a guess: a hint comes only from the script's own error (the last line
of its stderr, where a traceback names what was raised, or the ``error`` of
its ``{"success": false}`` result line) matching a failure the sandbox
causes, or from a clean exit without a result line. Each rule is a row of
``RULES``; the first that matches gives the hint.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner.core.text import printable
from runner.experiment.verdict import Ending, find_result_line, last_line

PREFIX = "Hint: "

#: Absolute paths inside the sandbox that are its own, not the host's.
SANDBOX_PATHS = tuple(PurePosixPath(p) for p in ("/tmp", "/proc", "/sys", "/dev"))  # noqa: S108 - names, not files


@dataclass(frozen=True)
class Evidence:
    """What a failed run printed that can tell why it failed."""

    #: The script's own error: its stderr's last line, and its result line's ``error``.
    errors: tuple[str, ...]
    #: It exited 0 without printing a result line.
    no_result_line: bool = False

    @classmethod
    def of(cls, ending: Ending, stdout: str, stderr: str) -> Evidence:
        if ending.timed_out or ending.oom_killed or not ending.exit_reported:
            return cls(())  # the sandbox ended it, which the message already says
        payload = find_result_line(stdout)
        errors = [last_line(stderr)]
        if payload is not None and payload.get("success") is False and payload.get("error"):
            errors.append(printable(str(payload["error"])))
        return cls(
            tuple(error for error in errors if error),
            no_result_line=ending.exit_code == 0 and payload is None,
        )


@dataclass(frozen=True)
class Context:
    """What the sandbox of the run was: its image, and the host paths it could see."""

    image: str
    #: Mounted read-only at their own paths: the script's directory, then the inputs.
    visible: Sequence[Path]


@dataclass(frozen=True)
class Rule:
    """An error the sandbox explains: its pattern, and the hint for a match."""

    name: str
    pattern: re.Pattern[str]
    hint: Callable[[re.Match[str], Context], str | None]


def _read_only(match: re.Match[str], context: Context) -> str:
    return (
        "the sandbox's file system is read-only apart from /tmp (the script's directory "
        "and inputs are mounted read-only): write scratch files under /tmp, and files to "
        "keep into the working directory or $OUTPUT_DIR with outputs on "
        "(outputs_dir=..., runner run --outputs DIR)."
    )


def _denied_in_a_mount(match: re.Match[str], context: Context) -> str | None:
    """gVisor answers a write into a read-only mount with EACCES, not EROFS.

    Only for a relative path (the working directory is the script's, or its
    links) or one inside the read-only mounts: the sandbox user may read all of
    those, so a denial there is a write.
    """
    raw = match["single"] or match["double"]
    path = PurePosixPath(posixpath.normpath(raw))
    inside = not path.is_absolute() or any(
        path.is_relative_to(PurePosixPath(p)) for p in context.visible
    )
    return _read_only(match, context) if inside else None


def _no_network(match: re.Match[str], context: Context) -> str:
    return (
        "the sandbox has no network (no name resolution, no route), so nothing can be "
        "downloaded, scikit-learn's fetch_* data sets included: get the data on the host "
        "and pass the file with inputs= (CLI: --input PATH)."
    )


def _missing_module(match: re.Match[str], context: Context) -> str:
    name = match["module"]
    return (
        f"there is no module {name!r} in the sandbox image {printable(context.image, 200)}. "
        "To use a package, build an image with it: list it in a requirements file, run "
        "`runner image build --requirements FILE --tag NAME`, then "
        "`runner run --image NAME` (Python: ExperimentRunner(image=NAME))."
    )


def _missing_file(match: re.Match[str], context: Context) -> str | None:
    path = PurePosixPath(posixpath.normpath(match["single"] or match["double"]))
    seen = (*SANDBOX_PATHS, *(PurePosixPath(p) for p in context.visible))
    if any(path.is_relative_to(place) for place in seen):
        return None  # the sandbox shows that place: the file is simply not there
    where = (
        f"only {printable(str(context.visible[0]), 200)} and the inputs are"
        if context.visible
        else "only the inputs are"
    )
    return (
        f"{printable(str(path), 200)} is outside what the sandbox sees ({where} mounted, "
        "at their own paths): pass it with inputs= (CLI: --input PATH)."
    )


#: Matched against each of the script's errors, whole (``fullmatch``), in this order.
RULES: tuple[Rule, ...] = (
    Rule(
        "read-only file system",
        re.compile(r"(?:[\w.]+: )?\[Errno 30\] Read-only file system(?:: .*)?"),
        _read_only,
    ),
    Rule(
        "permission denied in a read-only mount",
        re.compile(
            r"(?:PermissionError: )?\[Errno 13\] Permission denied: "
            r"(?:'(?P<single>[^']+)'|\"(?P<double>[^\"]+)\")"
        ),
        _denied_in_a_mount,
    ),
    Rule(
        "no network",
        # What the C library's resolver and the kernel say, as socket.gaierror, OSError,
        # URLError and requests word them; never a bare exception name.
        re.compile(
            r".*(?:Temporary failure in name resolution|Name or service not known|"
            r"No address associated with hostname|\[Errno 101\] Network is unreachable|"
            r"\[Errno 113\] No route to host).*"
        ),
        _no_network,
    ),
    Rule(
        "missing module",
        re.compile(r"(?:ModuleNotFoundError: )?No module named '(?P<module>[A-Za-z_]\w*)'"),
        _missing_module,
    ),
    Rule(
        "file outside the mounts",
        re.compile(
            r"(?:FileNotFoundError: )?\[Errno 2\] No such file or directory: "
            r"(?:'(?P<single>/[^']*)'|\"(?P<double>/[^\"]*)\")"
        ),
        _missing_file,
    ),
)

NO_RESULT_LINE = (
    "a script reports its result as its last JSON object line on stdout, for example "
    'print(json.dumps({"success": True, "metrics": {"accuracy": 0.87}})) (finite numbers), '
    'or {"success": False, "error": "..."} for a failure.'
)


def explain(evidence: Evidence, context: Context) -> str | None:
    """The hint line (``Hint: ...``) for a failed run, or None when its output shows no cause."""
    for error in evidence.errors:
        for rule in RULES:
            match = rule.pattern.fullmatch(error)
            if match is not None and (hint := rule.hint(match, context)) is not None:
                return PREFIX + hint
    if evidence.no_result_line:
        return PREFIX + NO_RESULT_LINE
    return None
