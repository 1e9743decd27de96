"""Locking requirements for the sandbox's Python with uv, and reading the locks.

A lock pins every package (dependencies included) at an exact version with the
sha256 of its files, for CPython 3.11 on manylinux x86_64, wheels only: what
the image installs offline with ``pip install --require-hashes``. The locker is
``uv pip compile --generate-hashes``.

Every requirements file and lock is untrusted input (an agent may have written
it), and uv and pip obey the options in such a file over their command line: an
``-e DIR``, a ``--no-binary NAME`` with ``--find-links``, or a name that reads as
an archive's file name makes them run a package's build backend on this machine,
and an index option chooses the servers they contact. So each file is read here
first, line by line: a requirements file may hold only plain requirements (a
name, optional extras, version specifiers and an optional marker), a lock only
``NAME[extras]==VERSION`` entries with ``--hash=sha256:`` hashes; anything else is
refused, naming the file, the line and why, before uv or pip is started. They
then read copies written from what was read here, never the files themselves,
from a private directory, with their own configuration off and the one index
(``RUNNER_INDEX_URL``) on their command line (``run_tool``).

``python -m runner.lock`` regenerates the default image's lock from its
``requirements.in`` (in a checkout: ``images/sandbox/``).
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import DEFAULT_INDEX_URL, ExperimentDefaults
from runner.core.text import printable
from runner.image.definition import image_dir

_Log = Callable[[str], None]
#: The image's interpreter, as the locker and pip name it.
PYTHON_VERSION = "3.11"
UV_PLATFORM = "x86_64-manylinux_2_28"
#: ``pip download`` takes each platform tag it may accept by name (manylinux2014
#: brings manylinux2010 and manylinux1 with it).
PIP_PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{m}_x86_64" for m in range(17, 29)))
REGENERATE = "python -m runner.lock"
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
#: pip's own test for a comment (``COMMENT_RE`` in pip's req_file): a ``#`` at the
#: start or after whitespace; uv reads comments the same way.
_COMMENT = re.compile(r"(^|\s+)#.*$")
#: pip reads a file in the encoding a PEP 263 line among its first two declares.
_CODING = re.compile(r"coding[:=]\s*([-\w.]+)")
#: pip's archive endings: a requirement that ends so is taken for a local file by
#: pip and uv alike (``evil==1.0+x.tar.gz`` is a valid pin, and a file's name).
_ARCHIVES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz",
             ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma")  # fmt: skip
_OPTIONS = (
    (("-e", "--editable"), "an editable requirement: uv would run its build backend here"),
    (("-r", "--requirement", "-c", "--constraint"), "an include: only this file is read"),
    (
        ("-i", "--index-url", "--extra-index-url", "--no-index", "-f", "--find-links",
         "--trusted-host"),
        "an index option: packages come from the configured index (RUNNER_INDEX_URL) alone",
    ),
    (
        ("--no-binary", "--only-binary", "--prefer-binary", "--no-build-isolation",
         "--config-settings", "--global-option"),
        "a build option: wheels only, always",
    ),
    (("--hash",), "a hash outside a lock entry"),
)  # fmt: skip
#: The tools' own variables passed on to them: where downloads are cached, which
#: certificates are trusted, how long to wait. None names a server or allows a build.
_KEPT_VARIABLES = frozenset(
    {"PIP_CACHE_DIR", "UV_CACHE_DIR", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "UV_HTTP_TIMEOUT"}
)
REQUIREMENTS_HINT = (
    "a requirements file holds one requirement per line: a name, optional [extras], version "
    "specifiers and an optional ; marker (tabulate==0.9.0, xgboost>=2); the packages come as "
    "wheels from the configured index (RUNNER_INDEX_URL) alone."
)
LOCK_HINT = (
    "a lock holds only NAME==VERSION entries with --hash=sha256: hashes, as `runner image "
    "build --requirements FILE` writes it; another index is set with RUNNER_INDEX_URL, never "
    "in the file."
)


@dataclass(frozen=True)
class LockEntry:
    """One entry of a lock: a package pinned at one version, with its files' hashes."""

    name: str
    version: str
    hashes: tuple[str, ...]
    extras: tuple[str, ...] = ()

    def pin(self) -> str:
        """The entry as the one line pip and uv are given."""
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        hashes = " ".join(f"--hash=sha256:{digest}" for digest in self.hashes)
        return f"{self.name}{extras}=={self.version} {hashes}"


def uv_executable() -> str:
    """The uv binary: the one the ``uv`` package installed, else ``uv`` on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if found is None:
        raise ExperimentExecutionError(
            "uv, the locker, was not found.",
            hint="pip install uv (it is a dependency of experiment-runner).",
        )
    return found


def compile_lock(
    requirements: Sequence[Path],
    output: Path,
    *,
    constraints: Path | None = None,
    index_url: str = DEFAULT_INDEX_URL,
    log: _Log = print,
) -> Path:
    """Resolve ``requirements`` for the image's Python and write a hash lock to ``output``.

    Only wheels for CPython 3.11 manylinux x86_64 from ``index_url`` count;
    ``constraints`` (the runner's own lock) keeps its packages at its versions. An
    existing ``output`` is taken as the preferred versions, so re-locking moves
    nothing that need not move. Every file is read (``read_requirements``,
    ``read_lock``) before uv starts. Raises with the locker's explanation when no
    such set of packages exists.
    """
    read = [(path, read_requirements(path)) for path in requirements]
    if constraints is not None:
        check_lock(constraints)
    preferred = read_lock(output) if output.exists() else []
    log(f"locking {', '.join(p.name for p in requirements)} with uv into {output}")
    with tempfile.TemporaryDirectory(prefix="runner-lock-") as tmp:
        work = Path(tmp)
        sources = []
        for number, (path, parsed) in enumerate(read):
            source = work / f"{number}-{path.name}"
            source.write_text("".join(f"{requirement}\n" for requirement in parsed))
            sources.append(source)
        locked = work / "requirements.lock"
        if preferred:
            locked.write_text(lock_text(preferred))
        cmd = [
            uv_executable(), "pip", "compile", "--quiet", "--generate-hashes",
            # No uv.toml, pyproject.toml or user configuration: the index is this one.
            "--no-config", "--default-index", index_url,
            # This interpreter: uv would otherwise look for one, a .venv among them.
            "--python", sys.executable, "--no-python-downloads",
            "--python-version", PYTHON_VERSION, "--python-platform", UV_PLATFORM,
            "--only-binary", ":all:", "--no-annotate",
            "--custom-compile-command", REGENERATE if constraints is None else "runner image build",
            "--output-file", str(locked),
            *(["--constraint", str(constraints.absolute())] if constraints else []),
            *(str(source) for source in sources),
        ]  # fmt: skip
        result = run_tool(cmd, work, log=log)
        if result.returncode != 0:
            raise ExperimentExecutionError(
                f"No lock for {', '.join(map(str, requirements))}: {_uv_cause(result.stderr)}",
                hint=f"every package needs a wheel for CPython {PYTHON_VERSION} on manylinux "
                "x86_64 on the configured index, and must agree with the default image's pins"
                + (f" ({constraints})" if constraints else "")
                + "; correct the names or versions, then build again.",
            )
        check_lock(locked)
        shutil.copyfile(locked, output)
    return output


def run_tool(cmd: list[str], work: Path, *, log: _Log = print) -> subprocess.CompletedProcess[str]:
    """Run uv or pip from an empty directory inside ``work``, with none of their own settings.

    Their ``PIP_*`` and ``UV_*`` variables could name an index, find-links, a
    configuration file or a build option: all but a few harmless ones
    (``_KEPT_VARIABLES``) are left out, and pip reads no configuration file (uv
    is given ``--no-config``). The empty working directory holds nothing either
    could take for a package, a project or an interpreter.
    """
    ignored = sorted(name for name in os.environ if _tool_variable(name))
    if ignored:
        tool = "pip" if cmd[1:3] == ["-m", "pip"] else Path(cmd[0]).name
        log(f"not passing {', '.join(ignored)} to {tool}: it takes its index from "
            "RUNNER_INDEX_URL alone")  # fmt: skip
    env = {name: value for name, value in os.environ.items() if not _tool_variable(name)}
    # pip's documented way to read no configuration file at all (site, user or global).
    env["PIP_CONFIG_FILE"] = os.devnull
    # uv wraps its explanation at COLUMNS (some callers set 80): one line per sentence.
    env.update(COLUMNS="10000", NO_COLOR="1")
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _tool_variable(name: str) -> bool:
    return name.upper().startswith(("PIP_", "UV_")) and name.upper() not in _KEPT_VARIABLES


def _uv_cause(stderr: str) -> str:
    """uv's explanation, without its ANSI colours, trimmed for a message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr).strip()
    return text[-3000:] or "uv failed without saying why"


def locked_packages(lock: Path) -> dict[str, str]:
    """``{name: version}`` of every package in the lock file, once it is checked."""
    return check_lock(lock)


def check_lock(lock: Path) -> dict[str, str]:
    """The lock's packages, once every entry is checked to be pinned with a hash."""
    return {entry.name: entry.version for entry in read_lock(lock)}


def read_lock(lock: Path) -> list[LockEntry]:
    """The entries of ``lock``, each ``NAME[extras]==VERSION`` with sha256 hashes, or raise.

    Comments and blank lines aside, nothing else may be in it: no option line
    (index, find-links, build options, includes, editables), no URL, path or
    marker, no second entry for a package; the error names the line.
    """
    if not lock.is_file():
        raise ExperimentExecutionError(
            f"Lock file {lock} not found.", hint="pass --requirements to make one."
        )
    entries, loose = _read_lock(lock)
    if loose or not entries:
        raise ExperimentExecutionError(
            f"{lock} is not a hash lock: "
            + (
                f"{', '.join(text for _, text in loose[:5])} lack an exact version or a hash "
                f"(line {', '.join(str(number) for number, _ in loose[:5])})"
                if loose
                else "empty"
            ),
            hint="make it with `runner image build --requirements FILE` (uv pip compile "
            "--generate-hashes), not by hand.",
        )
    return entries


def lock_text(entries: Sequence[LockEntry]) -> str:
    """A lock written from its entries: one line each, nothing else."""
    return "".join(f"{entry.pin()}\n" for entry in entries)


def _read_lock(lock: Path) -> tuple[list[LockEntry], list[tuple[int, str]]]:
    """The hashed exact pins, and the entries that lack a hash or an exact version."""
    lines = _lines(lock, LOCK_HINT)
    entries: list[LockEntry] = []
    loose: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    index = 0
    while index < len(lines):
        start, first = index + 1, lines[index]
        index += 1
        if not first.strip() or first.lstrip().startswith("#"):
            continue
        # pip's rule: a line ending in a backslash goes on in the next one.
        segments = [(start, first)]
        while segments[-1][1].endswith("\\") and index < len(lines):
            segments.append((index + 1, lines[index]))
            index += 1
        if first.lstrip().startswith("-"):
            raise _refused(lock, start, first, _option(first.split()[0]), LOCK_HINT)
        head: list[str] = []
        hashes: list[str] = []
        for number, segment in segments:
            body = segment.removesuffix("\\")
            if "#" in body:
                raise _refused(lock, number, segment, "a comment inside an entry", LOCK_HINT)
            tokens = body.split()
            if number == start:
                cut = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
                head, tokens = tokens[:cut], tokens[cut:]
            elif not tokens:
                raise _refused(lock, number, segment, "an entry going on into a blank line",
                               LOCK_HINT)  # fmt: skip
            for token in tokens:
                match = _HASH.fullmatch(token)
                if match is None:
                    reason = (
                        "only --hash=sha256:HEX may follow a pin"
                        if token.startswith("-")
                        else "a second requirement in one entry"
                    )
                    raise _refused(lock, number, segment, reason, LOCK_HINT)
                hashes.append(match.group(1))
        text = " ".join(head)
        requirement = _plain_requirement(text)
        if isinstance(requirement, str):
            raise _refused(lock, start, first, requirement, LOCK_HINT)
        if requirement.marker is not None:
            reason = "a marker: a lock pins one platform, and pip would test it on this machine"
            raise _refused(lock, start, first, reason, LOCK_HINT)
        specifiers = list(requirement.specifier)
        if (
            len(specifiers) != 1
            or specifiers[0].operator != "=="
            or specifiers[0].version.endswith(".*")
            or not hashes
        ):
            loose.append((start, text))
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            reason = f"a second entry for {name} (the first is on line {seen[name]})"
            raise _refused(lock, start, first, reason, LOCK_HINT)
        seen[name] = start
        extras = tuple(sorted(requirement.extras))
        entries.append(LockEntry(name, specifiers[0].version, tuple(hashes), extras))
    return entries, loose


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements in ``path``, once every line is a plain requirement or a comment.

    A plain requirement is PEP 508 without a URL: a name, optional ``[extras]``,
    version specifiers (not ``===``) and an optional ``; marker``. A marker is
    harmless: a fixed grammar of comparisons that uv evaluates for the image's
    Python and platform; it names no file or server and runs nothing. Option
    lines, line continuations, paths, URLs and environment variables are refused,
    naming the line.
    """
    if not path.is_file():
        raise ExperimentExecutionError(
            f"Requirements file {path} not found.",
            hint="one requirement per line, as for pip (tabulate==0.9.0, xgboost, ...).",
        )
    requirements = []
    for number, line in enumerate(_lines(path, REQUIREMENTS_HINT), 1):
        text = _COMMENT.sub("", line).strip()
        if not text:
            continue
        requirement = _plain_requirement(text)
        if isinstance(requirement, str):
            raise _refused(path, number, line, requirement, REQUIREMENTS_HINT)
        requirements.append(requirement)
    return requirements


def _plain_requirement(text: str) -> Requirement | str:
    """``text`` as a requirement an index serves by name, or why it is not one."""
    if text.startswith("-"):
        return _option(text.split()[0])
    if text.endswith("\\"):
        return "a line continuation: one requirement per line"
    if "${" in text:
        return "an environment variable: the file must mean the same on every machine"
    head = text.split(";", 1)[0].strip()
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        if any(token.startswith("-") for token in text.split()):
            return "an option after the requirement (a hash belongs in a lock)"
        if any(mark in head for mark in ("/", "\\", ":")) or head.startswith((".", "~")):
            return "a path or URL: packages come from the configured index by name"
        return "not a requirement (a name, optional [extras], version specifiers, ; marker)"
    if requirement.url is not None:
        return "a direct URL (NAME @ URL): packages come from the configured index by name"
    versions = [spec.version for spec in requirement.specifier]
    if any(_reads_as_archive(part) for part in (requirement.name, head, *versions)):
        return "it ends like an archive's file name, which pip and uv take for a local file"
    if any(spec.operator == "===" for spec in requirement.specifier):
        return "arbitrary equality (===) compares strings, not versions"
    return requirement


def _reads_as_archive(text: str) -> bool:
    return text.lower().endswith(_ARCHIVES)


def _option(token: str) -> str:
    """Why an option line is refused: each kind has its own reason, every kind is refused."""
    name = token.split("=", 1)[0]
    for names, reason in _OPTIONS:
        # optparse takes any unambiguous prefix of a long option, a short one glued to its value.
        if any(o.startswith(name) if name.startswith("--") else name[:2] == o for o in names):
            return reason
    return "an option line: the runner sets uv's and pip's options itself"


def _lines(path: Path, hint: str) -> list[str]:
    """The lines of ``path``, once it is UTF-8 text that pip, uv and this module split alike."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        number = data[: e.start].count(b"\n") + 1
        raise ExperimentExecutionError(
            f"{path} line {number} is refused (not UTF-8 text)", hint=hint
        ) from e
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, 1):
        # A control character or a line separator splits a line for one reader and not another.
        if any(c != "\t" and unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in line):
            raise _refused(path, number, line, "a control character", hint)
        coding = _CODING.search(line) if number <= 2 and line.startswith("#") else None
        if coding is not None and _codec(coding.group(1)) != "utf-8":
            reason = f"an encoding declaration: pip would read the file as {coding.group(1)}"
            raise _refused(path, number, line, reason, hint)
    return lines


def _codec(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _refused(
    path: Path, number: int, line: str, reason: str, hint: str
) -> ExperimentExecutionError:
    return ExperimentExecutionError(
        f"{path} line {number} is refused ({reason}): {printable(line.strip(), 200)}", hint=hint
    )


def normalize(name: str) -> str:
    """A package name as PEP 503 compares them (``Scikit_Learn`` is ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    """Regenerate the default image's lock from its ``requirements.in``."""
    source = image_dir()
    compile_lock(
        [source / "requirements.in"],
        source / "requirements.lock",
        index_url=ExperimentDefaults().index_url,
    )
    print(f"wrote {source / 'requirements.lock'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
