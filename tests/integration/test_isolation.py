"""What a script can see and reach: network, identity, privileges, environment.

The network tests never send a packet off this machine, even if isolation were
broken: listeners sit on the host's loopback and on the host's own Docker bridge
address, and everything else is read from inside the container.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from runner.sandbox.identity import UID_COUNT, UID_FIRST
from runner.sandbox.policy import host_pids_limit, sandbox_environment
from tests.conftest import IN_CI, our_containers
from tests.integration.conftest import ENGINE_ENVIRONMENT, RUNTIME, SPEC, needs_local_engine
from tests.integration.test_lifecycle import wait_for_container

CONNECT_PROBE = """
import errno, json, os, socket, time
def connect(host, port):
    s = socket.socket()
    s.settimeout(3)
    started = time.monotonic()
    try:
        s.connect((host, port))
        outcome = "connected"
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e))
    return {"outcome": outcome, "seconds": time.monotonic() - started}
routes = [l.split() for l in open("/proc/net/route").read().splitlines()[1:]]
v6 = [l.split()[-1] for l in open("/proc/net/ipv6_route").read().splitlines()]
print(json.dumps({
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "ipv4_routes": routes,
    "ipv6_route_devices": sorted(set(v6)),
    "probes": {f"{h}:{p}": connect(h, p) for h, p in TARGETS},
}))
"""


@pytest.fixture
def listener() -> Callable[[str], Iterator[int]]:
    """A TCP listener on a host address of this machine that records connections."""
    sockets: list[socket.socket] = []
    accepted: list[str] = []

    def listen(host: str) -> int:
        server = socket.socket()
        server.bind((host, 0))
        server.listen()
        server.settimeout(0.2)
        sockets.append(server)

        def accept() -> None:
            while server.fileno() != -1:
                try:
                    conn, _ = server.accept()
                    accepted.append(host)
                    conn.close()
                except OSError:
                    continue

        threading.Thread(target=accept, daemon=True).start()
        return int(server.getsockname()[1])

    listen.accepted = accepted  # type: ignore[attr-defined]
    yield listen  # type: ignore[misc]
    for server in sockets:
        server.close()


def bridge_address() -> str | None:
    """The host's own address on the Docker bridge (an interface of this machine)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout.strip():
        return None
    addresses = json.loads(out.stdout)
    return addresses[0]["addr_info"][0]["local"] if addresses else None


def test_only_loopback_no_route_and_host_listeners_unreachable(
    runner: ExperimentRunner, write_script: Callable[..., Path], listener: Callable[[str], int]
) -> None:
    """Inside: only `lo`, no routes, and connects to the host's listeners fail at once."""
    targets = [("127.0.0.1", listener("127.0.0.1"))]
    gateway = bridge_address()
    if gateway is None:
        if IN_CI:
            pytest.fail("the engine's bridge docker0 is missing")
    else:
        targets.append((gateway, listener(gateway)))
    script = write_script(f"TARGETS = {targets!r}\n" + CONNECT_PROBE)
    seen = json.loads(runner.run_script_directly(script)["stdout"])
    assert seen["interfaces"] == ["lo"]
    assert seen["ipv4_routes"] == []
    assert set(seen["ipv6_route_devices"]) <= {"lo"}
    probes = seen["probes"]
    assert probes[f"127.0.0.1:{targets[0][1]}"]["outcome"] == "ECONNREFUSED"
    if gateway is not None:
        # gVisor's netstack says EHOSTUNREACH where Linux says ENETUNREACH.
        assert probes[f"{gateway}:{targets[1][1]}"]["outcome"] in ("ENETUNREACH", "EHOSTUNREACH")
    assert all(p["seconds"] < 0.5 for p in probes.values()), probes
    time.sleep(0.3)
    assert listener.accepted == []  # type: ignore[attr-defined]


def test_the_sandbox_has_its_own_read_only_hosts_and_resolver(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """localhost and the sandbox's host name resolve to its loopback; neither file is writable."""
    script = write_script(
        """
import json, os, socket
print(json.dumps({
    "localhost": socket.gethostbyname("localhost"),
    "hostname": socket.gethostname(),
    "own name": socket.gethostbyname(socket.gethostname()),
    "writable": [p for p in ("/etc/hosts", "/etc/resolv.conf") if os.access(p, os.W_OK)],
}))
"""
    )
    seen = json.loads(runner.run_script_directly(script)["stdout"])
    assert seen == {
        "localhost": "127.0.0.1",
        "hostname": "sandbox",
        "own name": "127.0.0.1",
        "writable": [],
    }


def test_non_root_without_capabilities_and_with_seccomp(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """The script runs as a sandbox user ID with no capabilities (runc: NoNewPrivs and seccomp).

    Under gVisor the script talks to gVisor's kernel; no_new_privs and the seccomp
    filter sit on the sandbox's host processes, outside the script's view.
    """
    script = write_script(
        """
        import json, os
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(json.dumps({
            "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "groups": os.getgroups(),
            **{k: status[k].strip() for k in
               ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
               if k in status},
        }))
        """
    )
    seen = json.loads(runner.run_script_directly(script)["stdout"])
    uid = seen["uid"]
    assert UID_FIRST <= uid < UID_FIRST + UID_COUNT
    assert (seen["euid"], seen["gid"]) == (uid, uid)
    assert seen["groups"] in ([], [uid])
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert int(seen[cap], 16) == 0, cap
    assert int(seen.get("CapAmb", "0"), 16) == 0
    if RUNTIME == "runc":
        assert seen["NoNewPrivs"] == "1"
        assert seen["Seccomp"] == "2"  # filter mode: the engine's default profile is on


def test_no_caller_environment_leaks(
    runner: ExperimentRunner, write_script: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script sees exactly the runner's variables (plus the engine's HOSTNAME)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    script = write_script("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    env = json.loads(runner.run_script_directly(script)["stdout"])
    expected = {**sandbox_environment(runner.policy.cpu_limit), "HOSTNAME": "sandbox"}
    assert env == {**expected, **ENGINE_ENVIRONMENT}


@needs_local_engine
def test_caps_are_in_force_in_the_cgroup(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """The kernel holds the container to the CPU quota, memory (no swap) and PID caps asked for.

    Read from the host's cgroup files while the container runs, so it holds for
    gVisor too (whose sandbox cannot see them).
    """
    script = write_script("import os, time\nprint(os.environ['OMP_NUM_THREADS'], flush=True)\n"
                          "time.sleep(30)\n")  # fmt: skip
    runner = ExperimentRunner(
        timeout=60, engine=engine, memory_limit="300m", cpu_limit=2.0, pids_limit=77
    )
    lines: list[str] = []
    printed = threading.Event()

    def on_output(stream: str, line: str) -> None:
        lines.append(line)
        printed.set()

    thread = threading.Thread(target=lambda: runner.run(script, SPEC, 0, on_output=on_output))
    thread.start()
    try:
        container = wait_for_container(engine)
        assert printed.wait(60), "the script never started"

        def cgroup(controller: str, name: str) -> int:
            # Docker names the container's cgroup by its ID, Podman "libpod-<ID>".
            (directory,) = Path("/sys/fs/cgroup", controller).glob(f"**/*{container.id}")
            return int((directory / name).read_text())

        assert cgroup("cpu", "cpu.cfs_quota_us") == 2 * cgroup("cpu", "cpu.cfs_period_us")
        assert cgroup("memory", "memory.limit_in_bytes") == 300 * 1024 * 1024
        assert cgroup("memory", "memory.memsw.limit_in_bytes") == 300 * 1024 * 1024
        # gVisor's own threads share the cgroup: it gets headroom, and RLIMIT_NPROC (77)
        # caps the script's tasks inside gVisor's kernel.
        assert cgroup("pids", "pids.max") == host_pids_limit(77, user_kernel=RUNTIME == "runsc")
    finally:
        for found in our_containers(engine):
            engine.kill(found.id)
        thread.join(60)
    assert lines[0] == "2"  # BLAS/OpenMP threads follow cpu_limit
