"""What ran, recorded with every result: ``Provenance`` and its parts.

A result's provenance names everything its numbers depend on that the runner can
see: the script and its directory by digest, each input by digest, the
arguments, the sandbox's whole environment, the image and its locks, the
runtime and engine with their versions, the seccomp profile, the limits, the
runner's version, and the machine (kernel, CPU, the BLAS library and the kernel
it chose), the last asked inside the sandbox before the script starts. ``runner
replay`` compares two of them field by field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Bumped when a field changes meaning; a replay reads every version it knows.
PROVENANCE_FORMAT = 1


class InputDigest(BaseModel):
    """One input as the run saw it: a file, or a directory (its tree digest)."""

    model_config = ConfigDict(frozen=True)

    path: str
    #: Bytes: the file's, or the sum of a directory's regular files.
    size: int
    #: The file's SHA-256, or the directory's tree digest (``runner.results.digests``).
    sha256: str
    kind: str = "file"


class ArtifactDigest(BaseModel):
    """A file the script wrote: its name below the outputs, size and SHA-256."""

    model_config = ConfigDict(frozen=True)

    name: str
    size: int
    sha256: str


class Limits(BaseModel):
    """The sandbox's bounds for the run (what ``SandboxPolicy`` and the request set)."""

    model_config = ConfigDict(frozen=True)

    timeout: float
    memory: str
    cpus: float
    pids: int
    tmpfs: str
    output_limit: int


class BlasLibrary(BaseModel):
    """A BLAS (or OpenMP) library loaded in the sandbox, as threadpoolctl reports one."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_api: str = Field(default="", max_length=100)
    internal_api: str = Field(default="", max_length=100)
    version: str | None = Field(default=None, max_length=200)
    #: The kernel the library chose for this CPU (OpenBLAS's core name, say ``SkylakeX``).
    architecture: str | None = Field(default=None, max_length=200)
    threading_layer: str | None = Field(default=None, max_length=100)
    num_threads: int | None = None
    filepath: str | None = Field(default=None, max_length=1000)


class SandboxFacts(BaseModel):
    """What the sandbox itself reports about its machine, asked by the runner's own code
    before the script starts (``runner.sandbox.facts``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: The kernel release inside the sandbox (gVisor reports its own).
    kernel: str | None = Field(default=None, max_length=200)
    cpu_model: str | None = Field(default=None, max_length=500)
    #: The CPU's feature flags, sorted (``/proc/cpuinfo``).
    cpu_flags: list[str] = Field(default_factory=list, max_length=1000)
    #: CPUs the sandbox may run on (its affinity, not its quota).
    cpus: int | None = None
    blas: list[BlasLibrary] = Field(default_factory=list, max_length=20)
    #: SHA-256 of each lock file the image carries (``requirements.lock``, ...), by name.
    locks: dict[str, str] = Field(default_factory=dict, max_length=20)
    #: How the facts were asked: ``threadpoolctl`` (numpy loaded, warm) or ``ctypes``.
    method: str | None = Field(default=None, max_length=50)


class EngineRecord(BaseModel):
    """The engine and runtime that ran the sandbox, as the engine reports them."""

    model_config = ConfigDict(frozen=True)

    #: ``docker`` or ``podman``.
    engine: str
    engine_version: str | None = None
    #: The engine's machine: its kernel, operating system and architecture.
    kernel: str | None = None
    os: str | None = None
    architecture: str | None = None
    #: The OCI runtime (``runc`` when the engine's default), its version where reported.
    runtime: str
    runtime_version: str | None = None


class Provenance(BaseModel):
    """Everything a run's numbers depend on that the runner can see (``result.provenance``)."""

    model_config = ConfigDict(frozen=True)

    format: int = PROVENANCE_FORMAT
    #: The script's SHA-256, and its path when it ran.
    script_sha256: str
    script_path: str
    #: The tree digest of the script's directory (names, modes, contents, link targets).
    script_dir_sha256: str
    #: Where the directory is kept (``runner.results.store``): its tree digest names it
    #: there; None when it was over the store's bound (digests only) or no store is kept.
    stored: str | None = None
    inputs: list[InputDigest] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    #: The script's whole environment, as the runner set it in the sandbox.
    environment: dict[str, str] = Field(default_factory=dict)
    #: The image as asked (a tag) and the immutable ID that ran.
    image: str
    image_id: str | None = None
    #: SHA-256 of the image's ``requirements.lock`` and of its Debian lock (where it has one).
    lock_sha256: str | None = None
    debian_lock_sha256: str | None = None
    seccomp_sha256: str
    limits: Limits
    #: The runtime as asked (None: the engine's default); what ran is ``engine.runtime``.
    runtime_asked: str | None = None
    engine: EngineRecord | None = None
    #: The machine as the sandbox saw it (CPU, kernel, BLAS); None where it did not say.
    sandbox: SandboxFacts | None = None
    runner_version: str
    #: The run was handed to a warm container; its files were copied, not bind-mounted.
    warm: bool = False
    artifacts: list[ArtifactDigest] = Field(default_factory=list)

    def flat(self) -> dict[str, Any]:
        """The fields as one flat mapping (``a.b`` keys), for side-by-side comparison."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}
