"""Looking around and escalating: privileges, kernel interfaces, /proc and /sys, paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runner.identity import UID_COUNT, UID_FIRST
from runner.sandbox import sandbox_environment
from tests.adversarial.conftest import Hostile, report
from tests.integration.conftest import RUNTIME

SYSCALLS = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    return "ok" if fn(*args) != -1 else errno.errorcode.get(ctypes.get_errno(), "?")
class Timespec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]
def setuid_root():
    try:
        os.setuid(0)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
# Read before unshare: under gVisor a new user namespace would remap the ids.
status = {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status"))
          if k.startswith("Cap") or k in ("NoNewPrivs", "Uid", "Gid")}
print(json.dumps({
    "status": status,
    "setuid": setuid_root(),
    "mount": call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
    "unshare_user": call(libc.unshare, 0x10000000),
    "unshare_mount": call(libc.unshare, 0x00020000),
    "add_key": call(libc.syscall, 248, b"user", b"key", b"value", 5, -2),
    "keyctl": call(libc.syscall, 250, 0, -2, 0),
    "clock_settime": call(libc.clock_settime, 0, ctypes.byref(Timespec(0, 0))),
    "settimeofday": call(libc.settimeofday, ctypes.byref(Timespec(0, 0)), None),
}))
"""


def test_privileged_kernel_interfaces_are_refused(hostile: Hostile) -> None:
    """setuid, mount, unshare, keyrings and the clock are refused; no capability is held."""
    seen = report(hostile(SYSCALLS))
    assert seen["setuid"] in ("EPERM", "EINVAL")
    assert seen["mount"] == "EPERM"
    assert seen["clock_settime"] == "EPERM"
    assert seen["settimeofday"] == "EPERM"
    assert seen["add_key"] in ("EPERM", "EACCES", "ENOSYS")
    assert seen["keyctl"] in ("EPERM", "EACCES", "ENOSYS")
    uids = {int(uid) for uid in seen["status"]["Uid"].split()}
    assert len(uids) == 1 and UID_FIRST <= uids.pop() < UID_FIRST + UID_COUNT
    assert all(int(v, 16) == 0 for k, v in seen["status"].items() if k.startswith("Cap"))
    if RUNTIME == "runc":
        # Docker's seccomp profile forbids new namespaces without CAP_SYS_ADMIN.
        assert seen["unshare_user"] == "EPERM"
        assert seen["unshare_mount"] == "EPERM"
        assert seen["status"]["NoNewPrivs"] == "1"
    # Under gVisor, unshare makes namespaces inside gVisor's own kernel: no host effect.


def test_ptrace_reaches_only_the_sandbox_itself(hostile: Hostile) -> None:
    """The only processes a script could trace are its sandbox's own (init, its watchdog)."""
    seen = report(
        hostile(
            """
            import json, os
            pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
            commands = {p: open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")[0].decode()
                        for p in pids if os.path.exists(f"/proc/{p}/cmdline")}
            print(json.dumps({"pids": pids, "commands": commands}))
            """
        )
    )
    commands = set(seen["commands"].values())
    assert len(seen["pids"]) <= 4, seen
    assert commands <= {"/sbin/docker-init", "timeout", "python"}, commands


def test_proc_and_sys_do_not_leak_or_accept_writes(hostile: Hostile) -> None:
    """Sensitive /proc files are masked, /proc/sys and /sys are read-only."""
    seen = report(
        hostile(
            """
            import errno, json
            def attempt(path, mode):
                try:
                    with open(path, mode) as f:
                        f.read(1) if "r" in mode else f.write(b"1")
                    return "ok"
                except OSError as e:
                    return errno.errorcode.get(e.errno, str(e))
            paths = ["/proc/kcore", "/proc/sysrq-trigger", "/proc/sys/kernel/hostname",
                     "/proc/sys/vm/drop_caches", "/sys/kernel/mm/transparent_hugepage/enabled",
                     "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
            print(json.dumps({p: [attempt(p, "rb"), attempt(p, "wb")] for p in paths}))
            """
        )
    )
    for path, (_, write) in seen.items():
        assert write != "ok", path
    assert seen["/proc/kcore"][0] != "ok"
    assert seen["/proc/sysrq-trigger"][0] != "ok"


def test_caller_environment_and_host_paths_stay_hidden(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No caller variable and no host path outside the mounts is visible."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-key")
    secret = tmp_path / "host-secret"
    secret.write_text("s")
    secret.chmod(0o644)
    probes = [str(secret), str(Path.home() / ".cache"), "/work", "/etc/docker", "/var/lib/docker"]
    seen = report(
        hostile(
            f"""
            import json, os
            print(json.dumps({{"env": dict(os.environ),
                              "paths": {{p: os.path.exists(p) for p in {probes!r}}}}}))
            """
        )
    )
    assert seen["env"] == {**sandbox_environment(1.0), "HOSTNAME": "sandbox"}
    assert seen["paths"] == dict.fromkeys(probes, False)


def test_the_script_cannot_change_itself_or_its_inputs(
    hostile: Hostile, workdir: Path, write_script: Callable[..., Path]
) -> None:
    """Rewriting, deleting or chmod-ing the script fails: its directory is mounted read-only."""
    workdir.chmod(0o777)
    result = hostile(
        """
        import errno, json, os
        def attempt(fn):
            try:
                fn()
                return "ok"
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e))
        print(json.dumps({
            "rewrite": attempt(lambda: open(__file__, "a").write("#")),
            "delete": attempt(lambda: os.remove(__file__)),
            "chmod": attempt(lambda: os.chmod(__file__, 0o777)),
            "create": attempt(lambda: open("planted.py", "w").write("x")),
        }))
        """
    )
    seen = report(result)
    assert set(seen.values()) <= {"EROFS", "EPERM", "EACCES"}, seen
    assert (workdir / "hostile.py").exists()
    assert not (workdir / "planted.py").exists()
