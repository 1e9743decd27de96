"""What Podman's Docker-compatible API needs asked differently, for the same sandbox.

Podman (4.x, rootful, through ``podman system service``) accepts most of the
hardened configuration as Docker does, but not all of it, and some of what it
accepts it does not apply (``runner.sandbox.controls`` catches those). Found on Podman
4.3.1, each closed here:

- a seccomp profile is read from a *file on the engine's machine*, not taken as
  JSON text: the sandbox names the profile in the engine's support volume
  (``runner.sandbox.support``) by its path there;
- the DNS options are ignored with no network, and the machine's own
  ``/etc/resolv.conf`` and ``/etc/hosts`` would be copied in: the sandbox binds
  its own from the support volume, as on Docker (``container_config``);
- a tmpfs refuses ``nr_inodes``: each tmpfs (``/tmp``, and ``/outputs`` with
  outputs on) becomes a per-container volume of the ``tmpfs`` type, mounted
  with ``nr_blocks`` (its size) and ``nr_inodes``, and bound with its flags
  (``noexec,nosuid,nodev``);
- a read-only root gains writable, uncapped, exec-allowed ``/var/tmp`` and
  ``/run``: both are masked with empty read-only tmpfs;
- ``OOMKilled`` is never set: an exit of 137 with peak memory at the cap is an
  OOM kill (see ``Sandbox.record``); without telemetry it cannot be told.

Waiting (the compatible ``wait`` polls in a busy loop), removal (which may
answer 500 while the container is still exiting), telling Podman from Docker
(by a header of its ping: its ``version`` is slow) and reading a container back
(from Podman's own API, which reports what the compatible one leaves out) are
handled in ``engine.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.core.sizes import parse_size
from runner.sandbox.policy import SupportFiles

#: tmpfs sizes are given in pages (``size=`` is taken by Podman's own volume quotas).
PAGE_SIZE = 4096
#: Masks over what Podman adds to a read-only root: empty, read-only, capped.
MASKS = {path: "ro,noexec,nosuid,nodev,size=4k" for path in ("/var/tmp", "/run")}


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
    config: dict[str, Any], support: SupportFiles, volumes: Mapping[str, str]
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
    return adapted
