"""Building the sandbox images, with no network inside any container.

The default image installs the shipped lock (``runner/images/sandbox``, also
``images/sandbox`` in a checkout); a user image installs a lock made from the
user's requirements and the default ones, the default image's versions kept.
Both go the same way: the wheels are downloaded on the host with
``--require-hashes``, the build has no network, and the labels record the lock's
digest, the Python packages and the Debian packages. ``verify_image`` checks an
image against those records from inside a sandboxed container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_IMAGE,
    DEFAULT_INDEX_URL,
    ExperimentDefaults,
)
from runner.image.definition import (
    DEBIAN_SUITE,
    DEFINITION_FILES,
    LABEL_ADDED,
    LABEL_BASE,
    LABEL_DEBIAN,
    LABEL_DEFINITION,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LABEL_PYTHON,
    definition_digest,
    image_dir,
    lock_digest,
)
from runner.image.listing import debian_packages, listing
from runner.image.python_lock import (
    PIP_PLATFORMS,
    PYTHON_VERSION,
    check_lock,
    compile_lock,
    lock_text,
    locked_packages,
    read_lock,
    run_tool,
)
from runner.sandbox.engine import DockerEngine

__all__ = ["BuiltImage", "build_image", "build_user_image"]


_Log = Callable[[str], None]


_DIGEST_REF = re.compile(r"^[\w./:-]+@sha256:[0-9a-f]{64}$")


_PLATFORM_ARGS = [
    "--only-binary=:all:",
    *(arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)),
    "--python-version", PYTHON_VERSION,
    "--implementation", "cp",
]  # fmt: skip


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    packages: dict[str, str]
    reused: bool
    lock: Path | None = None


def build_image(
    engine: DockerEngine,
    settings: ExperimentDefaults | None = None,
    *,
    tag: str | None = None,
    lock: Path | None = None,
    force: bool = False,
    log: _Log = print,
    labels: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Build an image from ``lock`` (default: the shipped one); reuse an identical build.

    Everything that can fail before the build does: the lock is checked and every
    wheel downloaded (hashes checked) first.
    """
    settings = settings or ExperimentDefaults()
    tag = tag or settings.image
    source = image_dir()
    lock = lock or source / "requirements.lock"
    packages = check_lock(lock)
    digest = lock_digest(lock)
    definition = definition_digest(source, lock)
    if not force and engine.image_exists(tag):
        current = engine.image_inspect(tag)["Config"].get("Labels") or {}
        if current.get(LABEL_DEFINITION) == definition:
            log(f"{tag} is up to date with {lock}")
            return BuiltImage(tag, engine.image_id(tag), packages, reused=True, lock=lock)
    wheels = download_wheels(
        lock, settings.cache_dir / "wheels" / digest[:16], index_url=settings.index_url, log=log
    )
    base_id = ensure_base(engine, settings, log=log)
    base_labels = engine.image_inspect(base_id)["Config"].get("Labels") or {}
    # The Dockerfile installs no Debian package: the image has exactly the base's.
    debian = debian_packages(engine, base_id)
    with tempfile.TemporaryDirectory(prefix="runner-build-") as tmp:
        context = Path(tmp)
        for name in DEFINITION_FILES:
            shutil.copy2(lock if name == "requirements.lock" else source / name, context / name)
        shutil.copytree(wheels, context / "wheels")
        log(f"building {tag} (network disabled during the build)")
        image_id = engine.build(
            context,
            tag,
            buildargs={"BASE_IMAGE": base_id},
            labels={
                LABEL_LOCK: digest,
                LABEL_DEFINITION: definition,
                LABEL_PACKAGES: listing(packages, "=="),
                LABEL_DEBIAN: listing(debian, "="),
                LABEL_PYTHON: base_labels.get(LABEL_PYTHON, "unknown"),
                LABEL_BASE: base_id,
                "org.opencontainers.image.title": "experiment-runner scikit-learn sandbox",
                **(labels or {}),
            },
        )
    # The build stage and a replaced image are left untagged; they carry the base's label.
    engine.prune_dangling(LABEL_PYTHON)
    return BuiltImage(tag, image_id, packages, reused=False, lock=lock)


def build_user_image(
    engine: DockerEngine,
    tag: str,
    *,
    requirements: Path | None = None,
    lock: Path | None = None,
    settings: ExperimentDefaults | None = None,
    force: bool = False,
    log: _Log = print,
) -> BuiltImage:
    """Build ``tag``: the default image's packages plus the user's, pinned and hash-locked.

    With ``requirements``, they are resolved with the default requirements, the
    default lock's versions kept, into ``lock`` (default: beside them, ``.lock``)
    by uv; without, ``lock`` (made that way before) is built as it is. A lock
    that cannot be satisfied, a package with no wheel for the image's Python, or
    a lock that moves a default pin fails here, before anything is built.
    """
    if tag in (DEFAULT_IMAGE, DEFAULT_BASE_IMAGE):
        raise ExperimentExecutionError(
            f"{tag} is the project's own image; a user image needs a tag of its own.",
            hint="pass --tag NAME, for example --tag my-experiments:1.",
        )
    settings = settings or ExperimentDefaults()
    default_lock = image_dir() / "requirements.lock"
    if requirements is not None:
        if not requirements.is_file():
            raise ExperimentExecutionError(
                f"Requirements file {requirements} not found.",
                hint="one requirement per line, as for pip (tabulate==0.9.0, xgboost, ...).",
            )
        lock = lock or requirements.with_suffix(".lock")
        if lock.resolve() == requirements.resolve():
            raise ExperimentExecutionError(
                f"The lock would overwrite the requirements {requirements}.",
                hint="name the requirements file .txt or .in, or pass --lock PATH.",
            )
        compile_lock(
            [image_dir() / "requirements.in", requirements],
            lock,
            constraints=default_lock,
            index_url=settings.index_url,
            log=log,
        )
    elif lock is None:
        raise ExperimentExecutionError(
            "A user image needs requirements or a lock.",
            hint="pass --requirements FILE (locked for you) or --lock FILE.",
        )
    packages = check_lock(lock)
    default = locked_packages(default_lock)
    moved = {n: v for n, v in default.items() if packages.get(n) != v}
    if moved:
        raise ExperimentExecutionError(
            f"{lock} does not keep the default image's pins: "
            + ", ".join(f"{n}=={v} (lock: {packages.get(n, 'missing')})" for n, v in moved.items()),
            hint="lock again with `runner image build --requirements FILE --tag NAME`.",
        )
    added = {n: v for n, v in packages.items() if default.get(n) != v}
    return build_image(
        engine,
        settings,
        tag=tag,
        lock=lock,
        force=force,
        log=log,
        labels={
            LABEL_ADDED: listing(added, "=="),
            "org.opencontainers.image.title": "experiment-runner user sandbox",
        },
    )


def download_wheels(
    lock: Path, dest: Path, *, index_url: str = DEFAULT_INDEX_URL, log: _Log = print
) -> Path:
    """Fetch the locked wheels for the image's Python with the host's pip, checking every hash.

    The lock is read first (``read_lock``: hashed exact pins and nothing else);
    pip is given a copy written from its entries, wheels only, from ``index_url``
    alone, and never the file itself.
    """
    entries = read_lock(lock)
    dest = dest.absolute()
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading locked wheels into {dest}")
    with tempfile.TemporaryDirectory(prefix="runner-download-") as tmp:
        copy = Path(tmp) / "requirements.lock"
        copy.write_text(lock_text(entries))
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--require-hashes", "--index-url", index_url, *_PLATFORM_ARGS,
               "-d", str(dest), "-r", str(copy)]  # fmt: skip
        result = run_tool(cmd, Path(tmp), log=log)
    if result.returncode != 0:
        raise ExperimentExecutionError(
            f"Downloading the locked wheels failed:\n{result.stderr[-3000:]}",
            hint=f"every package needs a wheel for CPython {PYTHON_VERSION} on manylinux "
            "x86_64; the host needs pip and access to the configured index (RUNNER_INDEX_URL, "
            "default PyPI), or a pip cache holding the wheels.",
        )
    return dest


def ensure_base(engine: DockerEngine, settings: ExperimentDefaults, *, log: _Log = print) -> str:
    """The base image ID: pulled by digest where asked, else built with debootstrap."""
    if settings.base_image_digest:
        ref = settings.base_image_digest
        if not _DIGEST_REF.match(ref):
            raise ExperimentExecutionError(
                f"RUNNER_BASE_IMAGE_DIGEST must pin a digest (name@sha256:...), not {ref!r}.",
                hint="a tag can move; only a digest makes the base reproducible.",
            )
        log(f"pulling base {ref}")
        return engine.pull(ref)
    if engine.image_exists(DEFAULT_BASE_IMAGE):
        return engine.image_id(DEFAULT_BASE_IMAGE)
    return build_base(engine, settings, log=log)


def build_base(engine: DockerEngine, settings: ExperimentDefaults, *, log: _Log = print) -> str:
    """Debootstrap a minimal Debian with python3 and import it as the base image."""
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise ExperimentExecutionError(
            "Building the base image needs debootstrap, run as root.",
            hint="as root: apt-get install -y debootstrap (scripts/setup.sh does it), or set "
            "RUNNER_BASE_IMAGE_DIGEST to a python:3.11 image pinned by digest where a "
            "registry is reachable.",
        )
    work = settings.cache_dir / "base"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrapping Debian {DEBIAN_SUITE} with python3 (about a minute)")
        _command(["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
              DEBIAN_SUITE, str(rootfs), settings.debian_mirror])  # fmt: skip
        version_code = "import platform; print(platform.python_version())"
        python_version = _command(["chroot", str(rootfs), "python3", "-c", version_code]).strip()
        _trim_rootfs(rootfs)
        tarball = Path(tmp) / "rootfs.tar"
        _command(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."])
        repository, tag = DEFAULT_BASE_IMAGE.rsplit(":", 1)
        log(f"importing {DEFAULT_BASE_IMAGE} (python {python_version})")
        return engine.import_tarball(
            tarball,
            repository,
            tag,
            changes=[
                "ENV LANG=C.UTF-8",
                f"LABEL {LABEL_PYTHON}={python_version}",
                f"LABEL io.experiment-runner.debian-suite={DEBIAN_SUITE}",
            ],
        )


def _trim_rootfs(rootfs: Path) -> None:
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf"):  # fmt: skip
        target = rootfs / sub
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    # Defence in depth: no setuid or setgid programs in the sandbox at all.
    _command(["find", str(rootfs), "-xdev", "-type", "f", "-perm", "/6000",
          "-exec", "chmod", "ug-s", "{}", "+"])  # fmt: skip


def _command(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExperimentExecutionError(
            f"{cmd[0]} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}",
            hint="read the output above; debootstrap needs access to the Debian mirror.",
        )
    return result.stdout
