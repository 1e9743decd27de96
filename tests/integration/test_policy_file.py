"""A repository's policy in its pyproject.toml, and the batch summary, as a user runs them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import TEST_ENGINE
from tests.integration.conftest import RUNTIME
from tests.integration.test_cli import runner_cli

#: The policy file and the summary are read and written on the caller's side, whatever the
#: engine: the first pass shows them.
run_once = pytest.mark.skipif(
    not (TEST_ENGINE == "local" and RUNTIME == "runc"),
    reason="the policy file and the summary work on the caller's side: first pass only",
)


def repository(tmp_path: Path, table: str) -> Path:
    """A repository with ``table`` in its pyproject.toml and a script below it."""
    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n\n[tool.experiment-runner]\n{table}'
    )
    for directory in (root, root / "experiments"):
        directory.chmod(0o755)
    return root


def script(root: Path, name: str, code: str) -> Path:
    path = root / "experiments" / name
    path.write_text(code)
    path.chmod(0o644)
    return path


@run_once
def test_timeout_in_pyproject_is_the_deadline_of_runner_run(tmp_path: Path) -> None:
    """`timeout = 5` in the repository's pyproject.toml kills a sleeping script at 5 s."""
    root = repository(tmp_path, "timeout = 5\n")
    sleeper = script(root, "sleeper.py", "import time\ntime.sleep(60)\n")
    started = time.monotonic()
    out = runner_cli("run", str(sleeper), "--no-record", cwd=root / "experiments")
    took = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    assert "Experiment timed out after 5 seconds" in out.stdout
    assert 5 <= took < 20


@run_once
def test_the_environment_wins_over_the_file_and_an_option_over_both(tmp_path: Path) -> None:
    """RUNNER_EXPERIMENT_TIMEOUT over the file's timeout, --timeout over both."""
    root = repository(tmp_path, "timeout = 30\n")
    sleeper = script(root, "sleeper.py", "import time\ntime.sleep(60)\n")
    out = runner_cli("run", str(sleeper), "--no-record", cwd=root,
                     RUNNER_EXPERIMENT_TIMEOUT="2")  # fmt: skip
    assert "Experiment timed out after 2 seconds" in out.stdout, out.stdout + out.stderr
    out = runner_cli("run", str(sleeper), "--no-record", "--timeout", "1", cwd=root,
                     RUNNER_EXPERIMENT_TIMEOUT="2")  # fmt: skip
    assert "Experiment timed out after 1 seconds" in out.stdout, out.stdout + out.stderr


@run_once
def test_batch_summary_is_a_markdown_leaderboard(tmp_path: Path) -> None:
    """`runner batch --summary FILE` appends the table, a failure with its reason, the image."""
    root = repository(tmp_path, 'memory_limit = "256m"\n')
    script(root, "good.py", 'import json\nprint(json.dumps({"success": True, '
                            '"metrics": {"accuracy": 0.9}}))\n')  # fmt: skip
    script(root, "bad|name.py", "raise SystemExit('<b>boom</b> | `x`')\n")
    summary = tmp_path / "summary.md"
    out = runner_cli("batch", "experiments", "--summary", str(summary), "--no-record", cwd=root)
    assert out.returncode == 1, out.stderr
    text = summary.read_text()
    assert text.startswith("### runner batch: 2 script(s), 1 ok, 1 failed")
    assert "| 1 | `good` | `accuracy` 0.9000 |" in text
    assert "`bad\\|name`" in text and "<b>boom</b>" in text  # inside a code span, escaped
    assert "Image: `experiment-runner/sklearn:" in text and "sha256:" in text
