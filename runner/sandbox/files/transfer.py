"""How a run's files reach its sandbox: bind-mounted in place, or copied through the engine.

A bind mount needs an engine that sees the caller's files (a local engine) and
a sandbox user that may read them. Where either fails (a remote engine, a
Docker-in-Docker CI service, a Podman machine, a private 0700 directory) the
files travel as a tar archive through the engine's API into a labelled volume,
and the sandbox bind-mounts them read-only, at their own absolute paths, from
the volume's place on the engine. The archive is built with ``runner.sandbox.files.tree``:
no symlink followed, no special file opened, bounded in entries and bytes.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from docker.types import Mount

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.engine import Engine
from runner.sandbox.files.tree import Budget, TreeRefused, walk

#: Where the helper container that fills a volume mounts it (it is never started).
_FILL_AT = "/files"
#: Bounds of one copy: entries, and bytes of file content.
COPY_MAX_ENTRIES = 100_000
COPY_MAX_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class CopiedFiles:
    """A volume holding one run's files, laid out as on the caller's machine."""

    volume: str
    mountpoint: str
    paths: tuple[Path, ...]

    def binds(self) -> tuple[tuple[Path, Path], ...]:
        """(engine-side source, container target) pairs: each path at its own place."""
        return _binds(self.mountpoint, self.paths)


def _binds(base: str, paths: Sequence[Path]) -> tuple[tuple[Path, Path], ...]:
    """Each of ``paths`` bound from its place below ``base``."""
    return tuple((Path(base + str(path)), path) for path in paths)


def archive(
    paths: Sequence[Path], budget: Budget, out: BinaryIO, *, root: Path = Path("/")
) -> None:
    """Write to ``out`` a tar of ``paths`` (absolute) at their places below ``root``.

    Regular files, directories and symlinks (as symlinks) only; owners are root,
    and every entry gains read (and, for directories, search) permission, as the
    sandbox's user ID is not the files' owner. The directories between ``root``
    and each path come first, mode 755. Raises ``TreeRefused`` (and
    ``TreeExpired`` past the budget's deadline).
    """
    made: set[PurePosixPath] = set()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            top = PurePosixPath(path.relative_to(root))
            for parent in reversed(top.parents[:-1]):
                if parent not in made:
                    made.add(parent)
                    tar.addfile(_info(parent, "dir", None))
            if path.is_dir() and not path.is_symlink():
                tar.addfile(_info(top, "dir", path.lstat()))
                for entry in walk(path, budget):
                    name = top / entry.path
                    if entry.kind == "file":
                        _add_open_file(tar, entry.open(), name, budget)
                    elif entry.kind == "symlink":
                        tar.addfile(_info(name, "symlink", entry.stat, link=entry.link_target()))
                    else:
                        tar.addfile(_info(name, "dir", entry.stat))
            else:
                # An input file the caller named (a symlink to it is resolved: it was checked).
                _add_open_file(tar, os.open(path, os.O_RDONLY | os.O_NONBLOCK), top, budget)


def _add_open_file(tar: tarfile.TarFile, fd: int, name: PurePosixPath, budget: Budget) -> None:
    """Add the regular file open at ``fd`` (closed here), its content streamed."""
    with os.fdopen(fd, "rb") as source:
        st = os.fstat(source.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise TreeRefused(f"{str(name)!r} is not a regular file or directory")
        budget.spend(st.st_size)
        tar.addfile(_info(name, "file", st, st.st_size), source)


def _info(
    name: PurePosixPath,
    kind: Literal["dir", "file", "symlink"],
    st: os.stat_result | None,
    size: int = 0,
    link: str = "",
) -> tarfile.TarInfo:
    """A root-owned entry readable by anyone; ``st`` None: a directory made on the way, 755."""
    info = tarfile.TarInfo(str(name))
    info.mtime = int(st.st_mtime) if st is not None else 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    mode = st.st_mode & 0o777 if st is not None else 0o755
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = mode | 0o555
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = link
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.size = size
        info.mode = mode | 0o444
    return info


def copy_budget(deadline: float = float("inf")) -> Budget:
    """The bounds of one copy through the engine: entries, bytes and, optionally, time."""
    return Budget(entries=COPY_MAX_ENTRIES, bytes=COPY_MAX_BYTES, deadline=deadline)


@dataclass(frozen=True)
class FileDrop:
    """A labelled volume and a never-started helper container that mounts it read-write.

    Files go into the volume through the helper's archive API (``put``); a
    sandbox mounts the volume read-only from its place on the engine
    (``mountpoint``). ``remove`` takes the helper, then the volume, away.
    """

    engine: Engine
    volume: str
    mountpoint: str
    helper: str

    @classmethod
    def create(cls, engine: Engine, image_id: str, labels: Mapping[str, str]) -> FileDrop:
        volume = engine.create_volume(labels)
        try:
            helper = unstarted(
                engine, image_id, labels, Mount(target=_FILL_AT, source=volume.name, type="volume")
            )
        except BaseException:
            engine.remove_volume(volume.name)
            raise
        return cls(engine, volume.name, volume.mountpoint, helper)

    def put(self, paths: Sequence[Path], budget: Budget, *, root: Path = Path("/")) -> None:
        """Copy ``paths`` into the volume at their places below ``root`` (``archive``)."""
        with tempfile.TemporaryFile(prefix="runner-files-") as data:
            archive(paths, budget, data, root=root)
            data.seek(0)
            self.engine.put_archive(self.helper, _FILL_AT, data)

    def put_packed(self, archives: Sequence[bytes]) -> None:
        """Unpack archives made by ``pack`` (elsewhere: on the caller's machine) into the volume."""
        for data in archives:
            self.engine.put_archive(self.helper, _FILL_AT, data)

    def remove_helper(self) -> None:
        self.engine.remove(self.helper)

    def remove(self) -> None:
        """Remove the helper and the volume (the volume only once no container uses it)."""
        try:
            self.remove_helper()
        finally:
            self.engine.remove_volume(self.volume)


def pack(paths: Sequence[Path], budget: Budget | None = None) -> bytes:
    """``paths`` (absolute) as one safe archive in memory, to be unpacked on another machine.

    The same archive as a copy through the engine (``archive``): what a Ray task
    carries to its node, where ``copy_to_engine(..., packed=...)`` unpacks it.
    Raises ``ExperimentExecutionError`` for what a copy refuses.
    """
    out = io.BytesIO()
    try:
        archive(paths, budget or copy_budget(), out)
    except TreeRefused as e:
        raise _refused(e) from e
    return out.getvalue()


def reroot(packed: bytes, root: Path) -> bytes:
    """An archive made by ``pack`` (places below ``/``) with its places below ``root`` instead.

    For a volume mounted at ``root`` (a warm slot's): the directories above
    ``root`` are left out. Raises ``TreeRefused`` for an entry outside ``root``.
    """
    prefix = PurePosixPath(root.relative_to("/"))
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(packed)) as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in source:
            name = PurePosixPath(member.name)
            if name == prefix or name in prefix.parents:
                continue
            if not name.is_relative_to(prefix):
                raise TreeRefused(f"{member.name!r} lies outside {root}")
            member.name = str(name.relative_to(prefix))
            tar.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


@dataclass(frozen=True)
class UnpackedFiles:
    """A run's packed files unpacked in a private directory of this machine, for an
    engine that sees its files: each path bound from below ``base``."""

    base: Path
    paths: tuple[Path, ...]

    def binds(self) -> tuple[tuple[Path, Path], ...]:
        """(source here, container target) pairs: each path at its own place."""
        return _binds(str(self.base), self.paths)

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def unpack(packed: Iterable[bytes], into: Path) -> None:
    """Unpack archives made by ``pack`` (on another machine) below ``into``.

    tar's ``data`` filter keeps every entry inside it (no absolute path, no
    ``..``, no link out, no device, no set-ID bit). Raises ``TreeRefused`` where
    that filter is missing (Python before 3.11.4) or refuses an entry (say, a
    symlink to an absolute path, which only a copy through the engine keeps as
    it is: pointing inside the sandbox).
    """
    if not hasattr(tarfile, "data_filter"):
        raise TreeRefused("unpacking safely here needs Python 3.11.4 or later")
    try:
        for data in packed:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(into, filter="data")
    except tarfile.FilterError as e:
        raise TreeRefused(str(e)) from e


def unpack_here(packed: Sequence[bytes], paths: Sequence[Path]) -> UnpackedFiles | None:
    """Unpack archives made by ``pack`` into a new private directory (``unpack``); None
    where they cannot be unpacked safely: then they go through the engine, as a copy."""
    base = Path(tempfile.mkdtemp(prefix="runner-unpacked-"))  # 0700: no other user enters
    try:
        unpack(packed, base)
    except TreeRefused:
        shutil.rmtree(base, ignore_errors=True)
        return None
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return UnpackedFiles(base, tuple(paths))


def copy_to_engine(
    engine: Engine,
    image_id: str,
    paths: Sequence[Path],
    labels: Mapping[str, str],
    budget: Budget | None = None,
    *,
    packed: Sequence[bytes] = (),
) -> CopiedFiles:
    """Ship ``paths`` into a new labelled volume through the engine's archive API.

    With ``packed`` (archives of ``paths`` made by ``pack``, on another machine),
    those are unpacked there instead: ``paths`` only name where they go.
    """
    drop = FileDrop.create(engine, image_id, labels)
    try:
        try:
            if packed:
                drop.put_packed(packed)
            else:
                drop.put(paths, budget or copy_budget())
        finally:
            drop.remove_helper()
    except TreeRefused as e:
        engine.remove_volume(drop.volume)
        raise _refused(e) from e
    except BaseException:
        engine.remove_volume(drop.volume)
        raise
    return CopiedFiles(drop.volume, drop.mountpoint, tuple(paths))


def _refused(e: TreeRefused) -> ExperimentExecutionError:
    return ExperimentExecutionError(
        f"The script's files cannot be copied to the engine: {e}.",
        hint="keep devices, FIFOs and sockets out of the script's directory and "
        "inputs, and stay within the copy limits; or use a local engine "
        "(transfer='bind').",
    )


def engine_sees_local_files(engine: Engine, image_id: str, labels: Mapping[str, str]) -> bool:
    """True when a bind mount of a path on this machine shows this machine's file.

    A real check, not a guess from ``DOCKER_HOST``: a probe file with a random
    token is bind-mounted into a container that is created (never started), and
    read back through the engine's archive API.
    """
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="runner-probe-") as tmp:
        probe = Path(tmp)
        probe.chmod(0o755)
        (probe / "token").write_text(token)
        try:
            container = unstarted(
                engine,
                image_id,
                labels,
                Mount(target="/probe", source=str(probe), type="bind", read_only=True),
            )
        except ExperimentExecutionError:
            return False  # "bind source path does not exist": another machine's filesystem
        try:
            data = engine.get_archive(container, "/probe/token")
        except ExperimentExecutionError:
            return False
        finally:
            engine.remove(container)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("token")
        return member is not None and member.read().decode() == token


def unstarted(engine: Engine, image_id: str, labels: Mapping[str, str], mount: Mount) -> str:
    """A container made only to reach files through the archive API: never started."""
    return engine.create(
        image_id, ["true"], labels=dict(labels), network_mode="none", mounts=[mount]
    )
