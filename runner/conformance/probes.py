"""The conformance probes: each control of the security model, judged from what the
probe sandboxes showed (``Seen``) against what the policy asks (``Expected``).

A probe is a pure function of the observations, so that each one can be shown
to fail on a sandbox that lacks its control: a real mutant container (the
integration tests) or an observation made up to lack it (the unit tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runner.core.sizes import parse_size
from runner.sandbox.identity import UID_COUNT, UID_FIRST
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy

#: The kernel gVisor's runsc shows its sandboxes (its own, whatever the host runs).
GVISOR_KERNEL = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"
#: What a connect or a route lookup to an outside address may answer in a sandbox
#: with no network: at once, locally, nothing sent.
UNREACHABLE = {"ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL", "ENETDOWN"}
#: The only places a sandbox may create files: its capped tmpfs, the engine's 64 MiB
#: ``/dev/shm`` and the IPC namespace's own message queues.
WRITABLE = {"/tmp", "/dev/shm", "/dev/mqueue"}
#: Mount points an engine adds for a sandbox beside its files: its own ``resolv.conf``
#: and ``hosts`` (the support volume's), the engine's hostname file and init, Podman's
#: copies of the image's ``passwd`` and ``group`` with the run's user added, and the
#: read-only masks the runner puts over what Podman adds.
ENGINE_MOUNTS = {
    "/",
    "/tmp",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/passwd",
    "/etc/group",
    "/usr/sbin/docker-init",
    "/run/podman-init",
    "/run/.containerenv",
    "/var/tmp",
    "/run",
}
#: Files the engine must mask (read as empty, or not there) and must refuse writes to.
MASKED = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
          "/proc/latency_stats", "/proc/acpi", "/proc/scsi", "/sys/firmware"]  # fmt: skip
UNWRITABLE = ["/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/proc/sys/vm/drop_caches",
              "/sys/kernel/mm/transparent_hugepage/enabled"]  # fmt: skip
#: Slack on the CPU cap (a share of it, and CPUs): the accounting's granularity, and with
#: the engine's cgroup, the sandbox's start before it spins (a few hundredths of a CPU).
CPU_SLACK = (1.1, 0.05)

Status = Literal["pass", "fail", "error"]


@dataclass(frozen=True)
class Expected:
    """What the configured policy asks of each sandbox, and what the engine is."""

    policy: SandboxPolicy
    output_limit: int
    #: The runtime is gVisor's: the script's calls reach its kernel, never the host's.
    user_kernel: bool
    #: The sandbox's whole environment, as the runner builds it (and the engine adds).
    environment: Mapping[str, str]
    #: The probe's own directory (the only host path it may see) and paths it must not.
    script_dir: str
    hidden: tuple[str, ...]
    #: The engine machine's cores (a CPU cap at or above them holds nothing back).
    cores: int
    #: The deadline of the CPU-and-deadline sandbox, in seconds.
    deadline: float


@dataclass
class Seen:
    """What the probe sandboxes and the host-side checks showed."""

    main: Execution | None = None
    cpu: Execution | None = None
    memory: Execution | None = None
    #: What the runner's check after create said of a container whose engine dropped
    #: controls (``runner.conformance.verification``), and whether it was started.
    refused: str | None = None
    dropped: tuple[str, ...] = ()
    started: bool = False
    #: The image checked against its lock: each check and its problem (None: holds).
    image_checks: list[tuple[str, str | None]] | None = None
    image_id: str | None = None
    #: Why a sandbox (or a check) could not run, by name.
    errors: dict[str, str] = field(default_factory=dict)

    def execution(self, name: str) -> Execution:
        """The sandbox ``name``'s run (``ValueError``: it has none)."""
        execution: Execution | None = getattr(self, name)
        if execution is None:
            raise ValueError(f"the {name} sandbox did not run")
        return execution

    def report(self, name: str) -> dict[str, Any]:
        """The last JSON line the sandbox ``name`` printed (``ValueError``: none)."""
        return reports(getattr(self, name))[-1]


def reports(execution: Execution | None) -> list[dict[str, Any]]:
    """Every JSON object line of a sandbox's stdout, in order."""
    found = []
    for line in (execution.stdout if execution is not None else "").splitlines():
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
    if not found:
        raise ValueError("the sandbox printed no report")
    return found


Verdict = tuple[bool, str]
Judge = Callable[[Seen, Expected], Verdict]


@dataclass(frozen=True)
class Probe:
    """One control, and how to tell from the observations that it holds."""

    id: str
    control: str
    #: Which observation it reads: a sandbox ("main", "cpu", "memory"), "verification",
    #: "image", or "all" (every sandbox).
    needs: str
    judge: Judge


@dataclass(frozen=True)
class Finding:
    """A probe's outcome: pass, fail, or error (it could not be observed), and why."""

    probe: Probe
    status: Status
    detail: str


def _refused(result: str) -> bool:
    return result != "ok"


def _listed(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


# The network ------------------------------------------------------------------


def network_interfaces(seen: Seen, expected: Expected) -> Verdict:
    interfaces = seen.report("main")["network"]["interfaces"]
    if interfaces == ["lo"]:
        return True, "only lo"
    return False, f"interfaces {interfaces} (only lo allowed)"


def network_routes(seen: Seen, expected: Expected) -> Verdict:
    routes = seen.report("main")["network"]["routes"]
    if not routes:
        return True, "no route, v4 or v6, but the loopback's"
    return False, f"routes out: {'; '.join(routes)}"


def network_connect(seen: Seen, expected: Expected) -> Verdict:
    connect = seen.report("main")["network"]["connect"]
    if connect is None:
        return False, "not tried: the sandbox has an interface or a route out"
    bad = {k: v for k, v in connect.items() if v[0] not in UNREACHABLE or v[1] > 1.0}
    if bad:
        return False, f"answered otherwise than unreachable at once: {_listed(bad)}"
    return True, f"unreachable at once: {_listed({k: v[0] for k, v in connect.items()})}"


def network_dns(seen: Seen, expected: Expected) -> Verdict:
    network = seen.report("main")["network"]
    servers, lookup = network["nameservers"], network["lookup"]
    if not servers or not set(servers) <= {"127.0.0.1", "::1"}:
        return False, f"resolv.conf names {servers or 'no nameserver'} (only the loopback's)"
    if lookup is None:
        return False, "not tried: the sandbox has an interface or a route out"
    if lookup[0] == "ok" or lookup[1] > 2.0:
        return False, f"a lookup answered {lookup[0]} after {lookup[1]} s"
    return True, f"nameserver {servers[0]} only; a lookup fails at once ({lookup[0]})"


# The user and its privileges ----------------------------------------------------


def user(seen: Seen, expected: Expected) -> Verdict:
    main = seen.report("main")
    identity = main["identity"]
    uid, gid = identity["uid"], identity["gid"]
    ids = {int(i) for key in ("Uid", "Gid") for i in identity["status"].get(key, "").split()}
    problems = []
    if 0 in ids or 0 in identity["groups"]:
        problems.append("root among its IDs")
    if not UID_FIRST <= uid < UID_FIRST + UID_COUNT:
        problems.append(f"uid {uid} is not a per-run ID ({UID_FIRST}+)")
    if ids != {uid} or gid != uid:
        problems.append(f"IDs {sorted(ids)} differ")
    if not _refused(main["setuid root"]):
        problems.append("setuid(0) succeeded")
    if problems:
        return False, "; ".join(problems)
    return True, f"uid = gid = {uid}, a per-run ID; setuid(0) {main['setuid root']}"


def capabilities(seen: Seen, expected: Expected) -> Verdict:
    status = seen.report("main")["identity"]["status"]
    caps = {k: v for k, v in status.items() if k.startswith("Cap")}
    held = {k: v for k, v in caps.items() if int(v, 16) != 0}
    if not caps:
        return False, "/proc/self/status shows no capability sets"
    if held:
        return False, f"capabilities held: {_listed(held)}"
    return True, f"none in {', '.join(sorted(caps))}"


def no_new_privileges(seen: Seen, expected: Expected) -> Verdict:
    flag = seen.report("main")["no_new_privs"]
    return (True, "PR_GET_NO_NEW_PRIVS = 1") if flag == 1 else (False, f"no_new_privs = {flag}")


# System calls: the seccomp profile under runc, gVisor's own kernel under runsc --------


def _gvisor(seen: Seen) -> bool:
    return bool(seen.report("main")["kernel"] == GVISOR_KERNEL)


def _calls(seen: Seen, names: Sequence[str]) -> dict[str, str]:
    calls = seen.report("main")["syscalls"]
    return {n: calls[n] for n in names}


def _syscall_probe(names: Sequence[str], *, gvisor_names: Sequence[str] | None = None) -> Judge:
    """Each of ``names`` refused; under gVisor, ``gvisor_names`` (None: the calls reach
    gVisor's kernel, never the host's, which is the control there)."""

    def judge(seen: Seen, expected: Expected) -> Verdict:
        if expected.user_kernel:
            if not _gvisor(seen):
                return False, "gVisor was asked for, but the sandbox sees the host's kernel"
            if gvisor_names is None:
                shown = _listed(_calls(seen, names))
                return True, f"answered by gVisor's kernel, not the host's ({shown})"
            checked = _calls(seen, gvisor_names)
        else:
            checked = _calls(seen, names)
        allowed = {k: v for k, v in checked.items() if not _refused(v)}
        if allowed:
            return False, f"allowed: {', '.join(allowed)}"
        return True, f"refused: {_listed(checked)}"

    return judge


def seccomp_filter(seen: Seen, expected: Expected) -> Verdict:
    mode = seen.report("main")["identity"]["status"].get("Seccomp")
    if expected.user_kernel:
        if _gvisor(seen):
            return True, "gVisor's kernel answers every call (the host's filters gVisor itself)"
        return False, "gVisor was asked for, but the sandbox sees the host's kernel"
    if mode == "2":
        return True, "a seccomp filter is in force (Seccomp: 2)"
    return False, f"no seccomp filter (Seccomp: {mode})"


def runtime(seen: Seen, expected: Expected) -> Verdict:
    kernel = seen.report("main")["kernel"]
    gvisor = kernel == GVISOR_KERNEL
    wanted = expected.policy.runtime or "the engine's default"
    if gvisor == expected.user_kernel:
        return True, f"{wanted}: {'gVisor' if gvisor else 'the host'}'s kernel ({kernel[:60]})"
    return False, f"{wanted} was asked for, but the kernel is {kernel[:80]}"


# The file system ---------------------------------------------------------------


#: File systems that are no host path: the kernel's own, and memory.
NOT_HOST = {"tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay"}


def _mounts(seen: Seen) -> dict[str, tuple[str, str]]:
    """Mount point: (its options, its file system type); the last mount of a point wins."""
    return {m[0]: (m[1], m[2]) for m in seen.report("main")["mounts"]}


def read_only_root(seen: Seen, expected: Expected) -> Verdict:
    mounts = _mounts(seen)
    problems = [
        f"{point} is mounted {mounts.get(point, ('absent',))[0]}"
        for point in ("/", expected.script_dir)
        if "ro" not in mounts.get(point, ("",))[0].split(",")
    ]
    writable = seen.report("main")["writable"]
    problems += [f"{p} is writable" for p in writable if p in ("/", expected.script_dir)]
    if problems:
        return False, "; ".join(problems)
    return True, "the root and the script's directory are mounted read-only"


def writable_paths(seen: Seen, expected: Expected) -> Verdict:
    writable = set(seen.report("main")["writable"])
    mounts = _mounts(seen)
    problems = [f"{p} is writable" for p in sorted(writable - WRITABLE)]
    problems += [
        f"{p} allows exec ({mounts[p][0]})"
        for p in ("/tmp", "/dev/shm")
        if p in mounts and "noexec" not in mounts[p][0].split(",")
    ]
    if problems:
        return False, "; ".join(problems)
    return True, f"writable: {', '.join(sorted(writable))} only, without exec"


def host_paths(seen: Seen, expected: Expected) -> Verdict:
    main = seen.report("main")
    allowed = ENGINE_MOUNTS | {expected.script_dir}
    # What is mounted below /proc, /sys and /dev is the engine's: masks, cgroups, devices.
    virtual = ("/proc", "/sys", "/dev")
    below = tuple(f"{v}/" for v in virtual)
    extra = sorted(
        point
        for point, (_, kind) in _mounts(seen).items()
        if kind not in NOT_HOST
        and point not in (*allowed, *virtual)
        and not point.startswith(below)
    )
    visible = sorted(p for p, there in main["visible"].items() if there)
    problems = [f"mounted: {', '.join(extra)}"] if extra else []
    problems += [f"visible: {', '.join(visible)}"] if visible else []
    if problems:
        return False, "; ".join(problems)
    return True, f"no host path but its own directory ({len(main['visible'])} others looked for)"


def proc_and_sys(seen: Seen, expected: Expected) -> Verdict:
    main = seen.report("main")
    leaked = {p: v for p, v in main["masked"].items() if isinstance(v, int) and v > 0}
    written = [p for p, v in main["proc writes"].items() if not _refused(v)]
    problems = [f"readable: {_listed(leaked)} bytes or entries"] if leaked else []
    problems += [f"written: {', '.join(written)}"] if written else []
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(main['masked'])} paths masked, {len(main['proc writes'])} writes refused"


def environment(seen: Seen, expected: Expected) -> Verdict:
    env: dict[str, str] = seen.report("main")["environment"]
    extra = sorted(set(env) - set(expected.environment))
    missing = sorted(set(expected.environment) - set(env))
    changed = sorted(k for k in set(env) & set(expected.environment)
                     if env[k] != expected.environment[k])  # fmt: skip
    named = (("extra", extra), ("missing", missing), ("changed", changed))
    problems = [f"{what}: {', '.join(names)}" for what, names in named if names]
    if problems:
        return False, "; ".join(problems)
    return True, f"only the runner's {len(env)} variables"


# Resources ---------------------------------------------------------------------


def pid_cap(seen: Seen, expected: Expected) -> Verdict:
    main = seen.report("main")
    cap = expected.policy.pids_limit
    threads, nproc = main["threads"], main["nproc"]
    if threads["refused"] is None or threads["started"] >= cap:
        return False, f"{threads['started']} threads started (cap {cap}), none refused"
    if nproc != [cap, cap]:
        return False, f"RLIMIT_NPROC is {nproc}, not {cap}"
    return True, f"the thread after {threads['started']} refused (cap {cap})"


def memory_cap(seen: Seen, expected: Expected) -> Verdict:
    execution = seen.execution("memory")
    cap = parse_size(expected.policy.memory_limit)
    survived = [r["survived"] for r in reports(execution) if "survived" in r]
    if survived:
        return (
            False,
            f"allocated {survived[0] >> 20} MiB past the {expected.policy.memory_limit} cap",
        )
    if not execution.oom_killed:
        return False, f"not reported as an OOM kill (exit {execution.exit_code})"
    peak = execution.peak_memory_bytes
    if peak is not None and peak > cap * 1.02:
        return False, f"peak memory {peak >> 20} MiB over the cap (swap?)"
    at = f", peak {peak >> 20} MiB" if peak is not None else ""
    return True, f"OOM-killed at the {expected.policy.memory_limit} cap, reported as such{at}"


def cpu_cap(seen: Seen, expected: Expected) -> Verdict:
    execution = seen.execution("cpu")
    limit = expected.policy.cpu_limit
    if limit >= expected.cores:
        return True, f"the cap ({limit:g}) is not below the engine's {expected.cores} cores"
    if execution.cpu_seconds is not None:
        used, wall, how = execution.cpu_seconds, execution.execution_time, "the engine's cgroup"
    elif not expected.user_kernel:
        measured = [r for r in reports(execution) if "cpu" in r]
        if not measured:
            return False, "no measurement: the sandbox did not report before its deadline"
        used, wall = measured[-1]["cpu"], measured[-1]["wall"]
        how = "the sandbox's own accounting"
    else:
        return False, (
            "cannot be measured: no cgroup telemetry here, and gVisor's own accounting "
            "does not see the host's quota"
        )
    share = used / max(wall, 0.001)
    scale, slack = CPU_SLACK
    if share > limit * scale + slack:
        return False, f"{share:.2f} CPUs used spinning on {expected.cores + 1} (cap {limit:g})"
    return True, f"{share:.2f} CPUs used spinning on {expected.cores + 1} (cap {limit:g}, {how})"


def deadline_kill(seen: Seen, expected: Expected) -> Verdict:
    execution = seen.execution("cpu")
    seen.report("cpu")  # it was running when the deadline came
    took = execution.execution_time
    if not execution.timed_out:
        return (
            False,
            f"not killed at its {expected.deadline:g} s deadline (exit {execution.exit_code})",
        )
    if took > expected.deadline + 2:
        return (
            False,
            f"killed {took:.1f} s after its start, past the {expected.deadline:g} s deadline",
        )
    return True, f"killed at the {expected.deadline:g} s deadline ({took:.1f} s)"


def output_cap(seen: Seen, expected: Expected) -> Verdict:
    execution = seen.execution("cpu")
    kept = len(execution.stdout.encode())
    if not execution.stdout_truncated or kept > expected.output_limit:
        return False, f"{kept} bytes of stdout kept (cap {expected.output_limit})"
    return True, f"the tail kept: {kept} bytes of stdout (cap {expected.output_limit})"


def identity(seen: Seen, expected: Expected) -> Verdict:
    uids = {name: reports(getattr(seen, name))[0]["identity"]["uid"]
            for name in ("main", "cpu", "memory")}  # fmt: skip
    if len(set(uids.values())) != len(uids):
        return False, f"sandboxes alive at once share a user ID: {_listed(uids)}"
    outside = {k: v for k, v in uids.items() if not UID_FIRST <= v < UID_FIRST + UID_COUNT}
    if outside:
        return False, f"not per-run IDs: {_listed(outside)}"
    nproc = seen.report("main")["nproc"]
    if nproc != [expected.policy.pids_limit] * 2:
        return False, f"per-user process quota {nproc}, not the PID cap"
    return True, f"{len(uids)} sandboxes at once, {len(uids)} user IDs; per-user quotas their own"


# Host-side checks --------------------------------------------------------------


def engine_verification(seen: Seen, expected: Expected) -> Verdict:
    if seen.started:
        return False, "a container whose engine dropped controls was started"
    if seen.refused is None:
        return False, f"the runner did not refuse a container without {', '.join(seen.dropped)}"
    missed = [c for c in seen.dropped if c not in seen.refused]
    if missed:
        return False, f"the check after create missed: {', '.join(missed)}"
    return True, f"a container without {len(seen.dropped)} controls refused, unstarted"


def image_lock(seen: Seen, expected: Expected) -> Verdict:
    checks = seen.image_checks or []
    problems = [f"{what}: {problem}" for what, problem in checks if problem is not None]
    if not checks:
        return False, "nothing checked"
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(checks)} checks against the image's lock ({(seen.image_id or '?')[:19]})"


PROBES: tuple[Probe, ...] = (
    Probe("network-interfaces", "no network: only the loopback interface", "main",
          network_interfaces),
    Probe("network-routes", "no network: no route out", "main", network_routes),
    Probe("network-connect", "no network: a connect out fails at once", "main", network_connect),
    Probe("network-dns", "no network: the sandbox's own resolv.conf, lookups fail", "main",
          network_dns),
    Probe("user", "a non-root user ID of its own", "main", user),
    Probe("capabilities", "no capabilities", "main", capabilities),
    Probe("no-new-privileges", "no-new-privileges", "main", no_new_privileges),
    Probe("seccomp-filter", "the seccomp profile is in force", "main", seccomp_filter),
    Probe("seccomp-io-uring", "seccomp: no io_uring", "main",
          _syscall_probe(["io_uring_setup"])),
    Probe("seccomp-ptrace", "seccomp: no ptrace", "main",
          _syscall_probe(["ptrace child", "ptrace init"], gvisor_names=["ptrace init"])),
    Probe("seccomp-keyring", "seccomp: no kernel keyrings", "main",
          _syscall_probe(["add_key", "keyctl"], gvisor_names=["add_key", "keyctl"])),
    Probe("seccomp-namespaces", "seccomp: no new namespaces", "main",
          _syscall_probe(["unshare user", "unshare mount"])),
    Probe("seccomp-mount", "no mount, not even in a new user namespace", "main",
          _syscall_probe(["mount", "mount in a user namespace"],
                         gvisor_names=["mount", "mount in a user namespace"])),
    Probe("seccomp-kernel-interfaces", "seccomp: no bpf, perf_event_open, userfaultfd", "main",
          _syscall_probe(["bpf", "perf_event_open", "userfaultfd"],
                         gvisor_names=["bpf", "perf_event_open", "userfaultfd"])),
    Probe("runtime", "the configured runtime runs the sandbox", "main", runtime),
    Probe("read-only-root", "read-only root and script directory", "main", read_only_root),
    Probe("writable-paths", "writable: the capped /tmp (and /dev/shm) only, no exec", "main",
          writable_paths),
    Probe("host-paths", "no host path visible but the run's own", "main", host_paths),
    Probe("proc-sys-masking", "/proc and /sys masked and read-only", "main", proc_and_sys),
    Probe("environment", "only the runner's environment variables", "main", environment),
    Probe("pid-cap", "PID cap (RLIMIT_NPROC and the cgroup)", "main", pid_cap),
    Probe("memory-cap", "memory cap, no swap, OOM kill reported", "memory", memory_cap),
    Probe("cpu-cap", "CPU cap", "cpu", cpu_cap),
    Probe("deadline-kill", "the deadline kills the sandbox", "cpu", deadline_kill),
    Probe("output-cap", "output capped, the tail kept", "cpu", output_cap),
    Probe("identity", "a user ID per live sandbox, per-user quotas its own", "all", identity),
    Probe("engine-verification", "the engine's record checked after create", "verification",
          engine_verification),
    Probe("image-lock", "the image matches its lock", "image", image_lock),
)  # fmt: skip


def judge(seen: Seen, expected: Expected, probes: Sequence[Probe] = PROBES) -> list[Finding]:
    """Each probe's finding: an observation that is missing (or unreadable) is an error."""
    findings = []
    for probe in probes:
        needed = ["main", "cpu", "memory"] if probe.needs == "all" else [probe.needs]
        missing = [seen.errors[n] for n in needed if n in seen.errors]
        if missing:
            findings.append(Finding(probe, "error", f"not observed: {missing[0]}"))
            continue
        try:
            ok, detail = probe.judge(seen, expected)
        except (ValueError, KeyError, TypeError, IndexError, AssertionError) as e:
            findings.append(Finding(probe, "error", f"not observed: {type(e).__name__}: {e}"))
            continue
        findings.append(Finding(probe, "pass" if ok else "fail", detail))
    return findings
