"""Engine-side verification, shown to work on this engine: an engine that accepts the
hardened configuration and quietly drops part of it is refused, unstarted.

``dropping`` stands between the runner and the real engine and takes controls
out of each container it creates, as an engine might. A sandbox created through
it must be refused by the runner's own check after create
(``runner.sandbox.controls``), naming each control that went, and never
started. That proves this engine reports what it applies in the very fields the
check reads: a real engine dropping a control would be caught the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.cleanup import build_labels, deadline_after
from runner.sandbox.engine import (
    ContainerInfo,
    ContainerState,
    Engine,
    EngineKind,
    OutputStream,
    StdinChannel,
    VolumeInfo,
)
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import Resources, Sandbox
from runner.sandbox.policy import Run, SandboxPolicy
from runner.sandbox.probe import EngineFacts

#: What the dropping engine takes out of a container's configuration, and the words the
#: runner's check names each by.
DROPPED = {
    "read-only root filesystem": ("read_only", False),
    "every capability dropped": ("cap_drop", []),
    "no-new-privileges": ("security_opt", None),
    "the project's seccomp profile": ("security_opt", None),
    "PID cap": ("pids_limit", -1),
}


@dataclass
class Refusal:
    """What the runner said of the weakened container, and whether it was started."""

    dropped: tuple[str, ...]
    refused: str | None
    started: bool


@dataclass
class DroppingEngine:
    """An engine that creates each container without some of its controls (``DROPPED``)."""

    engine: Engine
    created: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    def create(self, image: str, command: list[str], **config: Any) -> str:
        weakened = dict(config)
        for key, value in DROPPED.values():
            if key == "security_opt":
                weakened[key] = []  # no no-new-privileges, the engine's default seccomp
            else:
                weakened[key] = value
        container_id = self.engine.create(image, command, **weakened)
        self.created.append(container_id)
        return container_id

    def start(self, container_id: str) -> None:
        self.started.append(container_id)
        raise ExperimentExecutionError("the weakened container must never be started")

    # Everything else as the real engine does it.

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def image_id(self, ref: str) -> str:
        return self.engine.image_id(ref)

    def attach(self, container_id: str) -> OutputStream:
        return self.engine.attach(container_id)

    def send_stdin(self, container_id: str, data: bytes) -> None:
        self.engine.send_stdin(container_id, data)

    def open_stdin(self, container_id: str) -> StdinChannel | None:
        return self.engine.open_stdin(container_id)

    def wait(self, container_id: str, timeout: float) -> int | None:
        return self.engine.wait(container_id, timeout)

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        self.engine.kill(container_id, signal)

    def state(self, container_id: str) -> ContainerState:
        return self.engine.state(container_id)

    def remove(self, container_id: str) -> None:
        self.engine.remove(container_id)

    def containers(self, label: str) -> list[ContainerInfo]:
        return self.engine.containers(label)

    def inspect(self, container_id: str) -> dict[str, Any]:
        return self.engine.inspect(container_id)

    def describe(self) -> str:
        return self.engine.describe()

    def kind(self) -> EngineKind:
        return self.engine.kind()

    def create_volume(
        self,
        labels: Mapping[str, str],
        driver_opts: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> VolumeInfo:
        return self.engine.create_volume(labels, driver_opts, name)

    def remove_volume(self, name: str) -> None:
        self.engine.remove_volume(name)

    def volumes(self, label: str) -> list[VolumeInfo]:
        return self.engine.volumes(label)

    def put_archive(self, container_id: str, path: str, data: bytes | BinaryIO) -> None:
        self.engine.put_archive(container_id, path, data)

    def get_archive(self, container_id: str, path: str) -> bytes:
        return self.engine.get_archive(container_id, path)

    def answers(self) -> bool:
        return self.engine.answers()

    def remove_leftovers(self) -> None:
        self.engine.remove_leftovers()


def refusal(engine: Engine, policy: SandboxPolicy, facts: EngineFacts) -> Refusal:
    """Create a sandbox through a ``DroppingEngine`` on ``engine``: what the runner said."""
    dropping = DroppingEngine(engine)
    lease = lease_uid()
    run = Run(
        command=["true"],
        workdir=Path("/"),
        read_only_paths=(),
        deadline=deadline_after(60),
        uid=lease.uid,
        labels=build_labels(deadline_after(60)),
        user_kernel=facts.user_kernel,
        support=facts.support.files,
        podman=facts.podman,
    )
    refused: str | None = None
    try:
        with Sandbox.create(dropping, facts.image_id, policy, run, Resources(lease=lease)):
            pass  # created and not refused: removed on leaving, never started
    except ExperimentExecutionError as e:
        if not dropping.created:
            raise  # the engine refused to create it at all: nothing was shown
        refused = str(e)
    return Refusal(tuple(DROPPED), refused, bool(dropping.started))
