"""The hardened container configuration, built for docker-py.

Everything here is the safe default; loosening any part of it needs an explicit,
named argument of ``ExperimentRunner``.
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.types import LogConfig, Mount, Ulimit

from runner.core.options import RunnerOptions
from runner.core.settings import ExperimentDefaults
from runner.core.sizes import SIZE
from runner.sandbox import facts as sandbox_facts
from runner.sandbox.artifacts import COLLECT, COLLECT_SECONDS, OUTPUTS_PATH, OutputLimits
from runner.sandbox.seccomp import security_option

#: The non-root user baked into the pinned image; runs use one user ID each (``identity``).
SANDBOX_UID = 10001
SANDBOX_GID = 10001
#: Host threads a user-space kernel (gVisor) may add per sandboxed task, and at
#: rest: its own threads count against the container's PID cap, while the cap
#: on the script's tasks is enforced inside it through ``RLIMIT_NPROC``.
USER_KERNEL_THREADS_PER_TASK = 8
USER_KERNEL_THREADS_BASE = 256

SANDBOX_PATH = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "LOKY_MAX_CPU_COUNT",
)
#: Files and directories the sandbox's /tmp may hold.
TMP_INODES = 16384
TMP_OPTIONS = "rw,noexec,nosuid,nodev,mode=1777"


_DEFAULTS = ExperimentDefaults.model_fields


@dataclass(frozen=True)
class SandboxPolicy:
    """The limits and isolation of one sandboxed run."""

    image: str
    # The defaults have one home: ExperimentDefaults (which RUNNER_* variables feed).
    memory_limit: str = _DEFAULTS["memory_limit"].default
    cpu_limit: float = _DEFAULTS["cpu_limit"].default
    pids_limit: int = _DEFAULTS["pids_limit"].default
    runtime: str | None = None
    tmpfs_size: str = _DEFAULTS["tmpfs_size"].default
    #: Cap of the engine's own json log of the container (the runner streams
    #: the output itself; this only bounds what the engine keeps on disk).
    engine_log_size: str = "1m"

    def __post_init__(self) -> None:
        if not SIZE.match(self.memory_limit):
            raise ValueError(
                f"memory_limit must look like '512m' or '2g', not {self.memory_limit!r}"
            )
        if not SIZE.match(self.tmpfs_size):
            raise ValueError(f"tmpfs_size must look like '256m', not {self.tmpfs_size!r}")
        if not (self.cpu_limit > 0 and math.isfinite(self.cpu_limit)):
            raise ValueError(f"cpu_limit must be a positive number, not {self.cpu_limit!r}")
        if self.pids_limit < 8:
            raise ValueError("pids_limit must be at least 8 (Python and tini need a few)")


@dataclass(frozen=True)
class SupportFiles:
    """Files a sandbox reads from the engine's own machine (paths there, in one volume;
    see ``runner.sandbox.support``)."""

    volume: str
    #: Where the volume's files are on the engine's machine.
    mountpoint: str

    @property
    def seccomp(self) -> str:
        return f"{self.mountpoint}/seccomp.json"

    @property
    def resolv_conf(self) -> str:
        return f"{self.mountpoint}/resolv.conf"

    @property
    def hosts(self) -> str:
        return f"{self.mountpoint}/hosts"


#: Extra seconds the in-container deadline allows beyond the runner's own.
SELF_DEADLINE_GRACE = 10


@dataclass(frozen=True)
class Run:
    """What one container runs and what it may see."""

    command: list[str]
    workdir: Path
    read_only_paths: tuple[Path, ...]
    deadline: float
    #: The user (and group) ID the script runs as, distinct per live container.
    uid: int
    labels: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str | None = None
    #: Read-only binds whose container path differs from the host path (the warm pool's).
    relocated: tuple[tuple[Path, Path], ...] = ()
    #: A warm pool container waits for its script on stdin.
    stdin_open: bool = False
    #: The runtime is a user-space kernel (gVisor) whose threads share the PID cap.
    user_kernel: bool = False
    #: Outputs on: the working directory is a writable tmpfs at ``OUTPUTS_PATH`` within
    #: these limits, collected after the script (``runner.sandbox.artifacts``).
    outputs: OutputLimits | None = None
    #: The engine's support files: the sandbox's own ``hosts`` and ``resolv.conf``; with
    #: them, on Docker, the engine makes no network at all (see ``runner.sandbox.support``).
    support: SupportFiles | None = None
    #: The engine is Podman (``runner.sandbox.podman``): the volumes that are this run's tmpfs
    #: mounts (target, volume name) are made by ``Sandbox.create``.
    podman: bool = False
    tmp_volumes: tuple[tuple[str, str], ...] = ()
    #: Variables besides the sandbox's own (``run_environment``), e.g. ``$TRAIN_PATH``.
    environment: tuple[tuple[str, str], ...] = ()


#: The last line of a run's stderr, written once the script has exited, with its status.
EXIT_MARKER = b"\x00experiment-runner-exit "
#: The last line of a run's stdout, written once the script has exited (with outputs
#: on, once they are sent): with the exit record, it tells the run is complete.
END_MARKER = b"\x00experiment-runner-end\n"
_REPORT_END = "printf '\\000experiment-runner-end\\n'; "
_REPORT_EXIT = (
    # sh would export PWD to the script: a variable a bare ``python script.py`` lacks.
    'unset PWD OLDPWD; timeout --signal=KILL "$0" "$@"; status=$?; '
    + _REPORT_END
    + 'printf \'\\000experiment-runner-exit %d\\n\' "$status" >&2; exit "$status"'
)


#: With outputs on: link the script's files into the working directory, run the script
#: in the background so that SIGALRM (the runner's deadline, forwarded by tini) can end
#: it while ``sh`` lives on, record its exit, then send the outputs (``COLLECT``).
_REPORT_EXIT_AND_COLLECT = (
    # cd here, not the container's working_dir: the engine would give the tmpfs the
    # mode of the directory it makes for a working_dir (0755, not writable).
    f"cd {OUTPUTS_PATH} && unset PWD OLDPWD; "
    "links=$1; python=$2; collect=$3; files=$4; size=$5; bytes=$6; shift 6; "
    '[ -z "$links" ] || find "$links" -mindepth 1 -maxdepth 1 '
    f"-exec ln -s -t {OUTPUTS_PATH} -- {{}} + 2>/dev/null; "
    "alarm=; trap 'alarm=1; kill -ALRM \"$child\" 2>/dev/null' ALRM; "
    # A background job's stdin would be /dev/null: keep the warm slot's (the hand-over).
    'exec 3<&0; timeout --signal=KILL "$0" "$@" 0<&3 3<&- & child=$!; exec 3<&-; '
    'wait "$child"; status=$?; '
    'if [ -n "$alarm" ]; then wait "$child"; s=$?; [ "$s" -eq 127 ] || status=$s; fi; '
    "trap '' ALRM; "
    "printf '\\000experiment-runner-exit %d\\n' \"$status\" >&2; "
    f'timeout --signal=KILL {COLLECT_SECONDS}s "$python" -I -S -c "$collect" '
    '"$files" "$size" "$bytes" 2>/dev/null; ' + _REPORT_END + 'exit "$status"'
)


#: Seconds the machine-facts probe may take before the script starts (about 0.1 s).
FACTS_SECONDS = 20


def policy_from(asked: RunnerOptions, defaults: ExperimentDefaults) -> SandboxPolicy:
    """The sandbox's limits and isolation: what was asked, else the settings."""
    return SandboxPolicy(
        image=asked.image or defaults.image,
        memory_limit=asked.memory_limit or defaults.memory_limit,
        cpu_limit=asked.cpu_limit or defaults.cpu_limit,
        pids_limit=asked.pids_limit or defaults.pids_limit,
        runtime=asked.runtime if asked.runtime is not None else defaults.runtime,
        tmpfs_size=asked.tmpfs_size or defaults.tmpfs_size,
    )


def _ask_facts(python: str) -> str:
    """``sh`` that runs the facts probe (``runner.sandbox.facts``, in ``$1``) with the
    interpreter ``python`` and shifts it off; its line, or an empty record, goes to stderr."""
    empty = "".join(f"\\{byte:03o}" if byte < 32 else chr(byte) for byte in sandbox_facts.EMPTY)
    return (
        f'facts=$1; shift; timeout --signal=KILL {FACTS_SECONDS}s {python} -I -S -c "$facts" '
        f">&2 2>/dev/null || printf '{empty}' >&2; unset facts; "
    )


def self_limited(
    command: list[str],
    timeout: float,
    *,
    outputs: OutputLimits | None = None,
    links: Path | None = None,
    facts: bool = False,
) -> list[str]:
    """Wrap ``command`` so the container kills it itself, should no runner be left to.

    ``timeout`` (coreutils) is the child of ``sh``, the child of tini; if the
    script kills either, tini exits and the container stops, so the wrapper
    cannot be used to escape. ``sh`` then writes ``EXIT_MARKER`` and the status
    to stderr: a run that ends without that line ended with its sandbox (say,
    gVisor's kernel failed), not by the script's own exit. Before it, ``END_MARKER``
    goes to stdout: once both are in, so is everything the script wrote, and the
    run is complete without waiting for the engine (``Sandbox.run``).

    With ``outputs``, ``sh`` first links the entries of ``links`` (the script's
    directory; None: the warm bootstrap does it) into the working directory,
    and after the exit record runs the collector with the first word of
    ``command`` (the Python interpreter); ``END_MARKER`` then follows the outputs.

    With ``facts``, ``sh`` first asks the machine's facts with that interpreter
    (``runner.sandbox.facts``): one line on stderr before the script starts.
    """
    seconds = math.ceil(timeout) + SELF_DEADLINE_GRACE
    asked: list[str] = [sandbox_facts.COLD] if facts else []
    if outputs is None:
        program = (_ask_facts('"$1"') if facts else "") + _REPORT_EXIT
        return ["sh", "-c", program, f"{seconds}s", *asked, *command]
    return [
        "sh",
        "-c",
        (_ask_facts('"$2"') if facts else "") + _REPORT_EXIT_AND_COLLECT,
        f"{seconds}s",
        *asked,
        str(links or ""),
        command[0],
        COLLECT,
        str(outputs.max_files),
        str(outputs.max_file_size),
        str(outputs.max_bytes),
        *command,
    ]


def thread_count(cpu_limit: float) -> int:
    """Threads a BLAS or OpenMP pool should use under ``cpu_limit`` CPUs."""
    return max(1, math.floor(cpu_limit))


def sandbox_environment(cpu_limit: float, *, outputs: bool = False) -> dict[str, str]:
    """The whole environment of the script: nothing of the caller's leaks in."""
    threads = str(thread_count(cpu_limit))
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        # Pinned, so that a replay sees the same: the locale, the time zone, and the hash
        # seed (set and dict-of-str orders; the script is the only code in its sandbox,
        # so hash randomisation defends against nobody here).
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONHASHSEED": "0",
        # The user ID has no passwd entry; getpass and friends read these.
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        # No PYTHONUNBUFFERED: an unbuffered stream loses the rest of a short write
        # (gVisor makes them). The image's streams module flushes every write instead.
        # The root filesystem and the script's directory are read-only anyway.
        "PYTHONDONTWRITEBYTECODE": "1",
        "JOBLIB_TEMP_FOLDER": "/tmp",
        # Headless plots; matplotlib's config and font cache go where it may write.
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/matplotlib",
    }
    if outputs:
        env["OUTPUT_DIR"] = str(OUTPUTS_PATH)
    # BLAS starts a thread per host core; under a CPU quota they throttle each other.
    env.update(dict.fromkeys(THREAD_VARIABLES, threads))
    return env


#: What a run's own variable may be called: upper case, and none of the sandbox's own.
_VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


def run_environment(extra: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """A run's own variables, checked: new names only (never ``PATH``, ``HOME``, a thread
    count or anything else the sandbox sets), values without NUL."""
    own = set(sandbox_environment(1.0, outputs=True))
    checked = []
    for name, value in extra:
        if not _VARIABLE.match(name) or name in own:
            raise ValueError(f"a run may not set the variable {name!r}")
        if "\0" in value or "\0" in name:
            raise ValueError(f"the variable {name} may not hold a NUL character")
        checked.append((name, value))
    return tuple(checked)


def container_config(policy: SandboxPolicy, run: Run) -> dict[str, Any]:
    """Keyword arguments for ``docker.DockerClient.containers.create``."""
    pairs = [(path, path) for path in run.read_only_paths] + list(run.relocated)
    mounts = [
        Mount(target=str(target), source=str(source), type="bind", read_only=True)
        for source, target in pairs
    ]
    tmpfs = {"/tmp": f"{TMP_OPTIONS},size={policy.tmpfs_size},nr_inodes={TMP_INODES}"}
    if run.outputs is not None:
        tmpfs[str(OUTPUTS_PATH)] = run.outputs.tmpfs_options()
    config: dict[str, Any] = {
        "working_dir": str(run.workdir),
        "user": f"{run.uid}:{run.uid}",
        "environment": sandbox_environment(policy.cpu_limit, outputs=run.outputs is not None)
        | dict(run_environment(run.environment)),
        "use_config_proxy": False,  # never hand the caller's proxy settings in
        "labels": run.labels,
        "hostname": "sandbox",
        "network_mode": "none",
        # Without a network the engine would still copy the host's nameservers in.
        "dns": ["127.0.0.1"],
        "dns_search": ["."],
        "mounts": mounts,
        "read_only": True,
        "tmpfs": tmpfs,
        "mem_limit": policy.memory_limit,
        "memswap_limit": policy.memory_limit,  # equal to mem_limit: no swap at all
        "nano_cpus": int(policy.cpu_limit * 1e9),
        "pids_limit": host_pids_limit(policy.pids_limit, user_kernel=run.user_kernel),
        "ulimits": [
            Ulimit(name="nofile", soft=1024, hard=1024),
            Ulimit(name="core", soft=0, hard=0),
            # Per user ID, and each container has its own: the script's processes
            # and threads, counted inside gVisor too.
            Ulimit(name="nproc", soft=policy.pids_limit, hard=policy.pids_limit),
        ],
        "cap_drop": ["ALL"],
        # Docker 20.10's default seccomp profile with calls ML scripts never need removed.
        "security_opt": ["no-new-privileges", security_option()],
        "ipc_mode": "private",
        "init": True,  # tini as PID 1 reaps orphans and forwards the kill
        "stdin_open": run.stdin_open,
        "tty": False,
        "log_config": LogConfig(
            type="json-file", config={"max-size": policy.engine_log_size, "max-file": "1"}
        ),
    }
    if run.support is not None:
        config["mounts"] += [
            Mount(target="/etc/resolv.conf", source=run.support.resolv_conf, type="bind",
                  read_only=True),
            Mount(target="/etc/hosts", source=run.support.hosts, type="bind", read_only=True),
        ]  # fmt: skip
        if not run.podman:
            # The runtime still gives the container a network namespace of its own with
            # only lo; the engine skips its network set-up, and its hosts and resolv.conf.
            config["network_disabled"] = True
    if policy.runtime is not None:
        config["runtime"] = policy.runtime
    if run.cgroup_parent is not None:
        config["cgroup_parent"] = run.cgroup_parent  # for telemetry; limits stay on the container
    return config


def host_pids_limit(pids_limit: int, *, user_kernel: bool) -> int:
    """The container's cgroup PID cap: the script's, plus a user-space kernel's own threads."""
    if not user_kernel:
        return pids_limit
    return pids_limit * USER_KERNEL_THREADS_PER_TASK + USER_KERNEL_THREADS_BASE


def unreadable(paths: Iterable[Path]) -> str | None:
    """Why the sandbox user could not read one of ``paths`` in place, or None if it can."""
    for path in paths:
        st = path.stat()
        # Each run has a user ID of its own, so only the "other" bits can grant access.
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
        if st.st_mode & need != need:
            kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
            return (
                f"The sandbox user cannot read the {kind} {path} in place "
                f"(mode {stat.S_IMODE(st.st_mode):o})."
            )
    return None
