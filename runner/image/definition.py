"""Where the sandbox image's definition is: in the installed package, or the checkout."""

from __future__ import annotations

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
