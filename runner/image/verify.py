"""``verify_image``: an image checked against what it records, from inside a sandbox."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.image.definition import (
    LABEL_DEBIAN,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LOCK_IN_IMAGE,
    lock_digest,
)
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
