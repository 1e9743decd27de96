"""What Podman's Docker-compatible API needs asked differently, for the same sandbox.

Podman (4.x, rootful, through ``podman system service``) accepts most of the
hardened configuration as Docker does, but not all of it, and some of what it
accepts it does not apply (``runner.verify`` catches those). Found on Podman
4.3.1, each closed here:

- a seccomp profile is read from a *file on the engine's machine*, not taken as
  JSON text: the profile goes into a labelled "support" volume through the
  archive API, and the sandbox names it by the volume's path;
- the DNS options are ignored with no network, and the machine's own
  ``/etc/resolv.conf`` and ``/etc/hosts`` are copied in: the sandbox gets its
  own, read-only, from the same volume;
- a tmpfs refuses ``nr_inodes``: ``/tmp`` becomes a per-container volume of
  the ``tmpfs`` type, mounted with ``nr_blocks`` (its size) and ``nr_inodes``,
  and bound ``noexec,nosuid,nodev``;
- a read-only root gains writable, uncapped, exec-allowed ``/var/tmp`` and
  ``/run``: both are masked with empty read-only tmpfs;
- ``OOMKilled`` is never set: an exit of 137 with peak memory at the cap is an
  OOM kill (see ``Sandbox.record``); without telemetry it cannot be told.

Waiting (the compatible ``wait`` polls in a busy loop) and removal (which may
answer 500 while the container is still exiting) are handled in ``engine.py``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from docker.types import Mount

from runner.cleanup import LABEL
from runner.engine import Engine
from runner.exceptions import ExperimentExecutionError
from runner.seccomp import profile

#: tmpfs sizes are given in pages (``size=`` is taken by Podman's own volume quotas).
PAGE_SIZE = 4096
_FILL_AT = "/support"
#: The support volume's name (a digest of its content follows) and labels: it is shared
#: by every runner of the engine, so it has no owner; `runner cleanup --all` removes it.
SUPPORT_VOLUME = "experiment-runner-support"
SUPPORT_LABELS = {LABEL: "support"}
#: Masks over what Podman adds to a read-only root: empty, read-only, capped.
MASKS = {path: "ro,noexec,nosuid,nodev,size=4k" for path in ("/var/tmp", "/run")}
RESOLV_CONF = "nameserver 127.0.0.1\n"
HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


@dataclass(frozen=True)
class PodmanSupport:
    """Files the sandbox needs from the engine's own machine (paths there), in one volume."""

    volume: str
    seccomp: str
    resolv_conf: str
    hosts: str

    @classmethod
    def at(cls, volume: str, mountpoint: str) -> PodmanSupport:
        return cls(
            volume=volume,
            seccomp=f"{mountpoint}/seccomp.json",
            resolv_conf=f"{mountpoint}/resolv.conf",
            hosts=f"{mountpoint}/hosts",
        )


def ensure_support(
    engine: Engine, image_id: str, helper_labels: Mapping[str, str]
) -> PodmanSupport:
    """The engine's support volume, created and filled if missing or not as expected.

    One volume per engine and content (its name carries the content's digest),
    shared by every runner: runs only read it. It is written only when what is
    there differs, so a runner never rewrites a file another is reading.
    """
    files = _support_files()
    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in files)).hexdigest()
    volume = engine.create_volume(SUPPORT_LABELS, name=f"{SUPPORT_VOLUME}-{digest[:16]}")
    helper = engine.create(
        image_id,
        ["true"],
        labels=dict(helper_labels),
        network_mode="none",
        mounts=[Mount(target=_FILL_AT, source=volume.name, type="volume")],
    )
    try:
        if _read_back(engine, helper) != dict(files):
            engine.put_archive(helper, _FILL_AT, _archive(files))
    finally:
        engine.remove(helper)
    return PodmanSupport.at(volume.name, volume.mountpoint)


def _support_files() -> list[tuple[str, bytes]]:
    return [
        ("seccomp.json", profile().encode()),
        ("resolv.conf", RESOLV_CONF.encode()),
        ("hosts", HOSTS.encode()),
    ]


def _read_back(engine: Engine, helper: str) -> dict[str, bytes]:
    """The files now in the support volume (none, if it is new)."""
    try:
        data = engine.get_archive(helper, _FILL_AT)
    except ExperimentExecutionError:
        return {}
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                found[member.name.removeprefix(_FILL_AT.strip("/") + "/")] = extracted.read()
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


def tmp_volume_options(size: int, inodes: int) -> dict[str, str]:
    """Driver options of a ``/tmp`` volume: a tmpfs capped in bytes and in files."""
    pages = max(1, -(-size // PAGE_SIZE))
    return {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": f"nr_blocks={pages},nr_inodes={inodes},mode=1777",
    }


def adapt(config: dict[str, Any], support: PodmanSupport, tmp_volume: str) -> dict[str, Any]:
    """The Docker ``config`` of a sandbox, asked the way Podman applies every control."""
    adapted = dict(config)
    adapted["security_opt"] = [
        f"seccomp={support.seccomp}" if str(o).startswith("seccomp=") else o
        for o in config["security_opt"]
    ]
    adapted["tmpfs"] = dict(MASKS)
    adapted["volumes"] = {tmp_volume: {"bind": "/tmp", "mode": "rw,noexec,nosuid,nodev"}}
    adapted["mounts"] = [
        *config["mounts"],
        Mount(target="/etc/resolv.conf", source=support.resolv_conf, type="bind", read_only=True),
        Mount(target="/etc/hosts", source=support.hosts, type="bind", read_only=True),
    ]
    return adapted
