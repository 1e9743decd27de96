"""Running scripts end to end: results, errors, working directory and mounts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import CHECKOUT, SPEC, ways_down


def test_success_after_progress_output(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """A script that prints progress then a result line succeeds with its metrics."""
    script = write_script(
        """
        import json, sys
        print("loading data")
        print("warning: small data", file=sys.stderr)
        print(json.dumps({"success": True, "metrics": {"accuracy": 0.87, "f1": 0.85}}))
        """
    )
    result = runner.run(script, SPEC, 1)
    assert result.success, result.error_message
    assert result.metrics == {"accuracy": 0.87, "f1": 0.85}
    assert result.exit_code == 0
    assert result.stderr == "warning: small data\n"
    assert result.stdout.startswith("loading data\n")
    assert result.image_id is not None and result.image_id.startswith("sha256:")
    assert 0 < result.execution_time < 30


def test_crash_reports_exit_code_and_error(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """An uncaught exception gives "Script exited with code 1: <error>"."""
    script = write_script("import nonexistent_module_xyz\n")
    result = runner.run(script, SPEC, 1)
    assert not result.success
    assert result.exit_code == 1
    assert (result.error_message or "").split("\n")[0] == (
        "Script exited with code 1: ModuleNotFoundError: No module named 'nonexistent_module_xyz'"
    )


def test_invalid_json_is_reported(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """Output with no JSON object fails with the document's parse error text."""
    result = runner.run(write_script("print('accuracy: 0.9')\n"), SPEC, 1)
    assert not result.success
    assert (result.error_message or "").startswith("Failed to parse JSON output: Expecting value")


def test_working_directory_is_the_scripts_directory_at_the_same_path(
    runner: ExperimentRunner, workdir: Path, write_script: Callable[..., Path]
) -> None:
    """The script runs from its own directory, mounted at the same absolute path."""
    (workdir / "data.csv").write_text("a,b\n1,2\n")
    (workdir / "data.csv").chmod(0o644)
    script = write_script(
        """
        import json, os
        print(json.dumps({"success": True, "cwd": os.getcwd(), "file": __file__,
                          "data": open("data.csv").read()}))
        """
    )
    raw = runner.run_script_directly(script)
    payload = json.loads(raw["stdout"])
    assert payload["cwd"] == str(workdir.resolve())
    assert payload["file"] == str(script.resolve())
    assert payload["data"] == "a,b\n1,2\n"


def test_script_directory_and_inputs_are_read_only(
    engine: DockerEngine, tmp_path: Path, workdir: Path, write_script: Callable[..., Path]
) -> None:
    """Writing to the script, its directory, an input or the root filesystem fails.

    Every target would be writable by permissions alone (0666/0777 here, and
    /var/tmp is 1777 in the image): only the read-only mounts stop the writes.
    """
    data = tmp_path / "inputs"
    data.mkdir()
    data.chmod(0o777)
    (data / "train.csv").write_text("x\n1\n")
    (data / "train.csv").chmod(0o666)  # even a world-writable file stays read-only
    script = write_script(
        f"""
        import json, os
        results = {{}}
        for path in [__file__, "new.txt", "{data}/train.csv", "{data}/new.txt", "/var/tmp/x"]:
            try:
                with open(path, "a") as f:
                    f.write("x")
                results[path] = "written"
            except OSError as e:
                results[path] = e.strerror
        results["read"] = open("{data}/train.csv").read()
        print(json.dumps(results))
        """
    )
    script.chmod(0o666)  # only the read-only mount may stop the write
    workdir.chmod(0o777)
    original = script.read_text()
    runner = ExperimentRunner(timeout=30, engine=engine, inputs=[data])
    outcome = json.loads(runner.run_script_directly(script)["stdout"])
    assert outcome.pop("read") == "x\n1\n"
    assert set(outcome.values()) == {"Read-only file system"}, outcome
    assert script.read_text() == original
    assert not (workdir / "new.txt").exists()


def test_tmp_is_writable_but_not_executable(
    runner: ExperimentRunner, write_script: Callable[..., Path]
) -> None:
    """/tmp takes files but will not execute them (noexec)."""
    script = write_script(
        """
        import json, os, subprocess
        with open("/tmp/tool.sh", "w") as f:
            f.write("#!/bin/sh\\necho ran\\n")
        os.chmod("/tmp/tool.sh", 0o755)
        try:
            subprocess.run(["/tmp/tool.sh"], check=True)
            outcome = "executed"
        except PermissionError:
            outcome = "denied"
        print(json.dumps({"success": True, "exec": outcome}))
        """
    )
    assert json.loads(runner.run_script_directly(script)["stdout"])["exec"] == "denied"


def test_no_other_host_path_is_visible(
    runner: ExperimentRunner, tmp_path: Path, write_script: Callable[..., Path]
) -> None:
    """Host paths outside the mounts (the repo, the caller's home, siblings) are absent, and
    each directory on the way down to the script's holds nothing but the way down."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o644)
    probes = [str(secret), str(Path(__file__).resolve()), str(Path.home() / ".cache")]
    probes += [str(CHECKOUT), "/var/run/docker.sock"]
    ways = ways_down(tmp_path / "exp")  # where the workdir fixture writes the script
    script = write_script(
        f"""
        import json, os
        print(json.dumps({{"exists": {{p: os.path.exists(p) for p in {probes!r}}},
                          "ways": {{p: sorted(os.listdir(p)) for p in {list(ways)!r}}}}}))
        """
    )
    seen = json.loads(runner.run_script_directly(script)["stdout"])
    assert seen["exists"] == dict.fromkeys(probes, False)
    assert seen["ways"] == ways


def test_missing_image_raises_with_build_hint(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """A runner pointed at an image that does not exist says how to build it."""
    runner = ExperimentRunner(image="experiment-runner/missing:0", engine=engine)
    with pytest.raises(ExperimentExecutionError, match="runner image build"):
        runner.run(write_script("print(1)\n"), SPEC, 0)


def test_unregistered_runtime_raises(
    engine: DockerEngine, write_script: Callable[..., Path]
) -> None:
    """An unknown runtime fails closed instead of running under the default one."""
    runner = ExperimentRunner(runtime="no-such-runtime", engine=engine)
    with pytest.raises(ExperimentExecutionError, match="not registered"):
        runner.run(write_script("print(1)\n"), SPEC, 0)


def test_unreachable_engine_raises(
    monkeypatch: pytest.MonkeyPatch, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """With no engine at DOCKER_HOST, run raises ExperimentExecutionError with a hint."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(ExperimentExecutionError, match="Cannot reach a Docker engine"):
        ExperimentRunner().run(write_script("print(1)\n"), SPEC, 0)
