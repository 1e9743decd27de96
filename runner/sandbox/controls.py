"""Verify, don't trust: read a created container back and check every control is in force.

An engine may accept a setting and quietly run without it (Podman's
Docker-compatible API ignores ``runtime``, adds a writable ``/var/tmp``, ...).
Before a sandbox is started, ``gaps`` compares what the engine reports for the
container with what was asked; any difference stops the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from runner.core.sizes import parse_size
from runner.sandbox.artifacts import OUTPUTS_PATH
from runner.sandbox.policy import Run, SandboxPolicy, host_pids_limit
from runner.sandbox.seccomp import profile


def gaps(inspected: Mapping[str, Any], policy: SandboxPolicy, run: Run) -> list[str]:
    """The controls ``inspected`` (``docker inspect`` of a created container) lacks, in words."""
    host = inspected.get("HostConfig") or {}
    config = inspected.get("Config") or {}
    found: list[str] = []

    def expect(control: str, ok: bool, seen: object) -> None:
        if not ok:
            found.append(f"{control} (the engine reports {seen!r})")

    # Podman's compatible answer says "oci" whatever runs; its own API names the runtime.
    runtime = inspected.get("OCIRuntime") or host.get("Runtime")
    if policy.runtime is not None:
        expect(f"runtime {policy.runtime}", runtime == policy.runtime, runtime)
    expect("no network", host.get("NetworkMode") == "none", host.get("NetworkMode"))
    if run.support is not None and not run.podman:
        disabled = config.get("NetworkDisabled")
        expect("no network set up by the engine", disabled is True, disabled)
    expect(
        "read-only root filesystem", host.get("ReadonlyRootfs") is True, host.get("ReadonlyRootfs")
    )
    expect("not privileged", not host.get("Privileged"), host.get("Privileged"))
    user = config.get("User")
    expect(f"user {run.uid}:{run.uid}", user == f"{run.uid}:{run.uid}", user)
    if "EffectiveCaps" in inspected:
        # Podman lists the defaults it dropped, not ALL; its own API gives the sets themselves.
        caps = [*(inspected.get("EffectiveCaps") or []), *(inspected.get("BoundingCaps") or [])]
        expect("every capability dropped", not caps, caps)
    else:
        cap_drop = [str(c).upper().removeprefix("CAP_") for c in host.get("CapDrop") or []]
        expect("every capability dropped", "ALL" in cap_drop, host.get("CapDrop"))
    expect("no capability added", not host.get("CapAdd"), host.get("CapAdd"))
    options = [str(o) for o in host.get("SecurityOpt") or []]
    expect(
        "no-new-privileges",
        any(o.replace("=true", "").replace(":true", "") == "no-new-privileges" for o in options),
        options,
    )
    expect(
        "the project's seccomp profile",
        any(_same_profile(o, run) for o in options),
        [o[:60] for o in options],
    )
    memory = parse_size(policy.memory_limit)
    expect("memory cap", host.get("Memory") == memory, host.get("Memory"))
    expect(
        "no swap (memory + swap = memory)", host.get("MemorySwap") == memory, host.get("MemorySwap")
    )
    nano = int(policy.cpu_limit * 1e9)
    expect("CPU cap", host.get("NanoCpus") == nano, host.get("NanoCpus"))
    pids = host_pids_limit(policy.pids_limit, user_kernel=run.user_kernel)
    expect("PID cap", host.get("PidsLimit") == pids, host.get("PidsLimit"))
    ulimits = {
        str(u.get("Name")).lower().removeprefix("rlimit_"): (u.get("Soft"), u.get("Hard"))
        for u in host.get("Ulimits") or []
    }
    for name, value in (("nofile", 1024), ("core", 0), ("nproc", policy.pids_limit)):
        expect(f"ulimit {name}={value}", ulimits.get(name) == (value, value), ulimits.get(name))
    found.extend(_writable_mounts(inspected, run))
    return found


@cache
def _expected_profile() -> Any:
    return json.loads(profile())


def _same_profile(option: str, run: Run) -> bool:
    if not option.startswith("seccomp="):
        return False
    value = option.removeprefix("seccomp=")
    if run.podman and run.support is not None:
        # Podman reads it from the file the runner wrote into its support volume.
        return value == run.support.seccomp
    try:
        return bool(json.loads(value) == _expected_profile())
    except ValueError:
        return False


def _writable_mounts(inspected: Mapping[str, Any], run: Run) -> list[str]:
    """Every mount but the capped ``/tmp`` (and, with outputs, ``/outputs``) is read-only."""
    host = inspected.get("HostConfig") or {}
    found = []
    tmpfs = host.get("Tmpfs") or {}
    mounts = inspected.get("Mounts") or []
    expected = {"/tmp": "size="}
    if run.outputs is not None:
        expected[str(OUTPUTS_PATH)] = run.outputs.tmpfs_options()
    on_volumes = dict(run.tmp_volumes)
    for target, want in expected.items():
        if target in on_volumes:
            # Podman: the run's own capped tmpfs volume, bound without exec.
            bound = [m for m in mounts if m.get("Destination") == target]
            ok = len(bound) == 1 and (
                bound[0].get("Name") == on_volumes[target]
                and "noexec" in (bound[0].get("Options") or [])
            )
            if not ok or target in tmpfs:
                found.append(
                    f"{target} on the run's own capped volume (the engine mounts {bound!r})"
                )
        elif want not in str(tmpfs.get(target, "")) or any(
            m.get("Destination") == target for m in mounts
        ):
            found.append(f"a capped {target} tmpfs (the engine reports {tmpfs.get(target)!r})")
    for target, options in tmpfs.items():
        if target not in expected and "ro" not in str(options).split(","):
            found.append(f"no writable mount but /tmp (the engine adds a tmpfs at {target})")
    for mount in mounts:
        target = mount.get("Destination")
        if mount.get("RW") and target not in expected:
            found.append(f"no writable mount but /tmp (the engine mounts {target} writable)")
    return found
