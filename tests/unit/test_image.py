from pathlib import Path

import pytest

from runner import ExperimentDefaults, ExperimentExecutionError
from runner.image import (
    DEFINITION_FILES,
    definition_digest,
    ensure_base,
    image_dir,
    locked_packages,
)


def test_lock_lists_the_pinned_stack() -> None:
    """The lock pins scikit-learn, numpy, scipy, pandas and joblib at exact versions."""
    packages = locked_packages(image_dir() / "requirements.lock")
    assert packages["scikit-learn"] == "1.9.1"
    assert {"numpy", "scipy", "pandas", "joblib"} <= set(packages)


def test_every_lock_entry_carries_a_hash() -> None:
    """Each pinned package has a sha256, so pip can install with --require-hashes."""
    text = (image_dir() / "requirements.lock").read_text()
    entries = [line for line in text.splitlines() if "==" in line]
    assert len(entries) == text.count("--hash=sha256:")


def test_definition_digest_changes_with_the_dockerfile(tmp_path: Path) -> None:
    """A changed Dockerfile invalidates a previous build even with the same lock."""
    for name in DEFINITION_FILES:
        (tmp_path / name).write_text((image_dir() / name).read_text())
    before = definition_digest(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert definition_digest(tmp_path) != before


def test_base_by_tag_is_refused() -> None:
    """A base image must be pinned by digest; a moving tag is refused before any pull."""
    settings = ExperimentDefaults(base_image_digest="python:3.11-slim")
    with pytest.raises(ExperimentExecutionError, match="must pin a digest"):
        ensure_base(engine=None, settings=settings)  # type: ignore[arg-type]
