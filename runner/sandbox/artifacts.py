"""Artifacts: files a script writes, copied back to the host without trusting them.

With outputs on, the sandbox's working directory is ``/outputs``: a tmpfs of its
own (capped in bytes and inodes, ``noexec,nosuid,nodev``) holding, before the
script starts, a symlink to each entry of the read-only script directory, so
relative reads work and writes to the script's own files fail. ``$OUTPUT_DIR``
names the same directory. After the script has exited (however it ended), a
small collector (``COLLECT``) runs in the sandbox and writes what is there to
stdout as a tar stream behind ``ARTIFACTS_MARKER``. (The engine's archive API
cannot be used: on Docker 20.10 it does not see a container's tmpfs while it
runs, and the tmpfs is gone once it has stopped.)

The stream is the script's to shape, so the host trusts nothing in it:
``extract`` keeps regular files only, under checked names, within the limits,
and writes them under the outputs directory through directory descriptors with
``O_NOFOLLOW``; everything else is reported in one message, never dropped
silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, cast

from runner.core.models import Artifact
from runner.core.settings import ExperimentDefaults
from runner.core.sizes import parse_size

#: The sandbox's working directory when outputs are on, also ``$OUTPUT_DIR``.
OUTPUTS_PATH = PurePosixPath("/outputs")
#: Written to stdout by the collector, after the script's own output, before the tar.
ARTIFACTS_MARKER = b"\x00experiment-runner-artifacts\n"
#: A PAX header the collector puts on an empty entry for a file it did not send.
SKIPPED_KEY = "EXPERIMENT_RUNNER.skipped"
#: Inodes of the outputs tmpfs beyond the file limit: the links to the script's files.
LINK_ROOM = 4096
#: Seconds the collector may take in the sandbox (it is killed after that).
COLLECT_SECONDS = 60
#: Longest name (bytes) and name part accepted.
MAX_NAME = 1024
MAX_PART = 255
_CHUNK = 1024 * 1024
#: Bytes of the stream's end an ``ArtifactSink`` keeps at hand (for the end record).
_TAIL = 64
#: Tar bytes around each file (headers, PAX records, padding), for the stream's cap.
_PER_ENTRY = 3 * 512


@dataclass(frozen=True)
class OutputLimits:
    """What one run may bring back: bytes in all, files, bytes of one file."""

    max_bytes: int
    max_files: int
    max_file_size: int

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_files, self.max_file_size) <= 0:
            raise ValueError("output limits must be positive")

    @classmethod
    def from_settings(cls, settings: ExperimentDefaults) -> OutputLimits:

        return cls(
            max_bytes=parse_size(settings.outputs_max_bytes),
            max_files=settings.outputs_max_files,
            max_file_size=parse_size(settings.outputs_max_file_size),
        )

    @property
    def inodes(self) -> int:
        return self.max_files + LINK_ROOM

    def tmpfs_options(self) -> str:
        """The outputs tmpfs: its size is the byte limit, so a script cannot even write more."""
        return f"rw,noexec,nosuid,nodev,size={self.max_bytes},nr_inodes={self.inodes},mode=1777"

    @property
    def stream_limit(self) -> int:
        """Bytes of tar stream an honest collector can send within these limits."""
        return self.max_bytes + (self.max_files + self.inodes) * _PER_ENTRY + 64 * 1024


@dataclass(frozen=True)
class Outputs:
    """Where one run's outputs go on the host, within which limits.

    ``destination`` is a directory the caller named (resolved: no symlink in it);
    ``below`` the names of directories under it that the runner chose (a batch
    job's ``0000-NAME``), made there and never followed if they are symlinks.
    """

    destination: Path
    limits: OutputLimits
    #: The script's directory: the sandbox links its entries into the working directory.
    links: Path | None = None
    below: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        """Where the files land."""
        return self.destination.joinpath(*self.below)

    def collect(self, sink: ArtifactSink | None) -> Collected:
        """Extract what the sink received; a run that sent nothing says so."""
        if sink is None or not sink.started:
            collected = Collected()
            collected.problems.append(
                "none were collected (the sandbox ended before its outputs could be sent)"
            )
            return collected
        collected = extract(
            sink.stream(), self.destination, self.limits, below=self.below, own_links=self.links
        )
        if sink.overflow:
            collected.problems.append(
                f"the outputs stream went over {self.limits.stream_limit} bytes and was cut there"
            )
        return collected


#: The collector, run in the sandbox as ``python -I -S -c COLLECT files file_size bytes``
#: after the script. It sends regular files within the limits, and an empty entry
#: (PAX header ``SKIPPED_KEY``) or a header-only entry for everything else.
COLLECT = (
    r"""
import os, stat, sys, tarfile
MAX_FILES, MAX_FILE, MAX_BYTES = map(int, sys.argv[1:4])
out = sys.stdout.buffer
out.write(MARKER)
out.flush()
tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
top = os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY)
device = os.fstat(top).st_dev
files = total = 0
KINDS = {
    stat.S_IFIFO: tarfile.FIFOTYPE, stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE
}


def skip(path, reason):
    info = tarfile.TarInfo(path)
    info.pax_headers = {KEY: reason}
    tar.addfile(info)


def send(dir_fd, name, path):
    global files, total
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return skip(path, "not a regular file")
        if st.st_nlink > 1:
            return skip(path, "hard link")
        if files >= MAX_FILES:
            return skip(path, "files")
        if st.st_size > MAX_FILE:
            return skip(path, "file size %d" % st.st_size)
        if total + st.st_size > MAX_BYTES:
            return skip(path, "bytes")
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = st.st_size, 0o644, int(st.st_mtime)
        tar.addfile(info, f)
        files, total = files + 1, total + st.st_size


def walk(dir_fd, prefix):
    for name in sorted(os.listdir(dir_fd)):
        path = prefix + name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            send(dir_fd, name, path)
        elif stat.S_ISLNK(st.st_mode):
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode) and st.st_dev == device:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                walk(sub, path + "/")
            finally:
                os.close(sub)
        elif kind in KINDS:
            info = tarfile.TarInfo(path)
            info.type = KINDS[kind]
            tar.addfile(info)
        else:
            skip(path, "another filesystem" if stat.S_ISDIR(st.st_mode) else "socket")


walk(top, "")
tar.close()
out.flush()
""".replace("MARKER", repr(ARTIFACTS_MARKER))
    .replace("KEY", repr(SKIPPED_KEY))
    .replace("ROOT", repr(str(OUTPUTS_PATH)))
)


class ArtifactSink:
    """Receives the tar stream from the output collector, spooled to a file, capped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.started = False
        self.overflow = False
        self.received = 0
        self._tail = b""
        # Closed by close(), once the stream has been extracted.
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="runner-artifacts-")  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        self.started = True
        room = self.limit - self.received
        if len(chunk) > room:
            self.overflow = True
            chunk = chunk[: max(room, 0)]
        self.received += len(chunk)
        self._file.write(chunk)
        self._tail = (self._tail + chunk[-_TAIL:])[-_TAIL:]

    def endswith(self, trailer: bytes) -> bool:
        """Whether the stream so far ends with ``trailer`` (at most 64 bytes)."""
        return self._tail.endswith(trailer)

    def take_trailer(self, trailer: bytes) -> bool:
        """Take ``trailer`` (the sandbox's end record) off the end of the stream, if there."""
        if not self.endswith(trailer):
            return False
        self.received -= len(trailer)
        self._tail = self._tail[: -len(trailer)]
        self._file.flush()
        self._file.truncate(self.received)
        self._file.seek(self.received)
        return True

    def stream(self) -> BinaryIO:
        """The spooled stream from its start (each call rewinds)."""
        self._file.flush()
        self._file.seek(0)
        return cast(BinaryIO, _NoLargeReads(self._file))

    def close(self) -> None:
        self._file.close()


class _NoLargeReads:
    """A file whose single reads are bounded: a forged tar header cannot make
    ``tarfile`` read hundreds of megabytes of "PAX header" into memory at once."""

    LIMIT = _CHUNK + 1024

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self.LIMIT:
            raise tarfile.ReadError(f"a tar header of {size} bytes (over the limit)")
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


@dataclass
class Collected:
    """The artifacts copied back, and what was not, grouped by reason."""

    artifacts: list[Artifact] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def refuse(self, reason: str, name: str) -> None:
        self.refused.setdefault(reason, []).append(name)

    def message(self) -> str | None:
        """One line (or a few) saying what was not copied back and why; None if all was."""
        parts = []
        for reason, names in self.refused.items():
            shown = ", ".join(_quoted(n) for n in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            noun = "entry" if len(names) == 1 else "entries"
            parts.append(f"{len(names)} {noun} not copied ({reason}): {shown}{more}")
        parts.extend(self.problems)
        if not parts:
            return None
        return "Outputs: " + "; ".join(parts) + "."


def _quoted(name: str) -> str:
    shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return repr(shown[:120])


#: Why the collector in the sandbox sent an entry without content, in words.
_SKIPPED = {
    "hard link": "a hard link",
    "not a regular file": "not a regular file",
    "another filesystem": "another filesystem",
    "socket": "a socket",
}


def _limit_reasons(limits: OutputLimits) -> dict[str, str]:
    """The collector's reasons ("files", "file size N", "bytes") in words."""
    return {
        "files": f"over the limit of {limits.max_files} files, RUNNER_OUTPUTS_MAX_FILES",
        "file": f"over the limit of {limits.max_file_size} bytes per file, "
        "RUNNER_OUTPUTS_MAX_FILE_SIZE",
        "bytes": f"over the limit of {limits.max_bytes} bytes in all, RUNNER_OUTPUTS_MAX_BYTES",
    }


def check_name(name: str) -> str | None:
    """Why ``name`` (from the stream) may not be written under the outputs, or None."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "a name that is not UTF-8"
    if any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name):
        return "a name with control characters"
    if name.startswith("/"):
        return "an absolute name"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a name with an empty, '.' or '..' part"
    if len(raw) > MAX_NAME or any(len(p.encode()) > MAX_PART for p in parts):
        return "a name too long"
    return None


_KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CHRTYPE: "a device",
    tarfile.BLKTYPE: "a device",
}


def extract(
    stream: BinaryIO,
    destination: Path,
    limits: OutputLimits,
    *,
    below: tuple[str, ...] = (),
    own_links: Path | None = None,
) -> Collected:
    """Write the regular files of the tar ``stream`` under ``destination/below...``; report
    the rest.

    Nothing is written outside that directory: ``destination`` (the caller's, made
    if missing) is opened once, and every directory under it, ``below`` and the
    stream's own alike, is opened with ``O_NOFOLLOW`` from its parent's
    descriptor; a symlink where one of ``below`` goes is replaced by a directory,
    never followed. Each file is written under a new name and renamed into place
    (an existing entry of that name is replaced, never followed). Symlinks at the
    top whose target is ``own_links/<name>`` (the links to the script's files the
    sandbox made) are passed over without a word.
    """
    collected = Collected()
    reasons = _limit_reasons(limits)
    destination.mkdir(parents=True, exist_ok=True)
    top = os.open(destination, os.O_RDONLY | os.O_DIRECTORY)
    try:
        root = _own_directory(top, below)
    finally:
        os.close(top)
    base = destination.joinpath(*below)
    written: dict[str, Artifact] = {}
    total = 0
    try:
        for member in _members(stream, collected):
            name = member.name
            skipped = member.pax_headers.get(SKIPPED_KEY)
            if skipped is not None:
                collected.refuse(
                    reasons.get(skipped.split(" ")[0], _SKIPPED.get(skipped, "refused")), name
                )
                continue
            if member.isdir():
                continue
            if (
                member.issym()
                and own_links is not None
                and "/" not in name
                and member.linkname == str(own_links / name)
            ):
                continue
            why = check_name(name)
            if why is None and not member.isreg():
                why = _KINDS.get(member.type, "not a regular file")
            if why is not None:
                collected.refuse(why, name)
                continue
            if len(written) >= limits.max_files and name not in written:
                collected.refuse(reasons["files"], name)
                continue
            if member.size > limits.max_file_size:
                collected.refuse(reasons["file"], name)
                continue
            if total + member.size > limits.max_bytes:
                collected.refuse(reasons["bytes"], name)
                continue
            source = _tar_file(stream, member)
            try:
                artifact = _write(root, base, name, source, member.size)
            except _NotWritten as e:
                collected.refuse(str(e), name)
                continue
            total += artifact.size
            written[name] = artifact
    finally:
        os.close(root)
    collected.artifacts = sorted(written.values(), key=lambda a: a.name)
    return collected


def _members(stream: BinaryIO, collected: Collected) -> Iterator[tarfile.TarInfo]:
    """The stream's entries, one at a time; a malformed or cut stream ends them with a note."""
    try:
        tar = tarfile.open(  # noqa: SIM115 - closed by the with block below
            fileobj=stream, mode="r:", encoding="utf-8", errors="surrogateescape"
        )
    except (tarfile.TarError, OSError, ValueError) as e:
        collected.problems.append(f"the outputs could not be read ({e})")
        return
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, ValueError, UnicodeError) as e:
                collected.problems.append(f"the outputs stream is malformed or cut short ({e})")
                return
            if member is None:
                # A whole stream ends with two zero blocks; without them it was cut short.
                stream.seek(tar.offset)
                if stream.read(2 * 512) != bytes(2 * 512):
                    collected.problems.append("the outputs stream was cut short")
                return
            cast(Any, tar).members.clear()  # a million entries need not stay in memory
            yield member


class _NotWritten(Exception):
    pass


def _tar_file(stream: BinaryIO, member: tarfile.TarInfo) -> Iterator[bytes]:
    """The content of a regular member, read from the stream in bounded chunks."""
    stream.seek(member.offset_data)
    left = member.size
    while left > 0:
        chunk = stream.read(min(_CHUNK, left))
        if not chunk:
            raise _NotWritten("cut short in the outputs stream")
        left -= len(chunk)
        yield chunk


def _write(
    root: int, destination: Path, name: str, content: Iterator[bytes], size: int
) -> Artifact:
    parts = name.split("/")
    with _directory(root, parts[:-1]) as directory:
        temporary = f".{parts[-1][:200]}.{secrets.token_hex(6)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o644, dir_fd=directory)
        digest = hashlib.sha256()
        written = 0
        try:
            try:
                for chunk in content:
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    written += len(chunk)
            finally:
                os.close(fd)
            if written != size:
                raise _NotWritten("cut short in the outputs stream")
            try:
                # Replaces whatever entry has the name (a symlink is replaced, not followed).
                os.rename(temporary, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
            except OSError as e:
                raise _NotWritten(
                    f"cannot replace what is there in the outputs ({e.strerror})"
                ) from e
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
            raise
    return Artifact(
        name=name, path=str(destination.joinpath(*parts)), size=written, sha256=digest.hexdigest()
    )


def _own_directory(top: int, parts: tuple[str, ...]) -> int:
    """A descriptor of ``top/parts...``, each made where missing and replaced where it
    is a symlink (or anything but a directory), never followed."""
    fd = os.dup(top)
    try:
        for part in parts:
            if check_name(part) is not None or "/" in part:
                raise ValueError(f"not a directory name: {part!r}")
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(part, dir_fd=fd)
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _directory(root: int, parts: list[str]) -> Iterator[int]:
    """A descriptor of ``root/parts...``, made where missing; never through a symlink."""
    fd = os.dup(root)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise _NotWritten(f"{part!r} in the outputs is not a directory") from e
            os.close(fd)
            fd = sub
        yield fd
    finally:
        os.close(fd)
