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
- a tmpfs refuses ``nr_inodes``: each tmpfs (``/tmp``, and ``/outputs`` with
  outputs on) becomes a per-container volume of the ``tmpfs`` type, mounted
  with ``nr_blocks`` (its size) and ``nr_inodes``, and bound with its flags
  (``noexec,nosuid,nodev``);
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
from typing import Any

from docker.types import Mount

from runner.cleanup import LABEL
from runner.engine import Engine
from runner.exceptions import ExperimentExecutionError
from runner.sandbox import PodmanSupport
from runner.seccomp import profile
from runner.sizes import parse_size
from runner.transfer import unstarted

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
    helper = unstarted(
        engine, image_id, helper_labels, Mount(target=_FILL_AT, source=volume.name, type="volume")
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


def tmpfs_volume_options(tmpfs_options: str) -> dict[str, str]:
    """Driver options of a volume that is the tmpfs ``tmpfs_options`` asks for, caps and all.

    ``size=`` becomes ``nr_blocks=`` (pages): Podman takes ``size`` for its own
    volume quotas. The flags (``noexec`` ...) go on the bind instead (``bind_mode``).
    """
    kept = []
    for option in tmpfs_options.split(","):
        key, _, value = option.partition("=")
        if key == "size":
            kept.append(f"nr_blocks={max(1, -(-parse_size(value) // PAGE_SIZE))}")
        elif key in ("nr_inodes", "mode"):
            kept.append(option)
    return {"type": "tmpfs", "device": "tmpfs", "o": ",".join(kept)}


def bind_mode(tmpfs_options: str) -> str:
    """The flags of a tmpfs as options of a volume bound in its place."""
    flags = [o for o in tmpfs_options.split(",") if o in ("rw", "ro", *_FLAGS)]
    return ",".join(flags)


_FLAGS = ("noexec", "exec", "nosuid", "suid", "nodev", "dev")


def adapt(
    config: dict[str, Any], support: PodmanSupport, volumes: Mapping[str, str]
) -> dict[str, Any]:
    """The Docker ``config`` of a sandbox, asked the way Podman applies every control.

    ``volumes`` names the volume made for each of the config's tmpfs mounts.
    """
    missing = set(config["tmpfs"]) - set(volumes)
    if missing:
        raise ValueError(f"a sandbox on Podman needs a volume for each tmpfs: {sorted(missing)}")
    adapted = dict(config)
    adapted["security_opt"] = [
        f"seccomp={support.seccomp}" if str(o).startswith("seccomp=") else o
        for o in config["security_opt"]
    ]
    adapted["tmpfs"] = dict(MASKS)
    adapted["volumes"] = {
        volumes[target]: {"bind": target, "mode": bind_mode(options)}
        for target, options in config["tmpfs"].items()
    }
    adapted["mounts"] = [
        *config["mounts"],
        Mount(target="/etc/resolv.conf", source=support.resolv_conf, type="bind", read_only=True),
        Mount(target="/etc/hosts", source=support.hosts, type="bind", read_only=True),
    ]
    return adapted
