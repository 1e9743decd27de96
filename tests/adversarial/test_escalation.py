"""Looking around and escalating: privileges, kernel interfaces, /proc and /sys, paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runner.sandbox.identity import UID_COUNT, UID_FIRST
from runner.sandbox.policy import sandbox_environment
from tests.adversarial.conftest import Hostile, report
from tests.integration.conftest import CHECKOUT, ENGINE_ENVIRONMENT, INIT_COMMANDS, RUNTIME

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
    """The only processes a script could reach are its sandbox's own (init, sh, watchdog)."""
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
    assert len(seen["pids"]) <= 5, seen
    assert commands <= {*INIT_COMMANDS, "sh", "timeout", "python"}, commands


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
    probes = [str(secret), str(Path.home() / ".cache"), str(CHECKOUT), "/etc/docker"]
    probes.append("/var/lib/docker")
    seen = report(
        hostile(
            f"""
            import json, os
            print(json.dumps({{"env": dict(os.environ),
                              "paths": {{p: os.path.exists(p) for p in {probes!r}}}}}))
            """
        )
    )
    expected = {**sandbox_environment(1.0), "HOSTNAME": "sandbox", **ENGINE_ENVIRONMENT}
    assert seen["env"] == expected
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


REMOVED_CALLS = """
import ctypes, errno, json, mmap, os, signal, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(number, *args):
    r = libc.syscall(number, *args)
    return "ok" if r != -1 else errno.errorcode.get(ctypes.get_errno(), "?")
def open_socket(family, kind, pair=False):
    try:
        for s in socket.socketpair(family, kind) if pair else [socket.socket(family, kind)]:
            s.close()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def i386_getpid():
    # int 0x80 from a child: a 32-bit call, which the profile answers by killing the caller.
    pid = os.fork()
    if pid == 0:
        code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        # push rbx; mov eax, 20 (getpid); int 0x80; pop rbx; ret
        code[:10] = b"\\x53\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\x5b\\xc3"
        ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))()
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else "ok"
params = (ctypes.c_uint32 * 30)()
print(json.dumps({
    "io_uring_setup": call(425, 1, ctypes.byref(params)),
    "modify_ldt": call(154, 0, None, 0),
    "splice": call(275, -1, None, -1, None, 0, 0),
    "tee": call(276, -1, -1, 0, 0),
    "vmsplice": call(278, -1, None, 0, 0),
    "AF_ALG": open_socket(38, socket.SOCK_SEQPACKET),
    "AF_VSOCK": open_socket(40, socket.SOCK_STREAM),
    "AF_TIPC pair": open_socket(30, socket.SOCK_RDM, pair=True),
    "i386": i386_getpid(),
}))
"""


def test_io_uring_is_refused(hostile: Hostile) -> None:
    """runc: io_uring_setup fails with EPERM (Docker 20.10's own profile lets it through)."""
    seen = report(hostile(REMOVED_CALLS))
    if RUNTIME == "runc":
        assert seen["io_uring_setup"] == "EPERM"
    # runsc ignores the OCI profile (no --oci-seccomp): io_uring there is gVisor's own
    # implementation inside the sandbox, and never reaches the host's kernel.


def test_other_needless_calls_are_refused(hostile: Hostile) -> None:
    """runc: modify_ldt, the splice family, rare socket families and 32-bit calls are refused."""
    seen = report(hostile(REMOVED_CALLS))
    if RUNTIME == "runc":
        assert seen["i386"] == "SIGSYS"
        del seen["i386"], seen["io_uring_setup"]
        assert set(seen.values()) == {"EPERM"}, seen


def test_init_and_the_watchdog_cannot_be_traced(hostile: Hostile) -> None:
    """ptrace attach to tini (PID 1) or the in-container timeout fails with EPERM."""
    seen = report(
        hostile(
            """
            import ctypes, errno, json, os
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            def seize(pid):  # PTRACE_SEIZE: unlike ATTACH, it would not stop the tracee
                ok = libc.ptrace(0x4206, pid, None, None) == 0
                return "ok" if ok else errno.errorcode.get(ctypes.get_errno(), "?")
            commands = {p: open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")[0].decode()
                        for p in (1, os.getppid())}
            print(json.dumps({"commands": commands, "init": seize(1),
                              "parent": seize(os.getppid())}))
            """
        )
    )
    init, *rest = sorted(seen["commands"].items(), key=lambda item: int(item[0]))
    assert init[1] in INIT_COMMANDS and [c for _, c in rest] == ["timeout"], seen
    # runc: the profile has no ptrace; runsc: gVisor only lets a process trace its descendants.
    assert seen["init"] == "EPERM"
    assert seen["parent"] == "EPERM"


def test_parallel_scikit_learn_still_works(hostile: Hostile) -> None:
    """Threads, joblib's process workers and a multiprocessing Pool all work under the profile."""
    result = hostile(
        """
        import json, multiprocessing
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import cross_val_score

        def square(x):
            return x * x

        if __name__ == "__main__":
            X, y = make_classification(n_samples=300, n_features=8, random_state=0)
            forest = RandomForestClassifier(n_estimators=20, n_jobs=2, random_state=0)
            accuracy = cross_val_score(forest, X, y, cv=3, n_jobs=2).mean()
            squares = 0
            for method in ("fork", "forkserver"):  # forkserver passes descriptors on unix sockets
                with multiprocessing.get_context(method).Pool(2) as pool:
                    squares += sum(pool.map(square, range(10)))
            print(json.dumps({"success": True, "metrics": {"accuracy": accuracy,
                                                           "squares": squares}}))
        """,
        cpu_limit=2.0,
        timeout=60,
    )
    assert result.success, result.stderr[-2000:]
    assert result.metrics["squares"] == 2 * 285
    assert result.metrics["accuracy"] > 0.7
