from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.sandbox import facts
from runner.sandbox.cleanup import LABEL
from tests.unit.fakes import FakeEngine, file_mounts

SPEC = ExperimentSpec(
    experiment_name="baseline",
    hypothesis="h",
    model_type="LogisticRegression",
    model_params={"C": 1.0},
    reasoning="r",
)


def make(engine: FakeEngine, **kwargs: object) -> ExperimentRunner:
    return ExperimentRunner(timeout=5, engine=engine, **kwargs)


def test_success_fills_every_document_field(script: Path) -> None:
    """A successful run carries the spec's fields, metrics, exit code and image ID."""
    engine = FakeEngine()
    result = make(engine).run(script, SPEC, iteration=3)
    assert result.success
    assert result.metrics == {"accuracy": 0.9}
    assert (result.experiment_name, result.iteration, result.model_type) == (
        "baseline",
        3,
        SPEC.model_type,
    )
    assert (result.hypothesis, result.reasoning, result.model_params) == ("h", "r", {"C": 1.0})
    assert result.code_path == str(script)
    assert result.exit_code == 0
    assert result.image_id == "sha256:" + "ab" * 32
    assert result.timestamp.tzinfo is not None
    assert engine.calls == ["create", "attach", "start", "wait", "remove"]


def test_container_runs_the_script_from_its_directory(script: Path) -> None:
    """The command is [python_executable, script] under a self-deadline; cwd is its directory."""
    engine = FakeEngine()
    make(engine, python_executable="python3").run(script, SPEC, 0)
    created = engine.created[0]
    # The container kills the script itself 10 s after the runner's deadline (5 s here).
    assert created["command"][:2] == ["sh", "-c"]
    assert created["command"][3:] == ["15s", facts.COLD, "python3", str(script.resolve())]
    assert 'timeout --signal=KILL "$0" "$@"' in created["command"][2]
    # The machine's facts are asked first, before the script starts.
    assert created["command"][2].startswith("facts=$1; shift; ")
    assert created["working_dir"] == str(script.parent.resolve())
    assert [m["Source"] for m in file_mounts(created)] == [str(script.parent.resolve())]
    assert created["labels"][LABEL] == "1"
    assert created["image"].startswith("sha256:")


def test_inputs_from_constructor_and_run_are_mounted(script: Path, tmp_path: Path) -> None:
    """Inputs given to the runner and to run() are both mounted read-only."""
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    for path in (a, b):
        path.write_text("x\n1\n")
        path.chmod(0o644)
    engine = FakeEngine()
    make(engine, inputs=[a]).run(script, SPEC, 0, inputs=[b])
    mounts = file_mounts(engine.created[0])
    assert [m["Target"] for m in mounts] == [str(script.parent.resolve()), str(a), str(b)]
    assert all(m["ReadOnly"] for m in mounts)


def test_a_sandbox_that_fails_to_start_is_retried_once(script: Path) -> None:
    """A runtime start failure gets one fresh container; a second failure raises."""
    from runner.sandbox.engine import SandboxStartError

    class Flaky(FakeEngine):
        failures = 1

        def start(self, container_id: str) -> None:
            if self.failures:
                self.failures -= 1
                raise SandboxStartError("OCI runtime start failed")
            super().start(container_id)

    engine = Flaky()
    assert make(engine).run(script, SPEC, 0).success
    assert engine.removed == ["c1", "c2"]
    broken = Flaky()
    broken.failures = 2
    with pytest.raises(SandboxStartError):
        make(broken).run(script, SPEC, 0)
    assert broken.removed == ["c1", "c2"]


def test_a_cancelled_run_whose_sandbox_fails_to_start_is_not_tried_again(script: Path) -> None:
    """Cancelling removes the container; its failed start must not bring a fresh one."""
    from runner.sandbox.engine import SandboxStartError

    class CancelledWhileStarting(FakeEngine):
        def start(self, container_id: str) -> None:
            backend = runner._backend  # as run_many's Ctrl-C does, for the run in flight
            backend.abort(list(backend._active._containers))
            raise SandboxStartError("OCI runtime start failed")

    engine = CancelledWhileStarting()
    runner = make(engine)
    with pytest.raises(ExperimentExecutionError):
        runner.run(script, SPEC, 0)
    assert len(engine.created) == 1
    assert not runner._backend._active.aborted(object())
    assert not runner._backend._active._aborted  # the run is over: nothing kept


def test_timeout_kills_and_reports(script: Path) -> None:
    """When the wait runs out the container is killed, removed, and the result says so."""
    engine = FakeEngine(wait_results=[None, 137])
    result = make(engine).run(script, SPEC, 0)
    assert engine.calls == ["create", "attach", "start", "wait", "kill", "wait", "remove"]
    assert not result.success
    assert result.timed_out
    assert result.error_message == "Experiment timed out after 5 seconds"
    assert result.metrics == {}


def test_oom_kill_is_reported(script: Path) -> None:
    """An OOM kill reads oom_killed=True and names the memory limit."""
    engine = FakeEngine(wait_results=[137], oom_killed=True, stdout=b"")
    result = make(engine, memory_limit="256m").run(script, SPEC, 0)
    assert result.oom_killed
    assert not result.success
    assert "256m" in (result.error_message or "")


def test_container_removed_on_keyboard_interrupt(script: Path) -> None:
    """Ctrl-C during the wait still removes the container, then propagates."""

    def interrupt() -> None:
        raise KeyboardInterrupt

    engine = FakeEngine(on_wait=interrupt)
    with pytest.raises(KeyboardInterrupt):
        make(engine).run(script, SPEC, 0)
    assert engine.removed == ["c1"]


def test_unexpected_exception_becomes_a_failed_result(script: Path) -> None:
    """Any other exception is captured in error_message, and the container is removed."""

    def explode() -> None:
        raise RuntimeError("socket went away")

    engine = FakeEngine(on_wait=explode)
    result = make(engine).run(script, SPEC, 0)
    assert not result.success
    assert result.error_message == "socket went away"
    assert engine.removed == ["c1"]


def test_missing_script_raises_with_hint(tmp_path: Path) -> None:
    """A script that does not exist raises ExperimentExecutionError before any container."""
    engine = FakeEngine()
    with pytest.raises(ExperimentExecutionError, match="Script not found"):
        make(engine).run(tmp_path / "nope.py", SPEC, 0)
    assert engine.calls == []


def test_missing_input_raises(script: Path, tmp_path: Path) -> None:
    """An input path that does not exist is the caller's error."""
    with pytest.raises(ExperimentExecutionError, match="Input not found"):
        make(FakeEngine()).run(script, SPEC, 0, inputs=[tmp_path / "missing.csv"])


def test_unknown_runtime_fails_closed(script: Path) -> None:
    """Asking for an unregistered runtime raises; no container is created."""
    engine = FakeEngine()
    with pytest.raises(ExperimentExecutionError, match="'runsc' is not registered"):
        make(engine, runtime="runsc").run(script, SPEC, 0)
    assert "create" not in engine.calls


def test_run_script_directly_returns_raw_output(script: Path) -> None:
    """run_script_directly gives stdout, stderr and returncode as the document says."""
    engine = FakeEngine(stdout=b"out\n", stderr=b"err\n", wait_results=[4])
    raw = make(engine).run_script_directly(script)
    assert raw["stdout"] == "out\n"
    assert raw["stderr"] == "err\n"
    assert raw["returncode"] == 4
    assert raw["timed_out"] is False


def test_run_script_directly_says_when_it_timed_out(script: Path) -> None:
    """A timed-out run's stderr ends with a line naming the timeout, not empty."""
    engine = FakeEngine(wait_results=[None, 137], stdout=b"", stderr=b"")
    raw = make(engine).run_script_directly(script)
    assert raw["timed_out"] is True
    assert raw["returncode"] == 137
    assert raw["stderr"] == "[runner] the script was killed at its timeout of 5 seconds\n"


def test_defaults_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arguments the runner takes timeout and limits from RUNNER_* settings."""
    monkeypatch.setenv("RUNNER_EXPERIMENT_TIMEOUT", "42")
    monkeypatch.setenv("RUNNER_CPU_LIMIT", "2")
    runner = ExperimentRunner(engine=FakeEngine())
    assert runner.timeout == 42
    assert runner.policy.cpu_limit == 2.0
    assert runner.policy.memory_limit == "2g"
    assert runner.policy.pids_limit == 256


def test_nonpositive_timeout_is_refused() -> None:
    """A zero timeout would kill every run at once; it is refused."""
    with pytest.raises(ValueError):
        ExperimentRunner(timeout=0)


def test_a_sandbox_that_ends_before_the_script_says_so(script: Path) -> None:
    """Without the wrapper's record of the script's exit, the result blames the sandbox."""
    engine = FakeEngine(stdout=b"", wait_results=[2], exit_reported=False)
    result = make(engine).run(script, SPEC, 0)
    assert not result.success
    assert (result.error_message or "").startswith("The sandbox ended before the script did")
    raw = make(FakeEngine(stdout=b"", wait_results=[2], exit_reported=False)).run_script_directly(
        script
    )
    assert "[runner] the sandbox ended before the script did" in raw["stderr"]


def test_the_exit_record_is_not_part_of_the_output(script: Path) -> None:
    """The wrapper's exit line never shows in stderr or reaches on_output."""
    engine = FakeEngine(stderr=b"warning\n")
    lines: list[tuple[str, str]] = []
    result = make(engine).run(script, SPEC, 0, on_output=lambda s, line: lines.append((s, line)))
    assert result.success
    assert result.stderr == "warning\n"
    assert ("stderr", "warning") in lines
    assert all("experiment-runner-exit" not in line for _, line in lines)
