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

import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_IMAGE,
    DEFAULT_INDEX_URL,
    ExperimentDefaults,
)
from runner.image import recipe
from runner.image.debian_lock import (
    DEBIAN_LOCK,
    DebEntry,
    DebianLock,
    lock_debian,
    read_debian_lock,
    read_extra_lock,
    resolve_extra,
    valid_package_name,
    write_extra_lock,
)
from runner.image.definition import (
    DEBIAN_SUITE,
    IMAGE_ID,
    LABEL_ADDED,
    LABEL_BASE,
    LABEL_DEBIAN,
    LABEL_DEBIAN_ADDED,
    LABEL_DEBIAN_LOCK,
    LABEL_DEFINITION,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LABEL_PYTHON,
    SITE_FILES,
    image_dir,
    lock_digest,
    recorded_image_id,
)
from runner.image.imports import check_imports
from runner.image.layers import Layer, image_config, image_id, write_archive
from runner.image.listing import listing
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

__all__ = ["BuiltImage", "build_image", "build_user_image", "lock_image"]


_Log = Callable[[str], None]


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
    debian: Sequence[DebEntry] = (),
    force: bool = False,
    log: _Log = print,
    labels: Mapping[str, str] | None = None,
    expected_id: str | None = None,
    archive: Path | None = None,
    check_expected: bool = True,
) -> BuiltImage:
    """Build an image from ``lock`` (default: the shipped one); reuse an identical build.

    Everything that can fail before the build does: the locks are checked and
    every wheel and ``.deb`` downloaded (hashes checked) first. The image is
    assembled layer by layer (``runner.image.recipe``) and loaded as an archive,
    so the same locks give the same image ID on any engine. ``expected_id``
    (default: the ID the shipped lock records, for the shipped lock) must be
    what comes out, else the build fails naming both. ``archive`` keeps the
    image archive (else it goes with the scratch directory).
    """
    settings = settings or ExperimentDefaults()
    tag = tag or settings.image
    source = image_dir()
    shipped = lock is None
    lock = lock or source / "requirements.lock"
    packages = check_lock(lock)
    base_lock = read_debian_lock(source / DEBIAN_LOCK)
    digest = lock_digest(lock)
    extra = list(debian)
    extra_names = [entry.package for entry in extra]
    definition = recipe.definition_digest(source, lock, extra=[entry.line() for entry in extra])
    if expected_id is None and shipped:
        expected_id = recorded_image_id(source / IMAGE_ID)
    if not force and archive is None and engine.image_exists(tag):
        current = engine.image_inspect(tag)
        if (current["Config"].get("Labels") or {}).get(LABEL_DEFINITION) == definition:
            log(f"{tag} is up to date with {lock}")
            return BuiltImage(tag, str(current["Id"]), packages, reused=True, lock=lock)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = download_wheels(
        lock, settings.cache_dir / "wheels" / digest[:16], index_url=settings.index_url, log=log
    )
    epoch = base_lock.source_date_epoch
    base = recipe.base_layer(base_lock, settings.debian_mirror, settings.cache_dir, log=log)
    base_id = _ensure_base(engine, settings, base, base_lock)
    with tempfile.TemporaryDirectory(prefix="runner-build-", dir=settings.cache_dir) as tmp:
        work = Path(tmp)
        layers = [base]
        if extra:
            unpacked = " ".join(f"{e.package}={e.version}" for e in extra)
            log(f"unpacking {unpacked} (dpkg-deb -x: no maintainer script runs)")
            layers.append(
                recipe.extra_layer(
                    extra, settings.debian_mirror, settings.cache_dir, work, epoch, log=log
                )
            )
        site = [source / name for name in SITE_FILES]
        venv, python, dpkg = recipe.venv_layer(
            engine, base_id, lock, wheels, site, work, epoch, log=log
        )
        layers.append(venv)
        config = image_config(
            layers,
            epoch=epoch,
            env=recipe.ENV,
            user=recipe.USER,
            workdir=recipe.WORKDIR,
            cmd=recipe.CMD,
            labels={
                LABEL_LOCK: digest,
                LABEL_DEFINITION: definition,
                LABEL_PACKAGES: listing(packages, "=="),
                LABEL_DEBIAN: " ".join(sorted(dpkg.split())),
                LABEL_PYTHON: python,
                LABEL_BASE: base_id,
                LABEL_DEBIAN_LOCK: lock_digest(source / DEBIAN_LOCK),
                "org.opencontainers.image.title": "experiment-runner scikit-learn sandbox",
                **({LABEL_DEBIAN_ADDED: " ".join(e.line() for e in extra)} if extra else {}),
                **(labels or {}),
            },
            history=[
                f"debian {base_lock.suite}: {len(base_lock.entries)} locked packages",
                *(["dpkg-deb -x: " + " ".join(extra_names)] if extra else []),
                f"/opt/venv from {lock.name} (sha256 {digest[:12]})",
            ],
        )
        built_id = image_id(config)
        if check_expected and expected_id is not None and built_id != expected_id:
            raise ExperimentExecutionError(
                f"Building {tag} gave image {built_id}, the lock records {expected_id}.",
                hint="the build did not reproduce: `runner image verify --rebuild` names the "
                "files that differ; after a deliberate change, `runner image lock` records "
                "the new ID.",
            )
        target = archive or work / "image.tar"
        write_archive(target, config, layers, tag)
        log(f"loading {tag} ({built_id[:19]})")
        engine.load_image(target)
    loaded = engine.image_id(tag)
    if loaded != built_id:
        raise ExperimentExecutionError(
            f"The engine stored {tag} as {loaded}, not {built_id}.",
            hint="an engine that rewrites loaded images cannot keep a reproducible ID.",
        )
    return BuiltImage(tag, built_id, packages, reused=False, lock=lock)


def _ensure_base(
    engine: DockerEngine, settings: ExperimentDefaults, base: Layer, lock: DebianLock
) -> str:
    """The base image (its one layer) on the engine, loaded when missing; its ID."""
    config = image_config(
        [base],
        epoch=lock.source_date_epoch,
        env=recipe.BASE_ENV,
        cmd=("python3",),
        labels={
            LABEL_DEBIAN_LOCK: hashlib.sha256(lock.text().encode()).hexdigest(),
            "io.experiment-runner.debian-suite": lock.suite,
        },
        history=[f"debian {lock.suite}: {len(lock.entries)} locked packages"],
    )
    base_id = image_id(config)
    if not (engine.image_exists(base_id) and engine.image_exists(settings.base_image)
            and engine.image_id(settings.base_image) == base_id):  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="runner-base-", dir=settings.cache_dir) as tmp:
            archive = Path(tmp) / "base.tar"
            write_archive(archive, config, [base], settings.base_image)
            engine.load_image(archive)
    return base_id


def build_user_image(
    engine: DockerEngine,
    tag: str,
    *,
    requirements: Path | None = None,
    lock: Path | None = None,
    debian: Sequence[str] = (),
    settings: ExperimentDefaults | None = None,
    force: bool = False,
    log: _Log = print,
) -> BuiltImage:
    """Build ``tag``: the default image's packages plus the user's, pinned and hash-locked.

    ``debian`` names Debian packages to add (with what they need beyond the base):
    resolved against the mirror into ``<lock>.debian`` (package, version, SHA-256 of
    each file) beside the lock, and unpacked into a layer of their own, no maintainer
    script run. A build from ``lock`` alone takes that file when it is there. The
    image's ID is recorded in ``<lock>.image-id`` at the first build, and every later
    build from the same locks must give it. After the build each top-level module
    of the image's packages is imported in a sandbox (``check_imports``).

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
    extra_lock = lock.with_name(lock.name + ".debian")
    if debian:
        for name in debian:  # before anything runs
            if not valid_package_name(name):
                raise ExperimentExecutionError(
                    f"{name[:100]!r} is not a Debian package name.",
                    hint="--debian takes package names only (libgomp1, libgl1, ...).",
                )
        base = read_debian_lock(image_dir() / DEBIAN_LOCK)
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        # apt resolves against what the base has installed: its own dpkg status file.
        layer = recipe.base_layer(base, settings.debian_mirror, settings.cache_dir, log=log)
        entries = resolve_extra(
            list(debian), base, settings.debian_mirror, settings.cache_dir,
            status=recipe.dpkg_status(layer), log=log,
        )  # fmt: skip
        write_extra_lock(extra_lock, list(debian), entries)
    packages = check_lock(lock)
    extra = read_extra_lock(extra_lock) if extra_lock.is_file() else []
    default = locked_packages(default_lock)
    moved = {n: v for n, v in default.items() if packages.get(n) != v}
    if moved:
        raise ExperimentExecutionError(
            f"{lock} does not keep the default image's pins: "
            + ", ".join(f"{n}=={v} (lock: {packages.get(n, 'missing')})" for n, v in moved.items()),
            hint="lock again with `runner image build --requirements FILE --tag NAME`.",
        )
    added = added_packages(lock)
    id_file = lock.with_name(lock.name + ".image-id")
    built = build_image(
        engine,
        settings,
        tag=tag,
        lock=lock,
        debian=extra,
        force=force,
        log=log,
        labels=user_labels(lock),
        # A lock made again (or new Debian packages) may differ; a lock as it is may not.
        expected_id=recorded_image_id(id_file) if requirements is None and not debian else None,
    )
    check_imports(engine, built.tag, added, log=log)
    if not built.reused:
        id_file.write_text(built.image_id + "\n")
    return built


def added_packages(lock: Path) -> dict[str, str]:
    """A user lock's packages that the default lock lacks or has at another version."""
    default = locked_packages(image_dir() / "requirements.lock")
    return {n: v for n, v in locked_packages(lock).items() if default.get(n) != v}


def user_labels(lock: Path) -> dict[str, str]:
    """The labels a user image adds to the recipe's: part of its config, so of its ID."""
    return {
        LABEL_ADDED: listing(added_packages(lock), "=="),
        "org.opencontainers.image.title": "experiment-runner user sandbox",
    }


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


def lock_image(
    engine: DockerEngine,
    settings: ExperimentDefaults | None = None,
    *,
    log: _Log = print,
    source_date_epoch: int | None = None,
) -> BuiltImage:
    """Re-lock the pinned image: its Python lock (uv), its Debian lock (mmdebstrap), its ID.

    The Python lock keeps the versions it has where ``requirements.in`` allows;
    the Debian lock is resolved against ``RUNNER_DEBIAN_MIRROR`` afresh and dated
    today (its ``SOURCE_DATE_EPOCH``); then the image is built from both and its
    ID recorded in ``image-id``, which every later build must reproduce.
    """
    settings = settings or ExperimentDefaults()
    source = image_dir()
    compile_lock(
        [source / "requirements.in"],
        source / "requirements.lock",
        index_url=settings.index_url,
        log=log,
    )
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    epoch = (
        source_date_epoch if source_date_epoch is not None else int(time.time()) // 86400 * 86400
    )
    lock_debian(
        DEBIAN_SUITE,
        settings.debian_mirror,
        source / DEBIAN_LOCK,
        source_date_epoch=epoch,
        work=settings.cache_dir,
        log=log,
    )
    built = build_image(engine, settings, force=True, log=log, expected_id=None)
    (source / IMAGE_ID).write_text(built.image_id + "\n")
    log(f"{source / IMAGE_ID}: {built.image_id}")
    return built
