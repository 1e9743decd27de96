"""A lifeline: what this process made on an engine goes when the process does, however
it ends (a ``SIGKILL`` right after a result included).

Runs are over for their caller before their containers are removed (the removal
is a background thread's, ``runner.sandbox.lifecycle.Reaper``), and warm pool
containers wait for scripts for up to an hour. Should the process die meanwhile,
its threads and finalizers die with it. So every container and volume an engine
makes for this process (those labelled with an owner, ``OWNER_LABEL``) is
announced to a small helper process, by a name the runner gives it before the
engine makes it, and withdrawn once removed. The helper
holds the read end of a pipe whose write end only this process has; when the
process ends, the pipe closes, and the helper removes what is still announced,
containers first (killing what still runs), then volumes, then exits. What this
process removed itself is never touched, nor anything another process made.

The helper is started on the first announcement, in a session of its own (a
Ctrl-C to the terminal's process group does not reach it) and not as this
process's child: it forks once more and goes on in the grandchild, so that an
end which kills the process's children with it (a Ray worker's exit does) leaves
it alone. Its command line ends with ``MARKER`` and the PID of the process it
watches (``helpers`` finds it). It imports nothing until the pipe closes with
something left: idle, it is a bare interpreter (about 10 MB). A process that
forks gets a lifeline of its own in the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Every container and volume made for one caller carries it (``runner.sandbox.cleanup``).
OWNER_LABEL = "io.experiment-runner.owner"

#: The helper's command line ends with it and the PID of the process it watches.
MARKER = "experiment-runner-lifeline"

#: The helper: reads announcements until the pipe closes, then removes what is left.
SOURCE = r"""
import json, os, signal, sys, time
for name in ("SIGINT", "SIGHUP", "SIGTERM"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
# Not the caller's child: the one it started exits at once, this goes on (reparented).
if os.fork():
    os._exit(0)
os.setsid()
engines, held = {}, {}
for line in sys.stdin.buffer:
    try:
        op, kind, key, rest = line.decode("utf-8").rstrip("\n").split(" ", 3)
    except ValueError:
        continue
    if op == "=":
        engines[key] = json.loads(rest)
    elif op == "+":
        held.setdefault(key, {})[(kind, rest)] = None
    elif op == "-":
        held.get(key, {}).pop((kind, rest), None)
left = [(key, items) for key, items in held.items() if items and key in engines]
if left:
    import docker
    from docker.errors import NotFound
    for key, items in left:
        where = engines[key]
        tls = None
        if where.get("tls"):
            tls = docker.tls.TLSConfig(
                client_cert=tuple(where["tls"]["cert"]) if where["tls"].get("cert") else None,
                ca_cert=where["tls"].get("ca"),
                verify=bool(where["tls"].get("verify")),
            )
        try:
            api = docker.APIClient(base_url=where["base_url"], tls=tls, timeout=30)
            api.ping()
        except Exception:
            continue  # an engine that is gone took its containers with it, or keeps them
        # Containers first: a volume still mounted cannot go.
        for kind, ident in sorted(items, key=lambda item: item[0] != "c"):
            for attempt in range(1, 6):
                try:
                    if kind == "c":
                        api.remove_container(ident, force=True, v=True)
                    else:
                        api.remove_volume(ident, force=True)
                    break
                except NotFound:
                    break
                except Exception:
                    time.sleep(0.5 * attempt)
"""


class Lifeline:
    """This process's end of the pipe to its helper (``lifeline()`` gives the one)."""

    def __init__(self, command: list[str] | None = None) -> None:
        #: How the helper is started (the default: this interpreter, isolated, ``SOURCE``);
        #: ``MARKER`` and this process's PID follow.
        self.command = command or [sys.executable, "-I", "-c", SOURCE]
        self._lock = threading.Lock()
        self._helper: subprocess.Popen[bytes] | None = None
        self._engines: dict[str, str] = {}

    def hold(self, engine: Mapping[str, Any], kind: str, ident: str) -> None:
        """Announce a container (``kind`` "c") or volume ("v") made on ``engine`` (its
        address, ``address_of``): it goes should this process end before it does."""
        self._send(engine, f"+ {kind} {{key}} {ident}\n")

    def release(self, engine: Mapping[str, Any], kind: str, ident: str) -> None:
        """Withdraw an announcement: the container or volume is gone."""
        if self._helper is not None:
            self._send(engine, f"- {kind} {{key}} {ident}\n")

    def _send(self, engine: Mapping[str, Any], line: str) -> None:
        described = json.dumps(dict(engine), sort_keys=True)
        with self._lock:
            helper = self._started()
            if helper is None or helper.stdin is None:
                return
            key = self._engines.get(described)
            message = ""
            if key is None:
                key = self._engines[described] = str(len(self._engines))
                message = f"= e {key} {described}\n"
            message += line.format(key=key)
            try:
                helper.stdin.write(message.encode("utf-8"))
                helper.stdin.flush()
            except OSError:
                # The helper is gone (killed by someone): a new one takes the next ones.
                self._helper, self._engines = None, {}

    def _started(self) -> subprocess.Popen[bytes] | None:
        if self._helper is None:
            try:
                self._helper = subprocess.Popen(
                    [*self.command, MARKER, str(os.getpid())],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError:
                return None
            # What was started exits at once (the helper is its child): collected off the
            # caller's path, so it leaves no zombie behind.
            threading.Thread(target=self._helper.wait, name="runner-lifeline", daemon=True).start()
        return self._helper

    def _forget_in_child(self) -> None:
        """After a fork: the parent's helper and announcements are the parent's."""
        helper, self._helper, self._engines = self._helper, None, {}
        self._lock = threading.Lock()
        if helper is not None and helper.stdin is not None:
            _INHERITED.append(helper)  # never waited for here: it is the parent's child
            with contextlib.suppress(OSError):
                helper.stdin.close()  # this copy of the write end; the parent keeps its own


#: Helpers a forked child inherited from its parent (kept, so none is collected here).
_INHERITED: list[subprocess.Popen[bytes]] = []


_LIFELINE = Lifeline()
os.register_at_fork(after_in_child=_LIFELINE._forget_in_child)


def lifeline() -> Lifeline:
    """This process's lifeline."""
    return _LIFELINE


def helpers(pid: int) -> list[int]:
    """The PIDs of the lifeline helpers watching the process ``pid`` (read from /proc)."""
    tail = f"\0{MARKER}\0{pid}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().endswith(tail):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def own_name() -> str:
    """A new name for a container or volume, announced before the engine makes it."""
    return f"experiment-runner-{uuid.uuid4().hex[:24]}"


def owned(labels: Mapping[str, str] | None) -> bool:
    """Whether something with ``labels`` was made for one caller (is announced)."""
    return bool(labels) and OWNER_LABEL in (labels or {})


def address_of(api: Any) -> dict[str, Any]:
    """How the helper reaches the engine of a docker-py ``APIClient``: its URL (a UNIX
    socket's path, which docker-py keeps in its adapter) and TLS settings."""
    adapter = getattr(api, "_custom_adapter", None)
    socket_path = getattr(adapter, "socket_path", None)
    base_url = str(api.base_url)
    if socket_path and base_url.startswith("http+docker://"):
        return {"base_url": f"unix://{socket_path}"}
    address: dict[str, Any] = {"base_url": base_url}
    if base_url.startswith("https://"):
        cert = api.cert if isinstance(api.cert, (tuple, list)) else None
        verify = api.verify
        address["tls"] = {
            "cert": list(cert) if cert else None,
            "ca": verify if isinstance(verify, str) else None,
            "verify": bool(verify),
        }
    return address
