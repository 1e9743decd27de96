"""scikit-learn's own gallery examples run in the sandbox, and their figures come back."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import run_once

GALLERY = Path(__file__).parent.parent / "data" / "gallery"
EXAMPLES = sorted(GALLERY.glob("*.py"))
#: Runs an example as `python example.py` would, then saves its figures as outputs.
SAVE_FIGURES = """\
import os, runpy, sys
import matplotlib.pyplot as plt
runpy.run_path(sys.argv[1], run_name="__main__")
for number in plt.get_fignums():
    plt.figure(number).savefig(os.path.join(os.environ["OUTPUT_DIR"], f"figure-{number}.png"))
"""


def test_the_vendored_sample_is_there() -> None:
    """The sample holds the nine examples and their licence."""
    assert len(EXAMPLES) == 9
    assert (GALLERY / "COPYING").read_text().startswith("BSD 3-Clause License")


@run_once
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_a_gallery_example_runs_in_the_sandbox(
    engine: DockerEngine, example: Path, workdir: Path, tmp_path: Path
) -> None:
    """The example exits 0 with matplotlib headless, and its figures come back as PNG files."""
    for name, text in ((example.name, example.read_text()), ("save_figures.py", SAVE_FIGURES)):
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o644)
    runner = ExperimentRunner(timeout=120, engine=engine, outputs_dir=tmp_path / "out")
    raw = runner.run_script_directly(workdir / "save_figures.py", args=[example.name])
    assert raw["returncode"] == 0, raw["stderr"][-2000:]
    figures = [a for a in raw["artifacts"] if a.name.startswith("figure-")]
    assert figures, raw["artifacts_message"]
    assert all(Path(a.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for a in figures)
