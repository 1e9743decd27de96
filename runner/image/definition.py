"""What the sandbox image is made of and records: where its definition is (in the
installed package, or the checkout), the files that shape it, and its labels."""

from __future__ import annotations

import hashlib
import re
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
        if (candidate / "requirements.lock").is_file():
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


#: The files the image's Python gets besides the lock's packages (its site directory).
SITE_FILES = ("_experiment_runner_streams.py", "experiment-runner-streams.pth")


#: Everything in the image definition that shapes the image (with the recipe's code).
DEFINITION_FILES = ("debian.lock", "requirements.lock", *SITE_FILES)


#: The image ID the shipped locks must produce, recorded by ``runner image lock``.
IMAGE_ID = "image-id"


#: The Debian lock's digest; and a user image's extra Debian packages (``--debian``).
LABEL_DEBIAN_LOCK = "io.experiment-runner.debian-lock-sha256"
LABEL_DEBIAN_ADDED = "io.experiment-runner.added-debian-packages"


def recorded_image_id(path: Path) -> str | None:
    """The ``sha256:...`` image ID recorded at ``path``; None when nothing is recorded."""
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", text):
        raise ExperimentExecutionError(
            f"{path} holds no image ID ({text[:80]!r}).",
            hint="record it again with `runner image lock`.",
        )
    return text
