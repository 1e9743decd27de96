"""A fake Docker seam: records what the runner asks for, replays scripted endings."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from runner.backends.bootstrap import READY
from runner.core.exceptions import ExperimentExecutionError
from runner.core.sizes import parse_size
from runner.sandbox.engine import (
    ContainerInfo,
    ContainerState,
    Engine,
    EngineKind,
    OutputStream,
    SandboxRefused,
    StdinChannel,
    VolumeInfo,
)
from runner.sandbox.policy import END_MARKER, EXIT_MARKER
from runner.sandbox.support import SUPPORT_AT, SUPPORT_VOLUME


class FakeStream:
    def __init__(self, frames: list[tuple[bytes | None, bytes | None]]) -> None:
        self.frames = frames
        self.closed = False

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        yield from self.frames

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeEngine:
    """Stands in for ``DockerEngine`` (it satisfies ``runner.sandbox.engine.Engine``).

    Each container prints ``stdout`` and ``stderr``; ``wait_results`` are
    returned in turn. A container created with ``stdin_open`` (a warm slot)
    first announces it is ready, and prints only once a script is handed over.
    """

    stdout: bytes = b'{"success": true, "metrics": {"accuracy": 0.9}}\n'
    stderr: bytes = b""
    wait_results: list[int | None] = field(default_factory=lambda: [0])
    oom_killed: bool = False
    runtimes_registered: set[str] = field(default_factory=lambda: {"runc"})
    on_wait: Callable[[], None] | None = None
    create_error: Exception | None = None
    exit_reported: bool = True
    #: The status the sandbox's wrapper records for the script (with ``exit_reported``).
    exit_status: int = 0
    #: Seconds a removal takes (a slow engine).
    remove_delay: float = 0.0
    created: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    handed_over: dict[str, bytes] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    volumes_made: list[VolumeInfo] = field(default_factory=list)
    volumes_removed: list[str] = field(default_factory=list)
    volumes_remade: list[str] = field(default_factory=list)
    archives: dict[tuple[str, str], bytes] = field(default_factory=dict)
    #: An engine on another machine: a bind mount never shows this machine's files.
    remote: bool = False
    #: Whether a ping answers (an engine that went away and came back says so in turn).
    answering: bool = True
    ncpu: int = 16
    mem_total: int = 64 * 1024**3
    #: Fields the engine reports differently from what was asked (a silently weaker engine).
    quietly: dict[str, Any] = field(default_factory=dict)
    #: "podman" answers as Podman's compatible API does (see ``inspect``).
    engine_kind: EngineKind = "docker"
    volume_options: dict[str, Mapping[str, str] | None] = field(default_factory=dict)
    #: Containers the engine lists (by label) besides none: ones other callers left.
    listed: list[ContainerInfo] = field(default_factory=list)
    #: The engine's support volume (``runner.sandbox.support``), its filling helpers and what they
    #: wrote: kept apart, so that ``created``, ``calls`` and ``volumes_made`` are the runs'.
    support_volumes: list[VolumeInfo] = field(default_factory=list)
    support_helpers: list[dict[str, Any]] = field(default_factory=list)
    support_archives: list[bytes] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        runtimes: dict[str, Any] = {name: {} for name in self.runtimes_registered}
        return {
            "Runtimes": runtimes,
            "CgroupDriver": "fake",
            "CgroupVersion": "1",
            "NCPU": self.ncpu,
            "MemTotal": self.mem_total,
        }

    def containers(self, label: str) -> list[ContainerInfo]:
        key, has_value, value = label.partition("=")
        return [
            c
            for c in self.listed
            if c.id not in self.removed
            and key in c.labels
            and (not has_value or c.labels[key] == value)
        ]

    def image_id(self, ref: str) -> str:
        return "sha256:" + "ab" * 32

    def create(self, image: str, command: list[str], **config: Any) -> str:
        if any(m["Target"] == SUPPORT_AT for m in config.get("mounts", [])):
            self.support_helpers.append({"image": image, "command": command, **config})
            return f"s{len(self.support_helpers)}"
        if self.create_error is not None:
            raise self.create_error
        gone = [v for v in self.support_volumes if v.name in self.volumes_removed]
        for mount in config.get("mounts", []):
            if mount["Type"] == "bind" and any(
                mount["Source"].startswith(v.mountpoint + "/") for v in gone
            ):
                # As Docker answers: the volume's directory went with it.
                raise SandboxRefused(
                    "The Docker engine refused the sandbox: invalid mount config for type "
                    f'"bind": bind source path does not exist: {mount["Source"]}'
                )
        self.created.append({"image": image, "command": command, **config})
        self.calls.append("create")
        return f"c{len(self.created)}"

    def attach(self, container_id: str) -> OutputStream:
        self.calls.append("attach")
        # The sandbox's wrapper records the script's exit as the last line of stderr.
        marker = EXIT_MARKER + b"%d\n" % self.exit_status if self.exit_reported else b""
        end = END_MARKER if self.exit_reported else b""
        frames: list[tuple[bytes | None, bytes | None]] = [
            (self.stdout + end, None),
            (None, self.stderr + marker),
        ]
        if self._config(container_id).get("stdin_open"):
            frames.insert(0, (READY, None))
        return FakeStream(frames)

    def open_stdin(self, container_id: str) -> StdinChannel | None:
        return None  # as Podman: each hand-over attaches (``send_stdin``)

    def send_stdin(self, container_id: str, data: bytes) -> None:
        self.calls.append("send_stdin")
        self.handed_over[container_id] = data

    def start(self, container_id: str) -> None:
        self.calls.append("start")
        self.started.append(container_id)

    def wait(self, container_id: str, timeout: float) -> int | None:
        self.calls.append("wait")
        if self.on_wait is not None:
            self.on_wait()
        code = self.wait_results.pop(0)
        if code is not None:
            self.finished.add(container_id)
        return code

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        self.calls.append("kill" if signal == "SIGKILL" else f"kill {signal}")
        if signal == "SIGKILL":
            self.finished.add(container_id)

    def state(self, container_id: str) -> ContainerState:
        return ContainerState(
            running=container_id not in self.finished,
            exit_code=137,
            oom_killed=self.oom_killed,
        )

    def remove(self, container_id: str) -> None:
        if container_id.startswith("s"):
            return  # a support helper
        if self.remove_delay:
            time.sleep(self.remove_delay)
        self.calls.append("remove")
        self.removed.append(container_id)
        self.finished.add(container_id)

    def answers(self) -> bool:
        self.calls.append("ping")
        return self.answering

    def remove_leftovers(self) -> None:
        self.calls.append("remove leftovers")

    def inspect(self, container_id: str) -> dict[str, Any]:
        """What Docker would report for the container, with ``quietly`` applied on top."""
        config = self._config(container_id)
        host: dict[str, Any] = {
            "Runtime": config.get("runtime", "runc"),
            "NetworkMode": config.get("network_mode", "default"),
            "ReadonlyRootfs": bool(config.get("read_only")),
            "Privileged": False,
            "CapDrop": config.get("cap_drop"),
            "CapAdd": None,
            "SecurityOpt": config.get("security_opt"),
            "Memory": parse_size(config["mem_limit"]) if "mem_limit" in config else 0,
            "MemorySwap": parse_size(config["memswap_limit"]) if "memswap_limit" in config else 0,
            "NanoCpus": config.get("nano_cpus", 0),
            "PidsLimit": config.get("pids_limit"),
            "Ulimits": [dict(u) for u in config.get("ulimits", [])],
            "Tmpfs": config.get("tmpfs"),
        }
        mounts = [
            {"Destination": m["Target"], "RW": not m.get("ReadOnly")}
            for m in config.get("mounts", [])
        ]
        container: dict[str, Any] = {"User": config.get("user")}
        if config.get("network_disabled"):
            container["NetworkDisabled"] = True  # Docker leaves it out when false
        inspected = {"HostConfig": host, "Config": container, "Mounts": mounts}
        if self.engine_kind == "podman":
            _as_podman(inspected, config)
        host.update(self.quietly)
        return inspected

    def describe(self) -> str:
        return "Fake Engine 1.0 at fake://"

    def kind(self) -> EngineKind:
        return self.engine_kind

    # files over the API: volumes live in memory; archives of bind mounts read the host,
    # as a local engine's would.

    def create_volume(
        self,
        labels: Mapping[str, str],
        driver_opts: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> VolumeInfo:
        for volume in [*self.volumes_made, *self.support_volumes]:
            if volume.name == name and name not in self.volumes_removed:
                return volume
        if name is not None and name in self.volumes_removed:
            # Made again after its removal: the same name, so the same mountpoint.
            self.volumes_remade.append(name)
            self.volumes_removed.remove(name)
            return next(v for v in [*self.volumes_made, *self.support_volumes] if v.name == name)
        name = name or f"v{len(self.volumes_made) + 1}"
        volume = VolumeInfo(name, f"/var/lib/fake/volumes/{name}/_data", dict(labels))
        if name.startswith(SUPPORT_VOLUME):
            self.support_volumes.append(volume)
        else:
            self.volumes_made.append(volume)
        self.volume_options[name] = driver_opts
        return volume

    def remove_volume(self, name: str) -> None:
        self.calls.append("remove_volume")
        self.volumes_removed.append(name)

    def volumes(self, label: str) -> list[VolumeInfo]:
        key, _, value = label.partition("=")
        return [
            v
            for v in [*self.volumes_made, *self.support_volumes]
            if v.name not in self.volumes_removed and v.labels.get(key) == value
        ]

    def put_archive(self, container_id: str, path: str, data: bytes | BinaryIO) -> None:
        if container_id.startswith("s"):
            self.support_archives.append(data if isinstance(data, bytes) else data.read())
            return
        self.calls.append("put_archive")
        self.archives[(container_id, path)] = data if isinstance(data, bytes) else data.read()

    def get_archive(self, container_id: str, path: str) -> bytes:
        if self.remote:
            raise ExperimentExecutionError(f"Could not find the file {path} in container")
        for mount in self._config(container_id).get("mounts", []):
            if mount["Type"] == "bind" and path.startswith(mount["Target"] + "/"):
                host = Path(mount["Source"] + path[len(mount["Target"]) :])
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    tar.add(host, arcname=host.name)
                return buffer.getvalue()
        raise ExperimentExecutionError(f"no such path in the fake container: {path}")

    def _config(self, container_id: str) -> dict[str, Any]:
        made = self.support_helpers if container_id.startswith("s") else self.created
        return made[int(container_id[1:]) - 1]


def file_mounts(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The mounts of a created container but the support volume's hosts and resolv.conf."""
    support = ("/etc/hosts", "/etc/resolv.conf")
    return [m for m in config.get("mounts", []) if m["Target"] not in support]


def _as_podman(inspected: dict[str, Any], config: dict[str, Any]) -> None:
    """Rewrite ``inspected`` the way Podman 4.3 reports the same container."""
    host = inspected["HostConfig"]
    # The compatible API ignores the runtime asked for; its own one says what runs.
    host["Runtime"] = "oci"
    inspected["OCIRuntime"] = "runc"
    dropped_all = "ALL" in (config.get("cap_drop") or [])
    host["CapDrop"] = ["CHOWN", "KILL", "SETUID"] if dropped_all else []
    inspected["EffectiveCaps"] = None if dropped_all else ["CAP_CHOWN"]
    inspected["BoundingCaps"] = None if dropped_all else ["CAP_CHOWN"]
    host["Ulimits"] = [
        {**u, "Name": "RLIMIT_" + str(u["Name"]).upper()} for u in host["Ulimits"] or []
    ]
    for name, bind in (config.get("volumes") or {}).items():
        inspected["Mounts"].append(
            {
                "Type": "volume",
                "Name": name,
                "Destination": bind["bind"],
                "RW": "ro" not in bind["mode"].split(","),
                "Options": [o for o in bind["mode"].split(",") if o not in ("rw", "ro")],
            }
        )


def _conforms(engine: FakeEngine) -> Engine:
    """mypy checks here that the fake satisfies the seam's interface."""
    return engine
