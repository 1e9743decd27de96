"""Reaching out: interfaces, routes, TCP, UDP, IPv6, DNS, raw sockets, unix sockets.

No test here can send a packet off this machine, even if isolation were broken:
TCP and UDP go only to listeners on the host's own loopback and Docker bridge
address; outside addresses are only ever passed to a UDP ``connect()``, which
sends nothing and merely asks the kernel for a route.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.conftest import Hostile, report
from tests.integration.conftest import RUNTIME
from tests.integration.test_isolation import bridge_address

PROBE_HEADER = """
import errno, json, os, socket, time
def outcome(fn):
    started = time.monotonic()
    try:
        fn()
        result = "ok"
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e))
    return [result, round(time.monotonic() - started, 3)]
def tcp(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(address)
def udp_send(family, address):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.sendto(b"ping", address)
def udp_route(family, address):
    # connect() on UDP sends nothing: it only looks up a route.
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect(address)
"""


class Listeners:
    """TCP and UDP listeners on addresses of this machine that record what reaches them."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._sockets: list[socket.socket] = []

    def add(self, family: int, kind: int, host: str) -> int:
        server = socket.socket(family, kind)
        server.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            server.listen()
        server.settimeout(0.2)
        self._sockets.append(server)
        threading.Thread(target=self._serve, args=(server, kind, host), daemon=True).start()
        return int(server.getsockname()[1])

    def add_unix(self, path: str) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen()
        server.settimeout(0.2)
        self._sockets.append(server)
        threading.Thread(
            target=self._serve, args=(server, socket.SOCK_STREAM, path), daemon=True
        ).start()

    def _serve(self, server: socket.socket, kind: int, label: str) -> None:
        while server.fileno() != -1:
            try:
                if kind == socket.SOCK_STREAM:
                    conn, _ = server.accept()
                    conn.close()
                else:
                    server.recvfrom(64)
                self.received.append(label)
            except OSError:
                continue

    def close(self) -> None:
        for server in self._sockets:
            server.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    found = Listeners()
    yield found
    found.close()


def test_tcp_udp_and_ipv6_to_host_listeners_never_arrive(
    hostile: Hostile, listeners: Listeners
) -> None:
    """The host's loopback (v4 and v6) and bridge listeners hear nothing from the sandbox."""
    v4 = listeners.add(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1")
    v4_udp = listeners.add(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")
    v6 = listeners.add(socket.AF_INET6, socket.SOCK_STREAM, "::1")
    gateway = bridge_address()
    assert gateway is not None, "the engine's bridge docker0 is missing"
    bridge = listeners.add(socket.AF_INET, socket.SOCK_STREAM, gateway)
    result = hostile(
        PROBE_HEADER
        + f"""
print(json.dumps({{
    "tcp_loopback": outcome(lambda: tcp(socket.AF_INET, ("127.0.0.1", {v4}))),
    "udp_loopback": outcome(lambda: udp_send(socket.AF_INET, ("127.0.0.1", {v4_udp}))),
    "tcp6_loopback": outcome(lambda: tcp(socket.AF_INET6, ("::1", {v6}))),
    "tcp_bridge": outcome(lambda: tcp(socket.AF_INET, ("{gateway}", {bridge}))),
}}))
"""
    )
    seen = report(result)
    assert seen["tcp_loopback"][0] == "ECONNREFUSED"  # the sandbox's own, empty, loopback
    assert seen["tcp6_loopback"][0] in ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH")
    assert seen["tcp_bridge"][0] in ("ENETUNREACH", "EHOSTUNREACH")
    assert all(elapsed < 0.5 for _, elapsed in seen.values()), seen
    assert listeners.received == []


def test_no_route_anywhere_and_no_host_nameserver(hostile: Hostile) -> None:
    """No route to outside addresses (v4, v6); resolv.conf names only the sandbox's loopback."""
    result = hostile(
        PROBE_HEADER
        + """
resolv = open("/etc/resolv.conf").read()
def lookup():
    try:
        socket.getaddrinfo("example.org", 80)
    except socket.gaierror as e:
        raise OSError(errno.EHOSTUNREACH, str(e)) from e
print(json.dumps({
    "v4": outcome(lambda: udp_route(socket.AF_INET, ("192.0.2.1", 9))),
    "v6": outcome(lambda: udp_route(socket.AF_INET6, ("2001:db8::1", 9))),
    "servers": [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")],
    "search": [line for line in resolv.splitlines() if line.startswith(("search", "domain"))],
    "lookup": outcome(lookup),
}))
"""
    )
    seen = report(result)
    unreachable = {"ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL"}
    assert seen["v4"][0] in unreachable
    assert seen["v6"][0] in unreachable
    # The host's own nameserver is not revealed; a lookup fails at once on loopback.
    assert seen["servers"] == ["127.0.0.1"]
    assert seen["search"] in ([], ["search ."])
    assert seen["lookup"][0] != "ok"
    assert seen["lookup"][1] < 2.0


def test_raw_and_packet_sockets(hostile: Hostile) -> None:
    """runc: raw and packet sockets are refused (no CAP_NET_RAW); gVisor: they see only lo."""
    result = hostile(
        PROBE_HEADER
        + """
print(json.dumps({
    "raw": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    "packet": outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)),
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
}))
"""
    )
    seen = report(result)
    assert seen["interfaces"] == ["lo"]
    if RUNTIME == "runc":
        assert seen["raw"][0] == "EPERM"
        assert seen["packet"][0] == "EPERM"


def test_docker_and_host_unix_sockets_are_out_of_reach(
    hostile: Hostile, listeners: Listeners, tmp_path: Path
) -> None:
    """The Docker socket, a host unix socket and a host abstract socket cannot be reached."""
    path = str(tmp_path / "host.sock")
    listeners.add_unix(path)
    abstract = f"\0experiment-runner-test-{uuid.uuid4().hex}"
    listeners.add_unix(abstract)
    targets = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
               path, abstract]  # fmt: skip
    result = hostile(
        PROBE_HEADER
        + f"""
def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(path)
print(json.dumps({{repr(t): outcome(lambda t=t: unix(t)) for t in {targets!r}}}))
"""
    )
    seen = report(result)
    assert all(outcome in ("ENOENT", "ECONNREFUSED") for outcome, _ in seen.values()), seen
    assert listeners.received == []
    assert Path(path).exists()
