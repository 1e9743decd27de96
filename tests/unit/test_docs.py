"""The docs keep up with the code: every setting and option is documented, the README
stays a front page."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.options import RunnerOptions
from runner.core.settings import ExperimentDefaults

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(ExperimentDefaults.model_fields))
def test_every_setting_is_on_the_configuration_page(field: str) -> None:
    """Each RUNNER_* variable ExperimentDefaults reads has a row on the configuration page."""
    assert f"| `RUNNER_{field.upper()}` |" in CONFIGURATION


@pytest.mark.parametrize("field", sorted(RunnerOptions.model_fields))
def test_every_runner_option_is_on_the_configuration_page(field: str) -> None:
    """Each field of RunnerOptions has a row in the configuration page's RunnerOptions table."""
    assert f"| `{field}` |" in CONFIGURATION


def test_the_readme_is_a_front_page() -> None:
    """The README stays short; the rest of what there is to say lives in docs/."""
    assert len(README.splitlines()) <= 250


def test_the_readme_keeps_the_two_commands() -> None:
    """The README's two commands are the ones CI's entry point runs (.ci/run, scripts/setup.sh)."""
    assert "bash scripts/setup.sh demo" in README
    assert "bash scripts/setup.sh test" in README
    assert "bash scripts/setup.sh test" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_lead_to_files() -> None:
    """Every relative link of the README names a file of the checkout."""
    targets = [part.split(")")[0] for part in README.split("](")[1:]]
    relative = [t.split("#")[0] for t in targets if not t.startswith(("http:", "https:", "#"))]
    assert relative
    missing = [t for t in relative if not (ROOT / t).is_file()]
    assert not missing
