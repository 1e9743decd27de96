"""Engines other than the local one for the integration and adversarial suites.

``dind_engine()`` and ``podman_engine()`` each yield the ``DOCKER_HOST`` (a UNIX
socket) of a ready engine that holds the sandbox images and cannot send a packet
anywhere: Docker-in-Docker runs with no network at all, the Podman service in a
network namespace of its own with nothing but a loopback that is down. On exit
each removes everything it started: containers, the Docker-in-Docker data
volume, the Podman service process and its storage.

Neither engine sees the caller's files: a bind source names a path on the
engine's side. The images come from the local engine (``DOCKER_HOST`` as the
caller has it, else the default socket), saved and loaded over the API.

Pass ``timings={}`` to learn how long each step took (seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.models.images import Image

from runner.core.settings import DEFAULT_BASE_IMAGE, DEFAULT_IMAGE

# The Ryuk reaper image cannot be pulled here (no registry); these helpers clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

log = logging.getLogger(__name__)

#: What each engine is loaded with: the sandbox image and the base it is built on.
SANDBOX_IMAGES = (DEFAULT_BASE_IMAGE, DEFAULT_IMAGE)
DIND_IMAGE = "experiment-runner/dind:bookworm"
#: Marks what these helpers create on the local engine. Never the runner's own label:
#: the suites' fixtures remove every container that carries that one.
LABEL = "io.experiment-runner.test-engine"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DIND_PACKAGES = "docker.io,iptables,ca-certificates,tini,fuse-overlayfs"
READY_TIMEOUT = 60.0

#: Run inside the Docker-in-Docker container before dockerd.
DIND_ENTRYPOINT = """\
#!/bin/sh
# Docker-in-Docker without --privileged (which fails here: the bounding set lacks
# CAP_SYS_RESOURCE). An unprivileged container gets /sys and its cgroup
# controllers read-only; dockerd must write there.
set -eu
awk '$2 == "/sys" || $2 ~ "^/sys/fs/cgroup(/|$)" { print $2, $4 }' /proc/mounts |
while read -r path options; do
    # /sys is a read-only superblock; the controllers are read-only bind mounts.
    case ",$options," in
        *,ro,*) mount -o remount,rw "$path" 2>/dev/null || mount -o remount,bind,rw "$path" ;;
    esac
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# A restarted container keeps its /run (a machine's would be empty): a killed dockerd's
# pid files would keep the new one from starting.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec "$@"
"""
#: The socket's directory inside the Docker-in-Docker container, bind-mounted from the host.
DIND_SOCKET_DIR = "/run/dind"
DIND_CHANGES = [
    # tini as PID 1 reaps the containerd shims that dockerd would leave as zombies.
    'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/dind-entrypoint"]',
    'CMD ["dockerd", "--host=unix://' + DIND_SOCKET_DIR + '/docker.sock", '
    '"--iptables=false", "--ip6tables=false", "--bridge=none"]',
    "VOLUME /var/lib/docker",
    f"LABEL {LABEL}=dind",
]
#: Changes whenever the recipe does, so a stale image is rebuilt.
DIND_DEFINITION = hashlib.sha256(
    "\0".join([DIND_PACKAGES, DIND_ENTRYPOINT, *DIND_CHANGES]).encode()
).hexdigest()[:16]
LABEL_DEFINITION = f"{LABEL}.definition"
#: What works here in place of --privileged (see /work/shared/ENVIRONMENT.md).
DIND_RUN_KWARGS = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
    # The inner containers' cgroups nest under this container's and go with it.
    "cgroupns": "private",
    "network_mode": "none",  # no IP traffic at all: the API is a UNIX socket
    "network": None,  # else testcontainers may attach a network of its choosing
    "labels": {LABEL: "dind"},
}


class EngineError(RuntimeError):
    """An engine could not be built, started or loaded."""


Timings = dict[str, float]


@dataclass
class DindEngine:
    """A running Docker-in-Docker engine: its ``DOCKER_HOST``, and a way to restart it."""

    docker_host: str
    container: DockerContainer

    def restart(self, grace: int = 1) -> None:
        """Restart the engine as a machine would: its dockerd stops (``grace`` seconds,
        then it is killed, and every container it ran with it) and starts again, its
        images and volumes kept."""
        self.container.get_wrapped_container().restart(timeout=grace)


@contextlib.contextmanager
def dind_engine(*, timings: Timings | None = None, shared: Path | None = None) -> Iterator[str]:
    """A Docker-in-Docker engine with the sandbox images; yields its ``DOCKER_HOST``."""
    with running_dind(timings=timings, shared=shared) as dind:
        yield dind.docker_host


@contextlib.contextmanager
def running_dind(
    *,
    timings: Timings | None = None,
    shared: Path | None = None,
    images: tuple[str, ...] = SANDBOX_IMAGES,
) -> Iterator[DindEngine]:
    """A Docker-in-Docker engine with the sandbox images, started on this machine's own
    engine; yields it (``DindEngine``: its ``DOCKER_HOST``, and ``restart``).

    ``shared``: a directory of this machine the engine sees at the same path (for
    measuring, on a private engine, what only an engine that sees the caller's
    files does: the warm pool's hard links, bind mounts). ``images``: what is
    loaded into it (``()``: a fresh, empty engine).
    """
    timings = {} if timings is None else timings
    local = docker.from_env()
    with _timed(timings, "build"):
        ensure_dind_image(local)
    with tempfile.TemporaryDirectory(prefix="er-dind-") as socket_dir:
        docker_host = f"unix://{socket_dir}/docker.sock"
        container = DockerContainer(DIND_IMAGE).with_volume_mapping(
            socket_dir, DIND_SOCKET_DIR, mode="rw"
        )
        if shared is not None:
            container.with_volume_mapping(str(shared), str(shared), mode="rw")
        container.with_kwargs(**DIND_RUN_KWARGS)
        try:
            with _timed(timings, "start"):
                container.start()
                client = _wait_ready(
                    docker_host, lambda: _running(container), lambda: _container_logs(container)
                )
            with contextlib.closing(client), _timed(timings, "load"):
                load_images(local, client, images)
            log.info("dind engine at %s ready: %s", docker_host, _format(timings))
            yield DindEngine(docker_host, container)
        finally:
            # Removing the container (with its volume) ends every inner container too.
            container.stop(force=True, delete_volume=True)
            local.close()


@contextlib.contextmanager
def podman_engine(*, timings: Timings | None = None) -> Iterator[str]:
    """A Podman service with the sandbox images; yields its ``DOCKER_HOST``."""
    timings = {} if timings is None else timings
    if shutil.which("podman") is None or os.geteuid() != 0:
        raise EngineError("needs podman, run as root: run `bash scripts/engines.sh` as root first.")
    local = docker.from_env()
    # Below /tmp itself, not TMPDIR: Podman refuses a runroot of more than 50 characters,
    # and a CI run's TMPDIR is already long (.ci/run makes a new one).
    with tempfile.TemporaryDirectory(prefix="er-podman-", dir="/tmp") as tmp:
        work = Path(tmp)
        docker_host = f"unix://{work}/podman.sock"
        logfile = work / "service.log"
        # File locks in its own directory rather than the machine-wide /dev/shm/libpod_lock.
        conf = work / "containers.conf"
        conf.write_text('[engine]\nlock_type = "file"\n')
        command = [
            # A network namespace of its own: the service can reach nothing, not even by mistake.
            "unshare", "--net", "--",
            "podman",
            # Storage and state of its own, removed on exit; no systemd or journald here.
            f"--root={work / 'storage'}", f"--runroot={work / 'run'}",
            f"--tmpdir={work / 'libpod'}", f"--volumepath={work / 'volumes'}",
            "--cgroup-manager=cgroupfs", "--events-backend=file",
            "system", "service", "--time=0", docker_host,
        ]  # fmt: skip
        env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        # Podman 4.3 keeps a blob cache there whatever its --root; no option moves it.
        shared_cache = Path("/var/lib/containers")
        cache_was_there = shared_cache.exists()
        with logfile.open("wb") as out:
            service = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            with _timed(timings, "start"):
                client = _wait_ready(
                    docker_host, lambda: service.poll() is None, lambda: _tail(logfile)
                )
            with contextlib.closing(client):
                with _timed(timings, "load"):
                    load_images(local, client, SANDBOX_IMAGES)
                log.info("podman engine at %s ready: %s", docker_host, _format(timings))
                try:
                    yield docker_host
                finally:
                    _remove_all_containers(client)
        finally:
            _stop(service)
            local.close()
            _unmount_under(work)  # its storage's overlay directory is a mount of its own
            _remove_empty_cgroups("libpod_parent")
            if not cache_was_there:
                shutil.rmtree(shared_cache, ignore_errors=True)


def ensure_dind_image(local: docker.DockerClient) -> None:
    """Build the Docker-in-Docker image from Debian packages unless it is there, up to date."""
    try:
        old: Image | None = local.images.get(DIND_IMAGE)
    except ImageNotFound:
        old = None
    if old is not None and old.labels.get(LABEL_DEFINITION) == DIND_DEFINITION:
        return
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise EngineError(
            f"Building {DIND_IMAGE} needs debootstrap, run as root: "
            "run `bash scripts/engines.sh` as root first."
        )
    log.info("building %s with debootstrap (about a minute)", DIND_IMAGE)
    with tempfile.TemporaryDirectory(prefix="er-dind-root-") as tmp:
        try:
            root = _debootstrap_dind(Path(tmp) / "root")
            _import_root(local, root)
        finally:
            # debootstrap mounts /proc and /sys in the root; a failed run can leave them there.
            _unmount_under(Path(tmp))
    if old is not None:
        with contextlib.suppress(DockerException):  # still used by a container: keep it
            local.images.remove(old.id)


def _debootstrap_dind(root: Path) -> Path:
    _run(["debootstrap", "--variant=minbase", f"--include={DIND_PACKAGES}",
          "bookworm", str(root), DEBIAN_MIRROR])  # fmt: skip
    entrypoint = root / "usr/local/bin/dind-entrypoint"
    entrypoint.write_text(DIND_ENTRYPOINT)
    entrypoint.chmod(0o755)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    shutil.rmtree(root / "var/cache/apt", ignore_errors=True)
    return root


def _import_root(local: docker.DockerClient, root: Path) -> None:
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    repository, tag = DIND_IMAGE.rsplit(":", 1)
    try:
        local.api.import_image(
            src=tar.stdout,
            repository=repository,
            tag=tag,
            changes=[*DIND_CHANGES, f"LABEL {LABEL_DEFINITION}={DIND_DEFINITION}"],
            stream_src=True,
        )
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise EngineError(f"tar of the {DIND_IMAGE} root filesystem failed")


def load_images(
    source: docker.DockerClient, target: docker.DockerClient, refs: tuple[str, ...]
) -> None:
    """Copy images from ``source`` to ``target`` over their APIs, streaming, tags kept."""
    # One image per archive: docker-py cannot read Podman's answer to a load of several.
    for ref in refs:
        try:
            chunks = source.images.get(ref).save(chunk_size=1 << 20, named=ref)
        except ImageNotFound as e:
            raise EngineError(
                f"The local engine lacks {ref}: build it with `runner image build`."
            ) from e
        target.images.load(chunks)
        target.images.get(ref)  # raises when the engine stored it under another name


def _wait_ready(
    docker_host: str, alive: Callable[[], bool], logs: Callable[[], str]
) -> docker.DockerClient:
    socket_path = Path(docker_host.removeprefix("unix://"))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and alive():
        if socket_path.exists():
            client = docker.DockerClient(base_url=docker_host, version="auto", max_pool_size=64)
            with contextlib.suppress(DockerException):
                client.ping()
                return client
            client.close()
        time.sleep(0.1)
    raise EngineError(
        f"No engine answered on {docker_host} (it stopped, or took over {READY_TIMEOUT:.0f} s); "
        f"its log ends with:\n{logs()}"
    )


def _remove_all_containers(client: docker.DockerClient) -> None:
    for container in client.containers.list(all=True):
        # Podman can answer 500 to removing a container that is just exiting; a retry works.
        for attempt in range(3):
            try:
                container.remove(force=True, v=True)
                break
            except NotFound:
                break
            except DockerException:
                time.sleep(0.2 * (attempt + 1))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _unmount_under(path: Path) -> None:
    """Unmount what the engine left mounted below ``path`` (deepest first)."""
    prefix = f"{path}/"
    with Path("/proc/self/mounts").open() as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False)


def _running(container: DockerContainer) -> bool:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return bool(wrapped.status == "running")


def _remove_empty_cgroups(name: str) -> None:
    """Remove the empty cgroup directories ``name`` (cgroup v1 or v2) and below it.

    Podman leaves one of these behind (with a ``conmon`` child); one still in
    use by another engine is not empty, and stays.
    """
    cgroups = Path("/sys/fs/cgroup")
    for top in [*cgroups.glob(f"*/{name}"), *cgroups.glob(name)]:
        for directory in sorted(top.glob("**/"), key=lambda path: -len(path.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()


def _container_logs(container: DockerContainer) -> str:
    stdout, stderr = container.get_logs()
    return (stdout + stderr).decode(errors="replace")[-3000:]


def _tail(logfile: Path) -> str:
    return logfile.read_text(errors="replace")[-3000:]


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EngineError(
            f"{cmd[0]} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )


@contextlib.contextmanager
def _timed(timings: Timings, step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - start, 3)


def _format(timings: Timings) -> str:
    return ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
