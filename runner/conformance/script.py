"""The program the conformance probes run inside the sandbox, as its source.

It attacks from the inside, as a hostile script would, and prints what it saw
as one JSON line (the last of its stdout); ``runner.conformance.probes`` judges
that on the host. It is run three ways (its first argument): ``main`` looks at
the network, the user, capabilities, system calls, the file system, ``/proc``,
the environment and the PID cap; ``cpu`` prints more than the output cap,
then spins on every core until the deadline kills it (reporting its CPU time
on the way); ``memory`` allocates past the memory cap.

The network is looked at before anything is sent: only a sandbox with nothing
but ``lo`` and no route tries a connect (to a TEST-NET address, which then has
no way out) or a lookup (with a loopback nameserver only), so the probe never
sends a packet off the machine, even where the control is missing. Every
attack is bounded for the same reason: a fork bomb stops at twice the PID cap,
an allocation at twice the memory cap.
"""

from __future__ import annotations

PROBE = r'''
import ctypes, errno, json, os, resource, socket, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
mode, params = sys.argv[1], json.loads(sys.argv[2])


def name(number):
    return errno.errorcode.get(number, str(number))


def call(number, *args):
    """A raw system call: "ok", or the errno's name."""
    return "ok" if libc.syscall(number, *args) != -1 else name(ctypes.get_errno())


def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return name(e.errno) if e.errno else type(e).__name__


def timed(fn):
    started = time.monotonic()
    return [attempt(fn), round(time.monotonic() - started, 3)]


def in_child(fn):
    """fn() in a forked child, so that nothing it changes stays: its answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            answer = fn()
        except BaseException as e:
            answer = "raised " + type(e).__name__
        os.write(w, answer.encode()[:200])
        os._exit(0)
    os.close(w)
    answer = os.read(r, 200).decode()
    os.close(r)
    status = os.waitpid(pid, 0)[1]
    return "killed by signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status) else answer


def status():
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (l.split(":", 1) for l in f if ":" in l)}


def mounts():
    """/proc/self/mountinfo: [mount point, its options, file system type, root]."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            point = fields[4].encode().decode("unicode_escape")
            found.append([point, fields[5], right.split()[0] if right else "?", fields[3]])
    return found


def routes():
    """Every route but the loopback's, v4 and v6."""
    found = []
    with open("/proc/net/route") as f:
        found += ["v4 dev %s dst %s" % tuple(l.split()[:2]) for l in f.readlines()[1:]
                  if l.split() and l.split()[0] != "lo"]
    try:
        with open("/proc/net/ipv6_route") as f:
            found += ["v6 dev %s dst %s/%s" % (l.split()[-1], l.split()[0], l.split()[1])
                      for l in f if l.split() and l.split()[-1] != "lo"]
    except OSError:
        pass
    return found


def tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
    finally:
        s.close()


def udp_route(family, host):
    # connect() on UDP sends nothing: it only asks the kernel for a route.
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((host, 9))
    finally:
        s.close()


def network():
    interfaces = sorted(n for _, n in socket.if_nameindex())
    found = routes()
    with open("/etc/resolv.conf") as f:
        servers = [l.split()[1] for l in f if l.startswith("nameserver") and len(l.split()) > 1]
    seen = {"interfaces": interfaces, "routes": found, "nameservers": servers,
            "connect": None, "lookup": None}
    if interfaces != ["lo"] or found:
        return seen  # not one packet where it could leave
    seen["connect"] = {
        "tcp 192.0.2.1:9": timed(lambda: tcp("192.0.2.1", 9)),
        "udp route 192.0.2.1": timed(lambda: udp_route(socket.AF_INET, "192.0.2.1")),
        "udp route 2001:db8::1": timed(lambda: udp_route(socket.AF_INET6, "2001:db8::1")),
    }
    if servers and set(servers) <= {"127.0.0.1", "::1"}:
        seen["lookup"] = timed(lambda: socket.getaddrinfo("conformance-probe.invalid", 80))
    return seen


def ptrace_child():
    pid = os.fork()
    if pid == 0:
        time.sleep(10)
        os._exit(0)
    try:
        return "ok" if libc.ptrace(0x4206, pid, None, None) == 0 else name(ctypes.get_errno())
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def seize(pid):  # PTRACE_SEIZE: unlike ATTACH, it would not stop the tracee
    return "ok" if libc.ptrace(0x4206, pid, None, None) == 0 else name(ctypes.get_errno())


def mount_tmp():
    ok = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0
    return "ok" if ok else name(ctypes.get_errno())


def mount_in_user_namespace():
    if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
        return "unshare " + name(ctypes.get_errno())
    return mount_tmp()


def syscalls():
    ring = (ctypes.c_uint32 * 30)()
    attr = (ctypes.c_uint8 * 128)()
    return {
        "io_uring_setup": call(425, 1, ctypes.byref(ring)),
        "ptrace child": ptrace_child(),
        "ptrace init": seize(1),
        "add_key": call(248, b"user", b"conformance", b"v", 1, -2),
        "keyctl": call(250, 0, -2, 0),
        "unshare user": in_child(lambda: call(272, 0x10000000)),
        "unshare mount": in_child(lambda: call(272, 0x00020000)),
        "mount": in_child(mount_tmp),
        "mount in a user namespace": in_child(mount_in_user_namespace),
        "bpf": call(321, 0, ctypes.byref(attr), 72),
        "perf_event_open": call(298, ctypes.byref(attr), 0, -1, -1, 0),
        "userfaultfd": call(323, 0o2000000 | 1),  # O_CLOEXEC | UFFD_USER_MODE_ONLY
    }


def writable(points):
    """The directories of ``points`` where a new file can be made."""
    found = []
    for point in points:
        path = os.path.join(point, ".conformance-%d" % os.getpid())
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except OSError:
            continue
        found.append(point)
        try:
            os.unlink(path)
        except OSError:
            pass
    return found


def peek(path):
    """What reading ``path`` gives: bytes read (a directory: its entries), or the errno."""
    try:
        if os.path.isdir(path):
            return len(os.listdir(path))
        with open(path, "rb") as f:
            return len(f.read(4096))
    except OSError as e:
        return name(e.errno)


def write_to(path):
    def write():
        with open(path, "wb") as f:
            f.write(b"1")
    return attempt(write)


def thread_bomb(cap):
    """Threads started until the kernel refuses one (at most twice the cap)."""
    threading.stack_size(64 * 1024)
    stop, started, refused = threading.Event(), 0, None
    try:
        while started < 2 * cap + 16:
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError as e:
        refused = str(e)
    stop.set()
    return {"started": started, "refused": refused}


def identity():
    s = status()
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "status": {k: v for k, v in s.items() if k.startswith("Cap")
                       or k in ("NoNewPrivs", "Seccomp", "Uid", "Gid")}}


def main():
    table = mounts()
    points = sorted({m[0] for m in table if not m[0].startswith(("/proc", "/sys"))}
                    | {"/", "/etc", "/usr", "/opt", "/root", "/home", "/var/tmp", "/run",
                       "/dev", os.path.dirname(os.path.abspath(__file__))})
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    seen = {
        "identity": identity(),
        "no_new_privs": libc.prctl(38 + 1, 0, 0, 0, 0),  # PR_GET_NO_NEW_PRIVS
        "setuid root": attempt(lambda: os.setuid(0)),
        "kernel": open("/proc/version").read().strip(),
        "network": network(),
        "syscalls": syscalls(),
        "mounts": table,
        "writable": writable(points),
        "visible": {p: os.path.lexists(p) for p in params["hidden"]},
        "masked": {p: peek(p) for p in params["masked"]},
        "proc writes": {p: write_to(p) for p in params["unwritable"]},
        "environment": dict(os.environ),
        "nproc": list(nproc),
        "threads": thread_bomb(params["pids_limit"]),
    }
    print(json.dumps(seen))


def cpu():
    line = b"x" * 4095 + b"\n"
    for _ in range(params["filler"] // len(line) + 1):
        sys.stdout.buffer.write(line)
    print(json.dumps({"identity": identity()}))  # after the filler: in the kept tail
    sys.stdout.flush()
    children = []
    started = time.monotonic()
    for _ in range(params["workers"]):
        pid = os.fork()
        if pid == 0:
            while True:  # until the deadline kills the sandbox
                pass
        children.append(pid)
    time.sleep(params["spin"])
    ticks = 0
    for pid in children:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    print(json.dumps({"identity": identity(), "cpu": ticks / os.sysconf("SC_CLK_TCK"),
                      "wall": time.monotonic() - started, "workers": params["workers"]}))
    sys.stdout.flush()
    time.sleep(3600)


def memory():
    print(json.dumps({"identity": identity()}))
    sys.stdout.flush()
    blocks, held = [], 0
    while held < params["bound"]:
        blocks.append(b"\x01" * (32 << 20))  # written, so every page is really used
        held += 32 << 20
    print(json.dumps({"identity": identity(), "survived": held}))


{"main": main, "cpu": cpu, "memory": memory}[mode]()
'''
