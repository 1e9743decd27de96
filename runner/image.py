"""Building the pinned sandbox image, with no network inside any container."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.engine import DockerEngine
from runner.exceptions import ExperimentExecutionError
from runner.settings import DEFAULT_BASE_IMAGE, ExperimentDefaults

LABEL_LOCK = "io.experiment-runner.lock-sha256"
LABEL_DEFINITION = "io.experiment-runner.definition-sha256"
LABEL_PACKAGES = "io.experiment-runner.packages"
LABEL_PYTHON = "io.experiment-runner.python"
LABEL_BASE = "io.experiment-runner.base"
DEBIAN_SUITE = "bookworm"
_Log = Callable[[str], None]
_DIGEST_REF = re.compile(r"^[\w./:-]+@sha256:[0-9a-f]{64}$")
_LOCK_LINE = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")
_PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
    "--python-version", "3.11",
    "--implementation", "cp",
]  # fmt: skip


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    packages: dict[str, str]
    reused: bool


def image_dir() -> Path:
    """The sandbox image definition (``images/sandbox`` of the checkout)."""
    candidate = Path(__file__).resolve().parent.parent / "images" / "sandbox"
    if not (candidate / "Dockerfile").is_file():
        raise ExperimentExecutionError(
            f"The image definition was not found at {candidate}.",
            hint="install the package from a checkout of the repository (pip install -e .).",
        )
    return candidate


def lock_digest(lock: Path) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


#: Everything in the image definition that shapes the image.
DEFINITION_FILES = (
    "Dockerfile",
    "requirements.lock",
    "_experiment_runner_streams.py",
    "experiment-runner-streams.pth",
)


def definition_digest(source: Path) -> str:
    """Digest of everything that shapes the image: the Dockerfile, the lock and site files."""
    digest = hashlib.sha256()
    for name in DEFINITION_FILES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    return digest.hexdigest()


def locked_packages(lock: Path) -> dict[str, str]:
    """``{name: version}`` of every package in the lock file."""
    packages: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = _LOCK_LINE.match(line.strip())
        if match:
            packages[match.group(1)] = match.group(2)
    return packages


def build_image(
    engine: DockerEngine,
    settings: ExperimentDefaults | None = None,
    *,
    tag: str | None = None,
    force: bool = False,
    log: _Log = print,
) -> BuiltImage:
    """Build the pinned image (and its base when missing); reuse an identical build."""
    settings = settings or ExperimentDefaults()
    tag = tag or settings.image
    source = image_dir()
    lock = source / "requirements.lock"
    digest = lock_digest(lock)
    definition = definition_digest(source)
    packages = locked_packages(lock)
    if not force and engine.image_exists(tag):
        labels = engine.image_inspect(tag)["Config"].get("Labels") or {}
        if labels.get(LABEL_DEFINITION) == definition:
            log(f"{tag} is up to date with {source}")
            return BuiltImage(tag, engine.image_id(tag), packages, reused=True)
    base_id = ensure_base(engine, settings, log=log)
    base_labels = engine.image_inspect(base_id)["Config"].get("Labels") or {}
    with tempfile.TemporaryDirectory(prefix="runner-build-") as tmp:
        context = Path(tmp)
        for name in DEFINITION_FILES:
            shutil.copy2(source / name, context / name)
        wheels = download_wheels(lock, settings.cache_dir / "wheels" / digest[:16], log=log)
        shutil.copytree(wheels, context / "wheels")
        log(f"building {tag} (network disabled during the build)")
        image_id = engine.build(
            context,
            tag,
            buildargs={"BASE_IMAGE": base_id},
            labels={
                LABEL_LOCK: digest,
                LABEL_DEFINITION: definition,
                LABEL_PACKAGES: " ".join(f"{n}=={v}" for n, v in sorted(packages.items())),
                LABEL_PYTHON: base_labels.get(LABEL_PYTHON, "unknown"),
                LABEL_BASE: base_id,
                "org.opencontainers.image.title": "experiment-runner scikit-learn sandbox",
            },
        )
    # The build stage and a replaced image are left untagged; they carry the base's label.
    engine.prune_dangling(LABEL_PYTHON)
    return BuiltImage(tag, image_id, packages, reused=False)


def download_wheels(lock: Path, dest: Path, *, log: _Log = print) -> Path:
    """Fetch the locked wheels with the host's pip, checking every hash."""
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading locked wheels into {dest}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--require-hashes", *_PLATFORM_ARGS,
           "-d", str(dest), "-r", str(lock)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExperimentExecutionError(
            f"Downloading the locked wheels failed:\n{result.stderr[-3000:]}",
            hint="the host needs pip and access to PyPI (or a pip cache holding the wheels).",
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
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
              DEBIAN_SUITE, str(rootfs), settings.debian_mirror])  # fmt: skip
        version_code = "import platform; print(platform.python_version())"
        python_version = _run(["chroot", str(rootfs), "python3", "-c", version_code]).strip()
        _trim_rootfs(rootfs)
        tarball = Path(tmp) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."])
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
    _run(["find", str(rootfs), "-xdev", "-type", "f", "-perm", "/6000",
          "-exec", "chmod", "ug-s", "{}", "+"])  # fmt: skip


def _run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExperimentExecutionError(
            f"{cmd[0]} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}",
            hint="read the output above; debootstrap needs access to the Debian mirror.",
        )
    return result.stdout
