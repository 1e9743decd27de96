"""The pinned image holds exactly the locked packages and runs as a non-root user."""

from __future__ import annotations

import json

from docker.types import Ulimit
from testcontainers.core.container import DockerContainer

from runner.engine import DockerEngine
from runner.image import LABEL_LOCK, LABEL_PACKAGES, image_dir, lock_digest, locked_packages
from runner.settings import ExperimentDefaults

INSPECT = (
    "import json, os, importlib.metadata as m, platform; "
    "packages = {d.metadata['Name'].lower(): d.version for d in m.distributions()}; "
    "print(json.dumps({'packages': packages, 'uid': os.getuid(), "
    "'python': platform.python_version()}))"
)


def run_in_image(command: list[str], user: str | None = None) -> str:
    """Run a one-off command in the image with testcontainers, offline, and return stdout."""
    container = DockerContainer(ExperimentDefaults().image).with_command(command)
    # Podman's default open-files and process limits are more than its service may grant.
    limits = [Ulimit(name=name, soft=1024, hard=1024) for name in ("nofile", "nproc")]
    container.with_kwargs(network_mode="none", ulimits=limits, **({"user": user} if user else {}))
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        assert wrapped.wait(timeout=60)["StatusCode"] == 0
        stdout, _ = container.get_logs()
        return stdout.decode()
    finally:
        container.stop()  # testcontainers kills and removes it


def test_image_holds_exactly_the_locked_packages() -> None:
    """Every installed distribution is in the lock at its exact version, and vice versa."""
    seen = json.loads(run_in_image(["python", "-c", INSPECT]))
    locked = locked_packages(image_dir() / "requirements.lock")
    assert seen["packages"] == {name.lower(): version for name, version in locked.items()}
    assert seen["uid"] == 10001
    assert seen["python"].startswith("3.11.")


def test_image_labels_record_the_lock(engine: DockerEngine) -> None:
    """The image's labels carry the lock file's digest and the package versions."""
    labels = engine.image_inspect(ExperimentDefaults().image)["Config"]["Labels"]
    lock = image_dir() / "requirements.lock"
    assert labels[LABEL_LOCK] == lock_digest(lock)
    assert "scikit-learn==1.9.1" in labels[LABEL_PACKAGES].split()


def test_image_has_no_setuid_programs() -> None:
    """No setuid or setgid file exists in the image."""
    # As root, so that no directory is left unsearched.
    found = run_in_image(["find", "/", "-xdev", "-type", "f", "-perm", "/6000"], user="0")
    assert found.strip() == ""
