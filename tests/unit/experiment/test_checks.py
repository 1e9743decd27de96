import asyncio
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.backends.bootstrap import hand_over_line
from runner.experiment.checks import MAX_ARGS, MAX_ARGS_BYTES, check_args
from tests.unit.fakes import FakeEngine

SPEC = ExperimentSpec(experiment_name="args", model_type="SVC")
ARGS = ["--data", "train data.csv", "", 'it\'s "quoted"', "$(id)", "line\nbreak", "caf\u00e9"]


def make(engine: FakeEngine, **kwargs: Any) -> ExperimentRunner:
    return ExperimentRunner(timeout=5, engine=engine, **kwargs)


def script_args(engine: FakeEngine, index: int = 0) -> list[str]:
    """What a cold container was told to run after `python script`."""
    command: list[str] = engine.created[index]["command"]
    return command[command.index("python") + 2 :]


@pytest.mark.parametrize(
    "args", [[], ARGS, ("a", "b"), ["x" * (MAX_ARGS_BYTES // 2)] * 2, [""] * MAX_ARGS]
)
def test_check_args_keeps_strings_as_they_are(args: list[str]) -> None:
    """Any list (or tuple) of strings within the caps comes back unchanged, as a tuple."""
    assert check_args(args) == tuple(args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--data x", "not a single str"),
        (b"--data", "not a single bytes"),
        (["--n", 3], "argument 1 is a int"),
        ([Path("a.csv")], "argument 0 is a PosixPath"),
        ([b"raw"], "argument 0 is a bytes"),
        (["ok", "nul\0inside"], "argument 1 contains a NUL"),
        (["\udc80"], "argument 0 is not valid Unicode"),
        ([""] * (MAX_ARGS + 1), "Too many script arguments"),
        (["x" * (MAX_ARGS_BYTES + 1)], "too long"),
        (["\u00e9" * (MAX_ARGS_BYTES // 2 + 1)], "too long"),  # counted in UTF-8 bytes
    ],
    ids=[
        "str", "bytes", "int", "path", "bytes-item", "nul", "surrogate", "count", "size", "utf8"
    ],
)  # fmt: skip
def test_check_args_refuses_with_a_clear_error(args: Any, message: str) -> None:
    """Anything but a list of sane strings is the caller's error, saying what is wrong and why."""
    with pytest.raises(ExperimentExecutionError, match=message) as info:
        check_args(args)
    assert info.value.hint


def test_cold_run_passes_arguments_after_the_script(script: Path) -> None:
    """The container's command ends with the script and then each argument, unquoted."""
    engine = FakeEngine()
    result = make(engine).run(script, SPEC, 0, args=ARGS)
    assert result.success
    assert script_args(engine) == ARGS
    assert engine.created[0]["command"][:2] == ["sh", "-c"]  # "$@" passes them on as they are


def test_bad_arguments_start_no_container(script: Path) -> None:
    """Arguments are checked before anything reaches the engine."""
    engine = FakeEngine()
    with pytest.raises(ExperimentExecutionError, match="NUL"):
        make(engine).run(script, SPEC, 0, args=["a\0b"])
    assert engine.calls == []


def test_run_script_directly_and_arun_take_arguments(script: Path) -> None:
    """run_script_directly(args=) and arun(args=) pass them like run does."""
    engine = FakeEngine(wait_results=[0, 0])
    runner = make(engine)
    assert runner.run_script_directly(script, args=["--a", "1"])["returncode"] == 0
    assert asyncio.run(runner.arun(script, SPEC, 0, args=["--b"])).success
    assert script_args(engine, 0) == ["--a", "1"]
    assert script_args(engine, 1) == ["--b"]


def test_run_many_jobs_may_carry_arguments(script: Path) -> None:
    """A job of four items gives its script arguments; a bad one fails that job only."""
    engine = FakeEngine(wait_results=[0, 0])
    results = make(engine).run_many(
        [(script, SPEC, 0, ["--fold", "1"]), (script, SPEC, 1), (script, SPEC, 2, [7])],
        max_workers=1,
    )
    assert [r.success for r in results] == [True, True, False]
    assert sorted(script_args(engine, i) for i in (0, 1)) == [[], ["--fold", "1"]]
    assert "argument 0 is a int" in (results[2].error_message or "")


def test_warm_run_hands_over_the_arguments(
    warm_runner: tuple[ExperimentRunner, FakeEngine, Path],
) -> None:
    """A warm slot gets the run's variables (none), the script and its arguments in one line
    of hex fields."""
    runner, engine, script = warm_runner
    result = runner.run(script, SPEC, 0, args=ARGS)
    assert result.warm_start
    handed = engine.handed_over["c1"]
    assert handed == hand_over_line(str(script), ARGS)
    assert handed.count(b"\n") == 1 and handed.endswith(b"\n")
    fields = [bytes.fromhex(f).decode() for f in handed[:-1].decode("ascii").split(" ")]
    assert fields == ["", str(script), *ARGS]
