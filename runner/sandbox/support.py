"""The support volume: files every sandbox reads from the engine's own machine.

A sandbox gets its own ``/etc/hosts`` (``localhost`` and its host name) and
``/etc/resolv.conf`` (a nameserver on its own loopback, where nothing listens),
bound read-only from one labelled volume of the engine; on Podman, which reads
a seccomp profile only from a file on its machine, the profile too. The files
are written through the archive API (``runner.sandbox.files.transfer.unstarted``), so this
works on an engine that cannot see this machine's files; one that does (a local engine)
has them read back where it keeps the volume, without a helper container.

On Docker this lets the engine make no network at all for a sandbox
(``network_disabled``): the runtime gives the container a fresh network
namespace of its own with only ``lo``, as ``network_mode="none"`` does, but
without the engine's own network set-up (on Docker 20.10 a re-executed
``dockerd`` per container, about 95 ms of CPU), and then nobody writes the
container's ``hosts`` and ``resolv.conf``: these are they.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import Mapping

from docker.types import Mount

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.cleanup import LABEL, LABEL_GROUP, build_labels, current_group, deadline_after
from runner.sandbox.engine import Engine
from runner.sandbox.files.transfer import unstarted
from runner.sandbox.policy import SupportFiles
from runner.sandbox.seccomp import profile

#: Where the filling helper mounts the volume.
SUPPORT_AT = "/support"
#: The support volume's name (a digest of its content follows) and labels: it is shared
#: by every runner of the engine, so it has no owner; `runner cleanup --all` removes it.
SUPPORT_VOLUME = "experiment-runner-support"
SUPPORT_LABELS = {LABEL: "support"}
#: More than any support file holds (the seccomp profile, about 10 KB): what is read of one.
MAX_FILE_BYTES = 1 << 20
RESOLV_CONF = "nameserver 127.0.0.1\n"
HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def ensure_support(
    engine: Engine, image_id: str, helper_labels: Mapping[str, str], *, here: bool = False
) -> SupportFiles:
    """The engine's support volume, created and filled if missing or not as expected.

    One volume per engine and content (its name carries the content's digest),
    shared by every runner (of this process's group, which has one of its own): runs
    only read it. It is written only when what is there differs, so a runner never
    rewrites a file another is reading.

    ``here``: the engine sees this machine's files (``engine_sees_local_files``), so
    what the volume holds is first read where the engine keeps it; only when that
    cannot be read, or differs, is it read (and written) through a helper container.
    """
    files = _support_files()
    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in files)).hexdigest()
    name, labels = f"{SUPPORT_VOLUME}-{digest[:16]}", dict(SUPPORT_LABELS)
    group = current_group()
    if group is not None:
        name, labels[LABEL_GROUP] = f"{name}-{group}", group
    volume = engine.create_volume(labels, name=name)
    if here and _read_here(volume.mountpoint) == dict(files):
        return SupportFiles(volume.name, volume.mountpoint)
    helper = unstarted(
        engine, image_id, helper_labels, Mount(target=SUPPORT_AT, source=volume.name, type="volume")
    )
    try:
        if _read_back(engine, helper) != dict(files):
            engine.put_archive(helper, SUPPORT_AT, _archive(files))
    finally:
        engine.remove(helper)
    return SupportFiles(volume.name, volume.mountpoint)


class SupportVolume:
    """The engine's support volume as a runner uses it: made once, and made again when a
    sandbox was refused for want of it (``runner cleanup --all`` under a live runner).

    Made again, it has the same name and content, so the same paths on the engine's
    machine: what holds ``files`` (a warm pool's slot maker) stays right.
    """

    def __init__(self, engine: Engine, image_id: str, *, here: bool = False) -> None:
        self._engine = engine
        self._image_id = image_id
        #: The engine sees this machine's files (``ensure_support``).
        self._here = here
        self.files = ensure_support(engine, image_id, build_labels(deadline_after(60)), here=here)
        #: Counts the times it was made again: a caller notes it before an attempt.
        self.remade = 0
        self._lock = threading.Lock()

    def mend(self, remade: int, error: Exception) -> bool:
        """After a sandbox that was refused or failed to start: True if that may have been
        for want of this volume, which is now made again (here, or by another run since
        ``remade`` was read).

        Another runner of the engine may be making it again at the same time: then the
        volume is there, but the error names one of its files, and filling it once more
        is harmless (it is rewritten only when its content differs).
        """
        with self._lock:
            if self.remade != remade:
                return True
            if self.files.mountpoint not in str(error) and not support_gone(
                self._engine, self.files
            ):
                return False  # refused for another reason: the error stands
            helper_labels = build_labels(deadline_after(60))
            self.files = ensure_support(
                self._engine, self._image_id, helper_labels, here=self._here
            )
            self.remade += 1
            return True


def support_gone(engine: Engine, support: SupportFiles) -> bool:
    """Whether the support volume has gone since it was made (``runner cleanup --all``
    removes it, even under a runner that still uses it)."""
    ((key, value),) = SUPPORT_LABELS.items()
    return support.volume not in {volume.name for volume in engine.volumes(f"{key}={value}")}


def _support_files() -> list[tuple[str, bytes]]:
    return [
        ("seccomp.json", profile().encode()),
        ("resolv.conf", RESOLV_CONF.encode()),
        ("hosts", HOSTS.encode()),
    ]


def _read_here(mountpoint: str) -> dict[str, bytes] | None:
    """The regular files at the top of the volume's directory on this machine; None
    when it cannot be read here or holds anything else (a link, a directory, ...)."""
    if not mountpoint:
        return None
    found = {}
    try:
        with os.scandir(mountpoint) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    return None
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as file:
                    found[entry.name] = file.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    return found


def _read_back(engine: Engine, helper: str) -> dict[str, bytes]:
    """The files now in the support volume (none, if it is new).

    Docker names each file of the archive below the directory's own name
    (``support/hosts``), Podman below the root of the archive (``/hosts``).
    """
    try:
        data = engine.get_archive(helper, SUPPORT_AT)
    except ExperimentExecutionError:
        return {}
    found = {}
    directory = SUPPORT_AT.strip("/") + "/"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                found[member.name.lstrip("/").removeprefix(directory)] = extracted.read()
    return found


def _archive(files: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, now
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
