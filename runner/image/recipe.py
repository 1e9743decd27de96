"""The image's recipe, step by step, each step's output fixed by its inputs.

1. ``base_layer``: mmdebstrap installs exactly the Debian lock's ``.deb`` files
   (each checked by hash) from a repository made of them alone, with
   ``SOURCE_DATE_EPOCH``; the tree becomes a layer (``layers.normalize_tar``)
   without what is machine-specific (logs, caches, apt's lists, the hostname),
   with the sandbox user added and ``sources.list`` naming the real mirror.
2. ``extra_layer`` (user images with ``--debian``): the extra ``.deb`` files
   unpacked with ``dpkg-deb -x``, no maintainer script run anywhere.
3. ``venv_layer``: in a container of the base image with no network, no
   capabilities and a deadline, pip installs the locked wheels into
   ``/opt/venv`` without compiling; then ``compileall`` writes ``.pyc`` files
   validated by the source's hash (not its mtime) with a fixed hash seed. The
   engine hands ``/opt/venv`` back as a tar, which becomes a layer.
4. ``image_config`` and ``write_archive`` (``layers``): the engine loads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.image import debian_lock
from runner.image.debian_lock import DebEntry, DebianLock
from runner.image.definition import DEFINITION_FILES, LOCK_IN_IMAGE
from runner.image.layers import DROPPED_FILES, DROPPED_TREES, Layer, file_sha256, normalize_tar
from runner.sandbox.cleanup import LABEL_DEADLINE
from runner.sandbox.engine import DockerEngine

_Log = Callable[[str], None]

#: Bump when the recipe changes what it writes: it is part of the definition digest.
RECIPE_VERSION = "2"
SANDBOX_USER = "sandbox:x:10001:10001:sandbox:/tmp:/usr/sbin/nologin\n"
SANDBOX_GROUP = "sandbox:x:10001:\n"
ENV = (
    "PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
    "LANG=C.UTF-8",
    # Plots render to files (no display); the root is read-only, so matplotlib keeps
    # its configuration and font cache in /tmp (the runner sets the same).
    "MPLBACKEND=Agg",
    "MPLCONFIGDIR=/tmp/matplotlib",
)
USER = "10001:10001"
WORKDIR = "/tmp"  # noqa: S108 (the sandbox's own tmpfs, as before)
CMD = ("python",)
BASE_ENV = ("PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8")
VENV_TIMEOUT = 1200
#: Runs as root inside a container of the base with no network. The venv seeds pip
#: and setuptools; both go afterwards, so the image holds the lock exactly. The .pth
#: file makes every Python in the venv write its output completely (see the module).
VENV_SCRIPT = """\
set -eu
# No Python run here writes a .pyc of its own (they would carry mtimes): compileall does.
export PYTHONDONTWRITEBYTECODE=1
python3 -m venv /opt/venv
/opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
    --no-compile --require-hashes --only-binary=:all: --find-links /build/wheels \
    -r /build/requirements.lock
/opt/venv/bin/pip uninstall --yes --disable-pip-version-check setuptools pip
purelib=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
cp /build/site/* "$purelib"/
find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
# .pyc checked by the source's hash, never its mtime; a fixed seed orders sets alike.
PYTHONHASHSEED=0 /opt/venv/bin/python -m compileall -q -f -j 1 \
    --invalidation-mode unchecked-hash /opt/venv/lib >/dev/null || true
mkdir -p /build/meta
python3 -c 'import platform; print(platform.python_version())' > /build/meta/python
dpkg-query -W -f='${binary:Package}=${Version}\\n' > /build/meta/debian
"""


def recipe_digest() -> str:
    """What in the code shapes the image, for the definition digest."""
    text = json.dumps(
        [
            RECIPE_VERSION,
            SANDBOX_USER,
            SANDBOX_GROUP,
            ENV,
            USER,
            WORKDIR,
            CMD,
            BASE_ENV,
            VENV_SCRIPT,
            LOCK_IN_IMAGE,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def base_layer(lock: DebianLock, mirror: str, cache: Path, *, log: _Log = print) -> Layer:
    """The base's one layer, from the Debian lock; cached by the lock and recipe."""
    # Keyed by what shapes this layer alone: the venv's recipe does not rebuild it.
    shaping = [
        lock.text(),
        RECIPE_VERSION,
        SANDBOX_USER,
        SANDBOX_GROUP,
        DROPPED_TREES,
        DROPPED_FILES,
    ]
    key = hashlib.sha256(json.dumps(shaping).encode()).hexdigest()[:32]
    layers = cache / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    cached = layers / f"base-{key}.tar"
    if cached.is_file():
        recorded = cached.with_suffix(".sha256")
        if recorded.is_file():
            return Layer(cached, recorded.read_text().strip())
    debs = debian_lock.fetch_debs(lock.entries, mirror, cache / "debs", log=log)
    with tempfile.TemporaryDirectory(dir=layers, prefix="base-") as tmp:
        work = Path(tmp)
        repository = debian_lock.local_repository(work / "repo", debs, lock.suite)
        log(f"bootstrapping Debian {lock.suite}: {len(debs)} locked packages (mmdebstrap)")
        debian_lock.bootstrap(lock, repository, work / "root.tar")
        sources = f"deb {mirror} {lock.suite} main\n".encode()
        day = lock.source_date_epoch // 86400
        layer = normalize_tar(
            work / "root.tar",
            work / "layer.tar",
            epoch=lock.source_date_epoch,
            rewrite={
                "etc/passwd": lambda _, data: data + SANDBOX_USER.encode(),
                "etc/group": lambda _, data: data + SANDBOX_GROUP.encode(),
                "etc/apt/sources.list": lambda _, data: sources,
                # The day of each password's last change: the lock's, whatever the clock said.
                "etc/shadow": lambda _, data: _shadow_dated(data, day),
                "etc/shadow-": lambda _, data: _shadow_dated(data, day),
            },
        )
        (work / "layer.tar").rename(cached)
    cached.with_suffix(".sha256").write_text(layer.diff_id + "\n")
    return Layer(cached, layer.diff_id)


def _shadow_dated(data: bytes, day: int) -> bytes:
    lines = []
    for line in data.decode().splitlines():
        fields = line.split(":")
        if len(fields) == 9 and fields[2].isdigit():
            fields[2] = str(day)
        lines.append(":".join(fields))
    return ("\n".join(lines) + "\n").encode() if lines else data


def dpkg_status(layer: Layer) -> str:
    """The base layer's dpkg status file: what apt must take as installed."""
    with tarfile.open(layer.path) as tar:
        file = tar.extractfile("var/lib/dpkg/status")
        if file is None:
            raise ExperimentExecutionError("The base layer has no dpkg status.", hint="rebuild.")
        return file.read().decode()


def extra_layer(
    entries: Sequence[DebEntry], mirror: str, cache: Path, work: Path, epoch: int,
    *, log: _Log = print,
) -> Layer:  # fmt: skip
    """A user image's extra Debian packages, unpacked by ``dpkg-deb -x``: files, no scripts."""
    debs = debian_lock.fetch_debs(entries, mirror, cache / "debs", log=log)
    tree = work / "extra"
    debian_lock.unpack_debs(debs, tree)
    tarball = work / "extra.tar"
    with tarfile.open(tarball, "w:") as tar:
        tar.add(tree, arcname=".")
    # Only the files' own trees; the unpacked docs go as the base's do.
    return normalize_tar(tarball, work / "extra-layer.tar", epoch=epoch)


def venv_layer(
    engine: DockerEngine,
    base_id: str,
    lock: Path,
    wheels: Path,
    site_files: Sequence[Path],
    work: Path,
    epoch: int,
    *,
    log: _Log = print,
) -> tuple[Layer, str, str]:
    """``/opt/venv`` built in a container of the base, no network; (layer, python, dpkg list)."""
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:") as tar:
        tar.add(lock, arcname="build/requirements.lock")
        tar.add(wheels, arcname="build/wheels")
        for path in site_files:
            tar.add(path, arcname=f"build/site/{path.name}")
    container = engine.create(
        base_id,
        ["/bin/sh", "-c", VENV_SCRIPT],
        user="0:0",
        network_mode="none",  # the build must never need the network
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=1024,
        mem_limit="4g",
        labels={LABEL_DEADLINE: "0", "io.experiment-runner.image-build": "1"},
    )
    try:
        engine.put_archive(container, "/", payload.getvalue())
        log("installing the locked wheels into /opt/venv (network disabled)")
        engine.start(container)
        code = engine.wait(container, VENV_TIMEOUT)
        if code != 0:
            raise ExperimentExecutionError(
                f"Installing the wheels failed (exit {code}):\n{engine.logs(container)[-3000:]}",
                hint="read the log above; the lock file and the wheels must match.",
            )
        raw = work / "venv.tar"
        engine.get_archive_to(container, "/opt/venv", raw)
        with tarfile.open(fileobj=io.BytesIO(engine.get_archive(container, "/build/meta"))) as t:
            python = _member_text(t, "meta/python").strip()
            dpkg = _member_text(t, "meta/debian")
    finally:
        engine.remove(container)
    layer = normalize_tar(
        raw,
        work / "venv-layer.tar",
        epoch=epoch,
        prefix=("venv", "opt/venv"),
        dropped_trees=(),
        parents=("opt", "usr", "usr/share", str(Path(LOCK_IN_IMAGE).parent).lstrip("/")),
        extra={LOCK_IN_IMAGE.lstrip("/"): (lock.read_bytes(), 0o644)},
    )
    raw.unlink()
    return layer, python, dpkg


def _member_text(tar: tarfile.TarFile, name: str) -> str:
    file = tar.extractfile(name)
    if file is None:
        raise ExperimentExecutionError(f"The build left no {name}.", hint="rebuild.")
    return file.read().decode()


def copy_layer(layer: Layer, dest: Path) -> Layer:
    shutil.copyfile(layer.path, dest)
    return Layer(dest, f"sha256:{file_sha256(dest)}")


def definition_digest(source: Path, lock: Path | None = None, extra: Sequence[str] = ()) -> str:
    """Digest of everything that shapes the image: the locks, site files and the recipe.

    ``lock`` stands in for the definition's own ``requirements.lock`` (a user
    image), ``extra`` names its ``--debian`` packages.
    """
    digest = hashlib.sha256(recipe_digest().encode() + b"\0")
    for name in DEFINITION_FILES:
        path = lock if lock is not None and name == "requirements.lock" else source / name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join(extra).encode())
    return digest.hexdigest()
