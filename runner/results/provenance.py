"""A result's provenance, put together after its run (``Provenance``), and two compared."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from runner.core.provenance import ArtifactDigest, InputDigest, Limits, Provenance
from runner.results.store import ScriptStore, file_sha256, read_tree
from runner.sandbox.files.tree import TreeRefused
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy, sandbox_environment
from runner.sandbox.request import RunRequest
from runner.sandbox.seccomp import profile

#: How a digest that could not be taken (a directory over the digest's budget) begins.
UNAVAILABLE = "unavailable: "
#: Fields that differ between a run and its replay by design, not by what ran.
EXPECTED_DIFFERENCES = ("script_path", "stored", "warm", "artifacts", "sandbox.method")


def runner_version() -> str:
    try:
        return version("experiment-runner")
    except PackageNotFoundError:
        return "unknown"


def seccomp_sha256() -> str:
    """SHA-256 of the seccomp profile every sandbox gets (the text the engine is given)."""
    return hashlib.sha256(profile().encode()).hexdigest()


def input_digest(path: Path) -> InputDigest:
    """One input by digest: a file's SHA-256, or a directory's tree digest."""
    try:
        if path.is_dir() and not path.is_symlink():
            tree = read_tree(path)
            return InputDigest(path=str(path), size=tree.size, sha256=tree.digest, kind="directory")
        size, sha = file_sha256(path)
    except (TreeRefused, OSError) as e:
        return InputDigest(path=str(path), size=0, sha256=f"{UNAVAILABLE}{e}")
    return InputDigest(path=str(path), size=size, sha256=sha)


@dataclass(frozen=True)
class Described:
    """What was digested before a run: reused by the provenance after it."""

    script_sha256: str
    script_dir_sha256: str
    stored: str | None
    inputs: tuple[InputDigest, ...]


def before_run(request: RunRequest, store: ScriptStore | None) -> Described:
    """Digest the script, its directory and the inputs (and store the directory), before
    the run starts, so that what is recorded is what the sandbox was given."""
    _size, script_sha = file_sha256(request.script)
    directory = request.mounts[0]
    stored: str | None = None
    try:
        if store is not None and store.max_bytes > 0:
            tree_digest, kept = store.keep(directory)
            stored = tree_digest if kept else None
        else:
            tree_digest = read_tree(directory).digest
    except (TreeRefused, OSError) as e:  # a special file, too big, a directory we cannot read
        tree_digest = f"{UNAVAILABLE}{e}"
    inputs = tuple(input_digest(path) for path in request.mounts[1:])
    return Described(script_sha, tree_digest, stored, inputs)


def describe(
    described: Described,
    request: RunRequest,
    policy: SandboxPolicy,
    execution: Execution,
) -> Provenance:
    """The provenance of ``execution``, the run of ``request`` under ``policy``."""
    facts = execution.facts
    locks = facts.locks if facts is not None else {}
    return Provenance(
        script_sha256=described.script_sha256,
        script_path=str(request.script),
        script_dir_sha256=described.script_dir_sha256,
        stored=described.stored,
        inputs=list(described.inputs),
        args=list(request.args),
        environment=sandbox_environment(policy.cpu_limit, outputs=request.outputs is not None),
        image=policy.image,
        image_id=execution.image_id,
        lock_sha256=locks.get("requirements.lock"),
        debian_lock_sha256=locks.get("debian.lock"),
        seccomp_sha256=seccomp_sha256(),
        limits=Limits(
            timeout=request.timeout,
            memory=policy.memory_limit,
            cpus=policy.cpu_limit,
            pids=policy.pids_limit,
            tmpfs=policy.tmpfs_size,
            output_limit=request.output_limit,
        ),
        runtime_asked=policy.runtime,
        engine=execution.engine,
        sandbox=facts,
        runner_version=runner_version(),
        warm=execution.warm_start,
        artifacts=[
            ArtifactDigest(name=a.name, size=a.size, sha256=a.sha256) for a in execution.artifacts
        ],
    )


@dataclass(frozen=True)
class Difference:
    """One field of two provenances that differs: its dotted name and both values."""

    field: str
    recorded: object
    now: object


def differences(recorded: Provenance, now: Provenance) -> list[Difference]:
    """The fields that differ, by dotted name, leaving out those a replay changes by design."""
    before, after = recorded.flat(), now.flat()
    found = []
    for name in sorted(set(before) | set(after)):
        if any(name == e or name.startswith(f"{e}.") for e in EXPECTED_DIFFERENCES):
            continue
        if before.get(name) != after.get(name):
            found.append(Difference(name, before.get(name), after.get(name)))
    return found


def close(a: float, b: float, tolerance: float) -> bool:
    """Whether two metric values agree within ``tolerance`` (absolute, or relative to the
    larger value, whichever is looser)."""
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
