"""A recorded image, had again: there already, or rebuilt from its lock and checked.

``runner replay`` runs a result in the image that ran it. When that image ID is
not on the engine, ``rebuild_recorded_image`` builds one from the lock the
result names and accepts it only if it has the very same ID: an image that
merely has the same packages is not the image that ran.
"""

from __future__ import annotations

from collections.abc import Callable

from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.image.build import build_image
from runner.image.definition import image_dir, lock_digest
from runner.sandbox.engine import DockerEngine

#: The tag a rebuild for a replay gets (never the pinned image's own tag).
REPLAY_TAG = "experiment-runner/replay"


def rebuild_recorded_image(
    engine: DockerEngine,
    image_id: str,
    lock_sha256: str | None,
    settings: ExperimentDefaults | None = None,
    *,
    log: Callable[[str], None] = print,
) -> str:
    """``image_id`` on ``engine``: found, or rebuilt from the shipped lock when that lock is
    the one the image was built from (``lock_sha256``), and refused unless the rebuild's
    ID is ``image_id``. Raises ``ExperimentExecutionError`` saying which, and what to do."""
    if engine.image_exists(image_id):
        return image_id
    lock = image_dir() / "requirements.lock"
    if lock_sha256 is None or lock_digest(lock) != lock_sha256:
        raise ExperimentExecutionError(
            f"The image {image_id[:19]} that ran this result is not on the engine, and this "
            "runner's lock is not the one it was built from, so it cannot be rebuilt here.",
            hint="load the image (docker load) or replay where it is.",
        )
    log(f"{image_id[:19]} is not on the engine: rebuilding it from {lock}")
    built = build_image(
        engine, settings, tag=f"{REPLAY_TAG}:{image_id.removeprefix('sha256:')[:12]}", log=log
    )
    if built.image_id != image_id:
        raise ExperimentExecutionError(
            f"Rebuilt from the same lock, the image has another ID ({built.image_id[:19]}, "
            f"not {image_id[:19]}): replaying in it would not be replaying what ran.",
            hint="load the original image (docker load) or replay where it is; the rebuild "
            f"stays tagged {built.tag}.",
        )
    return image_id
