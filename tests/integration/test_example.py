"""The examples run as written."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from runner.cli.demo import demo_data
from tests.integration.conftest import run_once

#: Tests what is built on the sandbox, not the engine or runtime: once, in the runc pass.
pytestmark = run_once

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "complete_example.py"


def test_complete_example_succeeds_on_a_real_csv(tmp_path: Path) -> None:
    """Generating and running the logistic baseline prints success and an accuracy."""
    with demo_data().open() as source, (tmp_path / "data.csv").open("w", newline="") as target:
        rows = list(csv.reader(source))
        rows[0] = ["target" if name == "churned" else name for name in rows[0]]
        csv.writer(target).writerows(rows)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "✓ Experiment succeeded in" in out.stdout, out.stdout
    assert "Accuracy: 0." in out.stdout
    generated = list((tmp_path / "experiments").glob("logistic_baseline-*/experiment.py"))
    assert len(generated) == 1


def test_arguments_example_passes_options_and_shows_a_hint(tmp_path: Path) -> None:
    """The argparse script succeeds with its options; the seaborn script fails with a hint."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "arguments_and_hints.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "with arguments: success=True metrics={'accuracy': 0." in out.stdout, out.stdout
    assert "No module named 'seaborn'\nHint: there is no module 'seaborn'" in out.stdout
