"""Images checked, not trusted.

``verify_image`` checks an image against what it records, from inside a sandbox;
``rebuild_and_compare`` rebuilds it from its locks in a scratch place and compares
the IDs (and, when they differ, the files); ``save_image``/``load_image`` move an
image between engines with its ID checked against the lock.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.image.debian_lock import read_extra_lock
from runner.image.definition import (
    LABEL_DEBIAN,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LOCK_IN_IMAGE,
    lock_digest,
)
from runner.image.layers import archive_layers, image_entries, image_id
from runner.image.listing import IMAGE_LISTING, parse_listing, run_listing
from runner.image.python_lock import locked_packages, normalize
from runner.sandbox.engine import DockerEngine


@dataclass
class Verification:
    """What ``verify_image`` compared: each check's name, and what did not match."""

    image: str
    image_id: str
    checks: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(problem is None for _, problem in self.checks)

    def add(self, what: str, problem: str | None) -> None:
        self.checks.append((what, problem))


def verify_image(engine: DockerEngine, image: str, lock: Path | None = None) -> Verification:
    """Check ``image`` against its labels (and ``lock``) from inside a sandboxed container.

    Compares the Python packages installed with the recorded package list (and
    the lock's), every installed file with its wheel's RECORD hash, the lock kept
    in the image with the recorded digest, and the Debian packages with their
    recorded list.
    """
    data = engine.image_inspect(image)
    labels: Mapping[str, str] = data["Config"].get("Labels") or {}
    report = Verification(image, str(data["Id"]))
    seen = json.loads(run_listing(engine, str(data["Id"]), IMAGE_LISTING).strip().splitlines()[-1])
    installed = {normalize(name): version for name, version in seen["packages"].items()}
    recorded_lock = labels.get(LABEL_LOCK)

    def against_label(label: str, sep: str, seen_packages: Mapping[str, str]) -> str | None:
        if label not in labels:
            return "the image records no such list (built before it was recorded: rebuild it)"
        return _difference(parse_listing(labels[label], sep), seen_packages)

    report.add("python packages = recorded list", against_label(LABEL_PACKAGES, "==", installed))
    if lock is not None:
        report.add(f"python packages = {lock}", _difference(locked_packages(lock), installed))
        digest = lock_digest(lock)
        report.add(
            f"recorded lock digest = sha256 of {lock}",
            None if recorded_lock == digest else f"recorded {recorded_lock}, file {digest}",
        )
    altered = seen["altered"]
    report.add(
        "installed files = their wheels' hashes",
        f"{len(altered)} differ: {', '.join(altered[:5])}" if altered else None,
    )
    in_image = seen["lock"]
    report.add(
        f"lock in the image ({LOCK_IN_IMAGE}) = recorded digest",
        None
        if in_image and in_image == recorded_lock
        else f"recorded {recorded_lock}, image holds {in_image or 'no lock'}",
    )
    debian = parse_listing(seen["debian"], "=")
    report.add("debian packages = recorded list", against_label(LABEL_DEBIAN, "=", debian))
    return report


def _difference(expected: Mapping[str, str], seen: Mapping[str, str]) -> str | None:
    """None when equal, else what is missing, extra or at another version."""
    problems = [
        *(f"{n} {v} missing" for n, v in sorted(expected.items()) if n not in seen),
        *(f"{n} {v} not recorded" for n, v in sorted(seen.items()) if n not in expected),
        *(f"{n} {seen[n]} instead of {v}" for n, v in sorted(expected.items())
          if n in seen and seen[n] != v),
    ]  # fmt: skip
    return "; ".join(problems) if problems else None


@dataclass
class Rebuild:
    """What ``rebuild_and_compare`` found: both IDs and, when they differ, the files."""

    image: str
    image_id: str
    rebuilt_id: str
    differing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.image_id == self.rebuilt_id


def rebuild_and_compare(
    engine: DockerEngine,
    image: str,
    *,
    lock: Path | None = None,
    settings: ExperimentDefaults | None = None,
    log: Callable[[str], None] = print,
) -> Rebuild:
    """Rebuild ``image`` from its locks with a scratch cache and tag; compare the IDs.

    ``lock`` (default: the shipped one) and, beside it, its ``.debian`` file are
    what it is rebuilt from. Where the IDs differ, both images are saved and their
    layers compared file by file: the differing paths are listed.
    """
    from runner.image.build import build_image, user_labels  # the build sits above this

    settings = settings or ExperimentDefaults()
    original = engine.image_id(image)
    extra_lock = lock.with_name(lock.name + ".debian") if lock is not None else None
    extra = read_extra_lock(extra_lock) if extra_lock is not None and extra_lock.is_file() else []
    scratch_tag = f"experiment-runner-verify/rebuild:{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="runner-rebuild-", dir=settings.cache_dir) as tmp:
        work = Path(tmp)
        # A cache of its own: nothing from earlier builds (layers, wheels, .debs) is reused.
        scratch_base = f"experiment-runner-verify/base:{uuid.uuid4().hex[:12]}"
        scratch = settings.model_copy(
            update={"cache_dir": work / "cache", "base_image": scratch_base}
        )
        rebuilt_archive = work / "rebuilt.tar"
        try:
            built = build_image(
                engine, scratch, tag=scratch_tag, lock=lock, debian=extra, force=True,
                log=log, expected_id=original, archive=rebuilt_archive, check_expected=False,
                labels=user_labels(lock) if lock is not None else None,
            )  # fmt: skip
            result = Rebuild(image, original, built.image_id)
            if not result.ok:
                saved = work / "original.tar"
                engine.save_image(original, saved)
                before, after = image_entries(saved), image_entries(rebuilt_archive)
                result.differing = sorted(
                    name for name in before.keys() | after.keys()
                    if before.get(name) != after.get(name)
                )  # fmt: skip
        finally:
            # Only untags where the ID is another tag's too (the original's, the base's).
            engine.remove_image(scratch_tag)
            engine.remove_image(scratch_base)
    return result


def save_image(engine: DockerEngine, image: str, dest: Path) -> str:
    """Write ``image`` as an archive for ``load_image``; its ID."""
    engine.save_image(image, dest)
    return engine.image_id(image)


def load_image(engine: DockerEngine, archive: Path, *, expected_id: str | None) -> str:
    """Load an archive, its image ID checked against ``expected_id`` before and after."""
    config, _ = archive_layers(archive)
    ident = image_id(config)
    if expected_id is not None and ident != expected_id:
        raise ExperimentExecutionError(
            f"{archive} holds image {ident}, the lock records {expected_id}.",
            hint="it was built from other locks (or altered); rebuild with `runner image build`.",
        )
    engine.load_image(archive)
    if not engine.image_exists(ident):
        raise ExperimentExecutionError(
            f"The engine did not store {ident} from {archive}.",
            hint="an engine that rewrites loaded images cannot keep a reproducible ID.",
        )
    return ident
