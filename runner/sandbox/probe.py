"""What an engine is, found once: its runtime, whether it sees this machine's files,
its support volume, its capacity, and whether telemetry can be read from its cgroups."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.exceptions import ExperimentExecutionError
from runner.core.provenance import EngineRecord
from runner.core.settings import Transfer
from runner.sandbox.cleanup import build_labels, deadline_after
from runner.sandbox.engine import Engine
from runner.sandbox.files.transfer import engine_sees_local_files
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.request import RunRequest
from runner.sandbox.support import SupportVolume
from runner.sandbox.telemetry import CgroupTelemetry


@dataclass(frozen=True)
class EngineFacts:
    """One engine as a runner of ``policy`` found it (``probe``)."""

    #: The image the policy names, as the engine had it then.
    image_id: str
    #: The policy's runtime is a user-space kernel (gVisor's runsc).
    user_kernel: bool
    #: A path bind-mounted from this machine shows this machine's file (a local engine).
    shares_files: bool
    #: Podman's Docker-compatible service, not Docker (``runner.sandbox.podman``).
    podman: bool
    #: The engine's own count of its machine's CPUs and memory.
    cpus: int
    memory: int
    #: Peak memory and CPU time read from the engine's cgroups; None where they cannot be.
    telemetry: CgroupTelemetry | None
    #: The sandboxes' ``hosts`` and ``resolv.conf`` (and Podman's seccomp profile).
    support: SupportVolume

    def capacity(self) -> tuple[int, int]:
        """CPU cores and bytes of memory of the machine the engine runs on."""
        if self.shares_files:
            cores = len(os.sched_getaffinity(0))
            return cores, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return self.cpus, self.memory


def probe(engine: Engine, policy: SandboxPolicy, transfer: Transfer) -> EngineFacts:
    """Find out what ``engine`` is for sandboxes of ``policy``; raise what makes it unusable.

    A runtime the engine does not have is an error (the runner never falls
    back), and so is a missing image. Whether the engine sees this machine's
    files is tested, not guessed (unless ``transfer="bind"`` says so).
    """
    info = engine.info()
    runtime = policy.runtime
    registered = set(info.get("Runtimes") or {})
    if runtime is not None and runtime not in registered:
        raise ExperimentExecutionError(
            f"Runtime {runtime!r} is not registered with the Docker engine "
            f"(registered: {', '.join(sorted(registered)) or 'none'}).",
            hint="register it in /etc/docker/daemon.json and reload the engine, or "
            "choose one of the registered runtimes; the runner never falls back.",
        )
    image_id = engine.image_id(policy.image)
    shares_files = True
    if transfer != "bind":
        shares_files = engine_sees_local_files(engine, image_id, build_labels(deadline_after(60)))
    telemetry = CgroupTelemetry()
    return EngineFacts(
        image_id=image_id,
        user_kernel=runtime is not None and is_user_kernel(info, runtime),
        shares_files=shares_files,
        podman=engine.kind() == "podman",
        cpus=int(info.get("NCPU") or 1),
        memory=int(info.get("MemTotal") or 0),
        # The engine's cgroups are readable here only if it runs on this machine.
        telemetry=telemetry if shares_files and telemetry.available(info) else None,
        # Read in place only where that was seen to work, not where transfer='bind' says so.
        support=SupportVolume(engine, image_id, here=shares_files and transfer != "bind"),
    )


def engine_record(engine: Engine, runtime: str | None) -> EngineRecord:
    """The engine and runtime as the engine reports them (a result's provenance)."""
    info = engine.info()
    name = runtime or str(info.get("DefaultRuntime") or "runc")
    version: str | None = None
    commit = info.get("RuncCommit") or {}
    if Path(str(((info.get("Runtimes") or {}).get(name) or {}).get("path") or name)).name == "runc":
        version = str(commit.get("ID")) if isinstance(commit, dict) and commit.get("ID") else None
    return EngineRecord(
        engine=engine.kind(),
        engine_version=str(info["ServerVersion"]) if info.get("ServerVersion") else None,
        kernel=str(info["KernelVersion"]) if info.get("KernelVersion") else None,
        os=str(info["OperatingSystem"]) if info.get("OperatingSystem") else None,
        architecture=str(info["Architecture"]) if info.get("Architecture") else None,
        runtime=name,
        runtime_version=version,
    )


def is_user_kernel(engine_info: dict[str, Any], runtime: str) -> bool:
    """True when ``runtime`` is gVisor's runsc (by its program, whatever its name)."""
    entry = (engine_info.get("Runtimes") or {}).get(runtime) or {}
    program = Path(str(entry.get("path") or runtime)).name
    return program == "runsc" or runtime == "runsc"


@dataclass(frozen=True)
class FileRoute:
    """How a run's files reach the engine's sandboxes: bound in place, or copied."""

    transfer: Transfer
    shares_files: bool

    def copies(self, request: RunRequest) -> bool:
        """Whether the request's files travel through the engine rather than a bind mount;
        with ``transfer="bind"``, files the sandbox user cannot read raise."""
        if request.packed:
            return True
        if self.transfer == "bind":
            if request.unreadable is not None:
                raise ExperimentExecutionError(
                    request.unreadable,
                    hint="make it readable by others, or let the runner copy the files "
                    "(transfer='auto' or 'copy').",
                )
            return False
        return self.transfer == "copy" or not self.shares_files or request.unreadable is not None

    @property
    def through_engine(self) -> bool:
        """Every run's files go through the engine's API (the warm pool's too)."""
        return self.transfer == "copy" or not self.shares_files

    def describe(self) -> str:
        """In words (for ``runner doctor``)."""
        if self.through_engine:
            why = "asked for" if self.transfer == "copy" else "it does not see this machine's files"
            return f"copied through the engine's API into a volume ({why})"
        if self.transfer == "bind":
            return "bind-mounted in place (transfer=bind); files others cannot read are refused"
        return "bind-mounted in place; files others cannot read are copied"
