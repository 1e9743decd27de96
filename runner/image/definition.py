"""What the sandbox image is made of and records: where its definition is (in the
installed package, or the checkout), the files that shape it, and its labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError


def image_dir() -> Path:
    """The sandbox image definition: inside the installed package, else the checkout's.

    A wheel carries it as ``runner/images/sandbox``; a checkout (and an editable
    install of one) keeps it at ``images/sandbox``.
    """
    package = Path(__file__).resolve().parents[1]  # runner/
    candidates = (package / "images" / "sandbox", package.parent / "images" / "sandbox")
    for candidate in candidates:
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise ExperimentExecutionError(
        f"The image definition was not found at {candidates[0]}.",
        hint="reinstall experiment-runner; its wheel ships runner/images/sandbox.",
    )


LABEL_LOCK = "io.experiment-runner.lock-sha256"


LABEL_DEFINITION = "io.experiment-runner.definition-sha256"


LABEL_PACKAGES = "io.experiment-runner.packages"


LABEL_PYTHON = "io.experiment-runner.python"


LABEL_BASE = "io.experiment-runner.base"


#: Every Debian package of the image, ``name=version``, listed from the base by dpkg-query.
LABEL_DEBIAN = "io.experiment-runner.debian-packages"


#: A user image's packages that the default image lacks (or has at another version).
LABEL_ADDED = "io.experiment-runner.added-packages"


#: Where the image keeps the lock it was installed from.
LOCK_IN_IMAGE = "/usr/share/experiment-runner/requirements.lock"


DEBIAN_SUITE = "bookworm"


def lock_digest(lock: Path) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


#: Everything in the image definition that shapes the image.
DEFINITION_FILES = (
    "Dockerfile",
    "requirements.lock",
    "_experiment_runner_streams.py",
    "experiment-runner-streams.pth",
)


def definition_digest(source: Path, lock: Path | None = None) -> str:
    """Digest of everything that shapes the image: the Dockerfile, the lock and site files.

    ``lock`` stands in for the definition's own ``requirements.lock`` (a user image).
    """
    digest = hashlib.sha256()
    for name in DEFINITION_FILES:
        path = lock if lock is not None and name == "requirements.lock" else source / name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
