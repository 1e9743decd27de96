"""Locking requirements for the sandbox's Python with uv, and reading the locks.

A lock pins every package (dependencies included) at an exact version with the
sha256 of its files, for CPython 3.11 on manylinux x86_64, wheels only: what
the image installs offline with ``pip install --require-hashes``. The locker is
``uv pip compile --generate-hashes``.

``python -m runner.lock`` regenerates the default image's lock from its
``requirements.in`` (in a checkout: ``images/sandbox/``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.image.definition import image_dir

_Log = Callable[[str], None]
#: The image's interpreter, as the locker and pip name it.
PYTHON_VERSION = "3.11"
UV_PLATFORM = "x86_64-manylinux_2_28"
#: ``pip download`` takes each platform tag it may accept by name (manylinux2014
#: brings manylinux2010 and manylinux1 with it).
PIP_PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{m}_x86_64" for m in range(17, 29)))
REGENERATE = "python -m runner.lock"
_LOCK_LINE = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


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
    log: _Log = print,
) -> Path:
    """Resolve ``requirements`` for the image's Python and write a hash lock to ``output``.

    Only wheels for CPython 3.11 manylinux x86_64 count; ``constraints`` (a lock)
    keeps its packages at its versions. An existing ``output`` is taken as the
    preferred versions, so re-locking moves nothing that need not move.
    Raises with the locker's explanation when no such set of packages exists.
    """
    cmd = [
        uv_executable(), "pip", "compile", "--quiet", "--generate-hashes",
        "--python-version", PYTHON_VERSION, "--python-platform", UV_PLATFORM,
        "--only-binary", ":all:", "--no-annotate",
        "--custom-compile-command", REGENERATE if constraints is None else "runner image build",
        "--output-file", str(output),
        *(["--constraint", str(constraints)] if constraints else []),
        *(str(path) for path in requirements),
    ]  # fmt: skip
    log(f"locking {', '.join(p.name for p in requirements)} with uv into {output}")
    # uv wraps its explanation at COLUMNS (some callers set 80): one line per sentence.
    env = {**os.environ, "COLUMNS": "10000", "NO_COLOR": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise ExperimentExecutionError(
            f"No lock for {', '.join(map(str, requirements))}: {_uv_cause(result.stderr)}",
            hint=f"every package needs a wheel for CPython {PYTHON_VERSION} on manylinux "
            "x86_64, and must agree with the default image's pins"
            + (f" ({constraints})" if constraints else "")
            + "; correct the names or versions, then build again.",
        )
    check_lock(output)
    return output


def _uv_cause(stderr: str) -> str:
    """uv's explanation, without its ANSI colours, trimmed for a message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr).strip()
    return text[-3000:] or "uv failed without saying why"


def locked_packages(lock: Path) -> dict[str, str]:
    """``{name: version}`` of every package in the lock file."""
    packages: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _LOCK_LINE.match(line.strip())
        if match:
            packages[normalize(match.group(1))] = match.group(2)
    return packages


def check_lock(lock: Path) -> dict[str, str]:
    """The lock's packages, once every entry is checked to be pinned with a hash."""
    if not lock.is_file():
        raise ExperimentExecutionError(
            f"Lock file {lock} not found.", hint="pass --requirements to make one."
        )
    entries = _entries(lock.read_text())
    unpinned = [head for head, hashed in entries if not _LOCK_LINE.match(head) or not hashed]
    if unpinned or not entries:
        raise ExperimentExecutionError(
            f"{lock} is not a hash lock: "
            + (
                f"{', '.join(unpinned[:5])} lack an exact version or a hash"
                if unpinned
                else "empty"
            ),
            hint="make it with `runner image build --requirements FILE` (uv pip compile "
            "--generate-hashes), not by hand.",
        )
    return locked_packages(lock)


def _entries(text: str) -> list[tuple[str, bool]]:
    """Each requirement of a lock, with whether it carries a sha256."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line and not current:
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    if current.strip():
        logical.append(current.strip())
    return [
        (entry.split()[0], bool(_HASH.search(entry)))
        for entry in logical
        if entry and not entry.startswith("-")
    ]


def normalize(name: str) -> str:
    """A package name as PEP 503 compares them (``Scikit_Learn`` is ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    """Regenerate the default image's lock from its ``requirements.in``."""
    source = image_dir()
    compile_lock([source / "requirements.in"], source / "requirements.lock")
    print(f"wrote {source / 'requirements.lock'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
