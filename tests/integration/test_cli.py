"""Each `runner` subcommand, run as a user would, against real containers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from runner import ExperimentResult
from runner.results.history import ResultsHistory
from tests.conftest import TEST_ENGINE


def runner_cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True, text=True, timeout=600, cwd=cwd, env={**os.environ, **env},
    )  # fmt: skip


def test_run_prints_a_summary_records_it_and_exits_0(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """`runner run` succeeds with exit 0, a one-line summary and a recorded result."""
    script = write_script(
        'import json\nprint(json.dumps({"success": True, "metrics": {"r2": 0.5}}))\n'
    )
    results = tmp_path / "results.jsonl"
    out = runner_cli("run", str(script), "--results", str(results), "--name", "probe")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok probe (")
    assert "r2=0.5000" in out.stdout
    recorded, _ = ResultsHistory(results).read()
    assert [r.experiment_name for r in recorded] == ["probe"]


def test_run_json_prints_the_full_result(write_script: Callable[..., Path]) -> None:
    """`runner run --json` prints an ExperimentResult that validates."""
    script = write_script('import json\nprint(json.dumps({"success": True}))\n')
    out = runner_cli(
        "run", str(script), "--json", "--no-record", "--memory", "256m", "--cpus", "0.5"
    )
    assert out.returncode == 0, out.stderr
    result = ExperimentResult.model_validate_json(out.stdout)
    assert result.success and result.exit_code == 0 and result.image_id


def test_run_failure_exits_1_with_the_reason(write_script: Callable[..., Path]) -> None:
    """A script that times out gives exit 1 and says so."""
    script = write_script("import time\ntime.sleep(60)\n")
    out = runner_cli("run", str(script), "--timeout", "1", "--no-record")
    assert out.returncode == 1
    assert "Experiment timed out after 1 seconds" in out.stdout


def test_run_with_inputs_and_unknown_runtime(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """--input mounts a file read-only; an unknown --runtime is a one-line error, exit 2."""
    data = tmp_path / "in.txt"
    data.write_text("42")
    data.chmod(0o644)
    script = write_script(
        f"import json\nvalue = int(open({str(data)!r}).read())\n"
        'print(json.dumps({"success": True, "metrics": {"v": value}}))\n'
    )
    out = runner_cli("run", str(script), "--input", str(data), "--no-record")
    assert out.returncode == 0, out.stderr
    assert "v=42.0000" in out.stdout
    bad = runner_cli("run", str(script), "--runtime", "nope", "--no-record")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: Runtime 'nope' is not registered")
    assert "Traceback" not in bad.stderr


def test_demo_shows_progress_and_a_leaderboard(tmp_path: Path) -> None:
    """`runner demo` runs five model families in parallel and ranks them."""
    out = runner_cli("demo", cwd=tmp_path, RUNNER_EXPERIMENTS_DIR=str(tmp_path / "exp"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Leaderboard" in out.stdout
    for model in ("LogisticRegression", "RandomForestClassifier", "SVC", "KNeighborsClassifier",
                  "HistGradientBoostingClassifier"):  # fmt: skip
        assert model in out.stdout
    assert out.stdout.count("accuracy 0.") == 5
    assert "scored by the runner on held-out rows" in out.stdout
    assert out.stdout.count(" verified ") == 5  # the leaderboard marks the runner's scores
    recorded, _ = ResultsHistory(tmp_path / "results.jsonl").read()
    assert len(recorded) == 5
    assert all(r.metrics_source == "holdout" and r.holdout for r in recorded)


def test_history_lists_best_first_and_filters(
    tmp_path: Path, write_script: Callable[..., Path]
) -> None:
    """`runner history` shows recorded results best first, and --name filters them."""
    results = tmp_path / "r.jsonl"
    for name, value in (("low", 0.2), ("high", 0.9)):
        metrics = json.dumps({"success": True, "metrics": {"accuracy": value}})
        script = write_script(f"print({metrics!r})\n", f"{name}.py")
        assert (
            runner_cli("run", str(script), "--results", str(results), "--name", name).returncode
            == 0
        )
    out = runner_cli("history", "--results", str(results))
    assert out.returncode == 0
    assert out.stdout.index("high") < out.stdout.index("low")
    filtered = runner_cli("history", "--results", str(results), "--name", "lo")
    assert "low" in filtered.stdout and "high" not in filtered.stdout
    empty = runner_cli("history", "--results", str(tmp_path / "none.jsonl"))
    assert empty.returncode == 0
    assert "no results" in empty.stdout


def test_image_info_and_build_up_to_date() -> None:
    """`runner image info` shows versions; `runner image build` reuses an identical build."""
    info = runner_cli("image", "info")
    assert info.returncode == 0, info.stderr
    assert "scikit-learn==1.9.1" in info.stdout
    assert "sha256:" in info.stdout
    build = runner_cli("image", "build")
    assert build.returncode == 0, build.stderr
    assert "up to date" in build.stderr
    assert build.stdout.split()[1].startswith("sha256:")


def test_doctor_checks_engine_image_and_runtimes() -> None:
    """`runner doctor` passes here and reports each check."""
    out = runner_cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    product = "Podman Engine" if TEST_ENGINE == "podman" else "Docker Engine"
    assert f"engine: {product}" in out.stdout
    runc = "(Podman's default)" if TEST_ENGINE == "podman" else "runc"
    assert f"runtime {runc}: runs a sandboxed script" in out.stdout


def test_doctor_says_what_to_fix_without_an_engine(tmp_path: Path) -> None:
    """With no engine, doctor fails with exit 1 and a fix."""
    out = runner_cli("doctor", DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    assert out.returncode == 1
    assert "not reachable" in out.stdout and "fix:" in out.stdout


def test_cleanup_reports_nothing_to_do() -> None:
    """`runner cleanup` with nothing left behind removes nothing and exits 0."""
    out = runner_cli("cleanup")
    assert out.returncode == 0
    assert "0 container(s) removed" in out.stdout


def test_help_reads_well() -> None:
    """`runner --help` and `runner run --help` describe the commands and options."""
    out = runner_cli("--help")
    assert out.returncode == 0
    for command in ("run", "demo", "image", "cleanup", "doctor", "history", "Exit codes"):
        assert command in out.stdout
    run_help = runner_cli("run", "--help").stdout
    for option in ("--timeout", "--memory", "--cpus", "--runtime", "--input", "--json"):
        assert option in run_help


def test_a_hostile_scripts_text_reaches_the_terminal_inert(
    write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """Markup, escape sequences, C1 controls and bidi overrides a script prints show as text."""
    hostile = "[/][link=x]\x1b[2J\x1b]0;pwned\x07\x9b31m\u202e"
    emit = "import json\nprint(json.dumps({!r}))\n"
    good = write_script(emit.format({"success": True, "metrics": {hostile: 0.5}}), "good.py")
    bad = write_script(emit.format({"success": False, "error": hostile}), "bad.py")
    results = tmp_path / "results.jsonl"
    ran = runner_cli("run", str(good), "--results", str(results), "--name", "good")
    failed = runner_cli("run", str(bad), "--results", str(results), "--name", "bad")
    history = runner_cli("history", "--results", str(results))
    as_json = runner_cli("run", str(good), "--no-record", "--json")
    outs = (ran, failed, history, as_json)
    assert [out.returncode for out in outs] == [0, 1, 0, 0], [out.stderr for out in outs]
    for out in outs:
        for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert raw not in out.stdout + out.stderr
    shown = "[/][link=x]\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202e"
    assert shown in ran.stdout and shown in failed.stdout
    assert "good" in history.stdout and "[/][link=x]" in history.stdout
    assert as_json.stdout.isascii()
    assert json.loads(as_json.stdout)["metrics"] == {hostile: 0.5}
