"""The pinned image holds exactly the locked packages and runs as a non-root user."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from docker.types import Ulimit
from testcontainers.core.container import DockerContainer

from runner import ExperimentExecutionError, ExperimentRunner
from runner.core.settings import ExperimentDefaults
from runner.image.build import BuiltImage, build_user_image
from runner.image.definition import LABEL_ADDED, LABEL_LOCK, LABEL_PACKAGES, image_dir, lock_digest
from runner.image.python_lock import check_lock, locked_packages
from runner.image.verify import rebuild_and_compare, verify_image
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import SPEC, run_once

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


def test_the_default_image_verifies_against_the_shipped_lock(engine: DockerEngine) -> None:
    """Packages, installed files, the kept lock and Debian packages all match the records."""
    report = verify_image(engine, ExperimentDefaults().image, image_dir() / "requirements.lock")
    assert report.ok, report.checks


def test_matplotlib_plots_headless_in_the_sandbox(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """pyplot draws with Agg and saves into /tmp, with a read-only root and no display."""
    script = write_script("""\
        import json, os
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3])
        plt.savefig("/tmp/plot.png")
        size = os.path.getsize("/tmp/plot.png")
        print(json.dumps({"success": True, "metrics": {"bytes": size}}))
        import matplotlib
        print(matplotlib.get_backend(), matplotlib.get_cachedir())
    """)
    result = runner.run(script, SPEC, 0)
    assert result.success, result.stderr
    assert result.metrics["bytes"] > 1000
    assert "agg /tmp/matplotlib" in result.stdout.lower()
    assert "is not a writable directory" not in result.stderr


# User images: the default packages plus the user's, locked by uv, built offline.
EXTRA = "tabulate==0.9.0"
IMPORTS_IT = """\
import json
from tabulate import tabulate
import sklearn, matplotlib.pyplot
print(tabulate([[sklearn.__version__]]))
print(json.dumps({"success": True, "metrics": {"ok": 1}}))
"""


@pytest.fixture(scope="module")
def user_image(
    engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltImage]:
    """A user image with one small pure-Python package, removed after the module."""
    directory = tmp_path_factory.mktemp("user-image")
    requirements = directory / "requirements.txt"
    requirements.write_text(EXTRA + "\n")
    tag = f"experiment-runner-test/user:{uuid.uuid4().hex[:12]}"
    built = build_user_image(engine, tag, requirements=requirements, log=lambda m: None)
    try:
        yield built
    finally:
        engine.remove_image(tag)


@run_once
def test_user_image_is_locked_with_hashes_and_labelled(
    engine: DockerEngine, user_image: BuiltImage
) -> None:
    """The lock pins the extra package and every default one with hashes; labels record it."""
    assert user_image.lock is not None
    locked = check_lock(user_image.lock)
    default = locked_packages(image_dir() / "requirements.lock")
    assert locked == {**default, "tabulate": "0.9.0"}
    labels = engine.image_inspect(user_image.tag)["Config"]["Labels"]
    assert labels[LABEL_ADDED] == EXTRA
    assert labels[LABEL_LOCK] == lock_digest(user_image.lock)
    assert EXTRA in labels[LABEL_PACKAGES].split()


@run_once
def test_a_script_importing_the_extra_package_runs_in_the_user_image(
    engine: DockerEngine, user_image: BuiltImage, write_script: Callable[..., Path]
) -> None:
    """`ExperimentRunner(image=NAME)` runs a script that imports the user's package."""
    runner = ExperimentRunner(timeout=60, image=user_image.tag, engine=engine)
    result = runner.run(write_script(IMPORTS_IT), SPEC, 0)
    assert result.success, result.stderr
    assert "1.9.1" in result.stdout
    assert result.image_id == user_image.image_id


@run_once
def test_the_user_image_verifies_against_its_lock(
    engine: DockerEngine, user_image: BuiltImage
) -> None:
    """`verify_image` finds the packages, files, kept lock and Debian packages as recorded."""
    report = verify_image(engine, user_image.tag, lock=user_image.lock)
    assert report.ok, report.checks


@run_once
def test_rebuilding_from_the_same_lock_gives_the_same_image(
    engine: DockerEngine, user_image: BuiltImage
) -> None:
    """A rebuild from the lock alone, with an empty cache and a scratch tag, gives the same
    image ID (`runner image verify --rebuild`), the one recorded beside the lock."""
    assert user_image.lock is not None
    rebuilt = rebuild_and_compare(engine, user_image.tag, lock=user_image.lock, log=lambda m: None)
    assert rebuilt.ok, rebuilt.differing[:20]
    assert rebuilt.rebuilt_id == user_image.image_id
    recorded = user_image.lock.with_name(user_image.lock.name + ".image-id").read_text()
    assert recorded.strip() == user_image.image_id
    assert not [t for t in engine.image_inspect(user_image.image_id)["RepoTags"] if "verify" in t]


@run_once
@pytest.mark.parametrize(
    ("requirement", "says"),
    [
        ("experiment-runner-no-such-package-zq9", "was not found in the package registry"),
        ("pywin32", "has no wheels with a matching platform tag"),
    ],
)
def test_a_package_that_cannot_be_installed_fails_before_building(
    engine: DockerEngine, tmp_path: Path, requirement: str, says: str
) -> None:
    """A package that does not exist, or has no wheel for the image's Python: no build at all."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(requirement + "\n")
    tag = f"experiment-runner-test/user:{uuid.uuid4().hex[:12]}"
    with pytest.raises(ExperimentExecutionError) as info:
        build_user_image(engine, tag, requirements=requirements, log=lambda m: None)
    assert says in str(info.value)
    assert "wheel for CPython 3.11" in str(info.value.hint)
    assert not engine.image_exists(tag)
    assert not (tmp_path / "requirements.lock").exists()
