import io
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from rich.console import Console

from runner.cli import doctor, experiments, show
from runner.cli.main import main
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult
from runner.results.history import ResultsHistory


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """`runner --help` names each subcommand."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "demo", "image", "cleanup"):
        assert command in out


def test_caller_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing script prints one error line with a hint, no traceback, exit code 2."""
    code = main(["run", str(tmp_path / "missing.py")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: Script not found")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


#: What a script controls, at its worst: a screen clear, a window title (OSC), a C1 CSI,
#: a bidi override and rich markup, including a hyperlink and a bare closing tag.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202e[/][link=x]click[/link][bold]"
#: Markup that must reach the screen as the literal text.
MARKUP = "[/][link=x]click[/link][bold]"


def assert_inert(screen: str) -> None:
    """Nothing of HOSTILE acted on the terminal: no escape, no link, no BEL, no C1, no bidi."""
    for raw in ("\x1b[2J", "\x1b]0;", "\x1b]8;", "\x07", "\x9b", "\u202e"):
        assert raw not in screen
    assert MARKUP in screen
    assert "\\x1b[2J" in screen and "\\u202e" in screen


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the CLI's consoles write, as a colour terminal would receive it."""
    screen = io.StringIO()
    for name in ("console", "errors"):
        console = Console(file=screen, force_terminal=True, width=400, highlight=False)
        monkeypatch.setattr(show, name, console)
    return screen


def result(**fields: Any) -> ExperimentResult:
    defaults: dict[str, Any] = {
        "experiment_name": HOSTILE,
        "iteration": 0,
        "model_type": HOSTILE,
        "execution_time": 1.0,
        "success": True,
        "code_path": "script.py",
        "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
        "stdout": HOSTILE,
        "stderr": HOSTILE,
    }
    return ExperimentResult(**{**defaults, **fields})


SUCCEEDED = result(metrics={HOSTILE: 0.5, "accuracy": 0.9})
FAILED = result(success=False, exit_code=1, error_message=HOSTILE)


class FakeRunner:
    """Stands in for ExperimentRunner: run returns the first of ``results``, run_many all."""

    results = (SUCCEEDED, FAILED)
    warm_pool_size = 0
    cluster = None
    script_args: ClassVar[list[str]] = []
    jobs: ClassVar[list[str]] = []
    holdouts: ClassVar[list[object]] = []
    policy = SimpleNamespace(image="image", cpu_limit=1.0, memory_limit="1g")

    def __init__(self, **options: object) -> None:
        pass

    def __enter__(self) -> "FakeRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def default_workers(self) -> int:
        return 1

    def run(
        self,
        script: Path,
        spec: object,
        iteration: int,
        *,
        args: Sequence[str] = (),
        holdout: object = None,
    ) -> ExperimentResult:
        FakeRunner.script_args = list(args)
        FakeRunner.holdouts = [holdout]
        return self.results[0]

    def run_many(
        self,
        jobs: list[Any],
        max_workers: int,
        on_result: Callable[[int, ExperimentResult], None],
        holdout: object = None,
    ) -> list[ExperimentResult]:
        FakeRunner.jobs = [job[1].experiment_name for job in jobs]
        FakeRunner.holdouts = [holdout]
        done = [self.results[i % len(self.results)] for i in range(len(jobs))]
        for index, each in enumerate(done):
            on_result(index, each)
        return done


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeRunner]:
    """The CLI runs scripts with FakeRunner; the demo writes its scripts under tmp_path."""
    monkeypatch.setattr(experiments, "ExperimentRunner", FakeRunner)
    monkeypatch.setenv("RUNNER_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    return FakeRunner


@pytest.mark.parametrize("outcome", [SUCCEEDED, FAILED], ids=["ok", "failed"])
def test_run_summary_shows_script_text_inert(
    outcome: ExperimentResult,
    fake_runs: type[FakeRunner],
    terminal: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`runner run` shows metric names, experiment names and errors as escaped plain text."""
    monkeypatch.setattr(fake_runs, "results", (outcome,))
    code = main(["run", "script.py", "--no-record"])
    assert code == (0 if outcome.success else 1)
    assert_inert(terminal.getvalue())


def test_run_json_is_ascii_and_parses_back(
    fake_runs: type[FakeRunner], capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner run --json` escapes every control and non-ASCII character, and stays valid JSON."""
    assert main(["run", "script.py", "--no-record", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.isascii()
    assert "\x1b" not in out and "\x07" not in out and "\x7f" not in out
    assert ExperimentResult.model_validate_json(out) == SUCCEEDED
    assert json.loads(out)["metrics"] == {HOSTILE: 0.5, "accuracy": 0.9}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "s.py", "--no-record"], []),
        (["run", "s.py", "--no-record", "--"], []),
        (["run", "s.py", "--no-record", "--", "--data", "train.csv"], ["--data", "train.csv"]),
        (
            ["run", "--no-record", "s.py", "--", "--", "", "a b", "--json"],
            ["--", "", "a b", "--json"],
        ),
    ],
    ids=["none", "empty", "options", "verbatim"],
)
def test_run_passes_everything_after_the_double_dash_to_the_script(
    fake_runs: type[FakeRunner], argv: list[str], expected: list[str]
) -> None:
    """`runner run exp.py -- ...` hands every word after the first -- to the script, unparsed."""
    fake_runs.script_args = ["unset"]
    main(argv)
    assert fake_runs.script_args == expected


def test_only_run_takes_script_arguments(
    fake_runs: type[FakeRunner], capsys: pytest.CaptureFixture[str]
) -> None:
    """Words after -- for another command are a usage error (exit 2), not silently dropped."""
    with pytest.raises(SystemExit) as info:
        main(["demo", "--no-record", "--", "--data", "x"])
    assert info.value.code == 2
    assert "only `runner run` takes them" in capsys.readouterr().err


def test_run_summary_shows_a_hint_on_its_own_line(
    fake_runs: type[FakeRunner], terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hint after the error is printed as a line of its own, not as an escaped \\n."""
    failed = result(
        success=False, exit_code=1, error_message="Script exited with code 1: boom\nHint: do this"
    )
    monkeypatch.setattr(fake_runs, "results", (failed,))
    assert main(["run", "script.py", "--no-record"]) == 1
    lines = terminal.getvalue().splitlines()
    assert lines[0].endswith("Script exited with code 1: boom")
    assert lines[1] == "Hint: do this"


def test_demo_progress_and_leaderboard_show_script_text_inert(
    fake_runs: type[FakeRunner], terminal: io.StringIO
) -> None:
    """`runner demo` prints each outcome and the leaderboard without acting on script text."""
    assert main(["demo", "--no-record", "--workers", "1"]) == 1
    screen = terminal.getvalue()
    assert_inert(screen)
    assert "failed: " in screen and "accuracy 0.9000" in screen


def test_history_shows_hostile_records_as_text(tmp_path: Path, terminal: io.StringIO) -> None:
    """`runner history` lists names, models and errors holding markup or escapes as text."""
    path = tmp_path / "results.jsonl"
    for each in (SUCCEEDED, FAILED):
        ResultsHistory(path).append(each)
    assert main(["history", "--results", str(path)]) == 0
    screen = terminal.getvalue()
    assert_inert(screen)
    assert screen.count(MARKUP) >= 4  # two names, two model types, the error


def test_history_paths_with_markup_are_shown_as_given(
    tmp_path: Path, terminal: io.StringIO
) -> None:
    """A results path holding markup is printed literally in the notes and the title."""
    path = tmp_path / "[bold]x" / "results.jsonl"
    path.parent.mkdir()
    path.write_text("not json\n")
    assert main(["history", "--results", str(path)]) == 0
    assert f"skipped 1 unreadable line(s) in {path}" in terminal.getvalue()
    assert f"no results in {path}" in terminal.getvalue()
    ResultsHistory(path).append(SUCCEEDED)
    assert main(["history", "--results", str(path)]) == 0
    assert f"{path}: 1 result(s), best first" in terminal.getvalue()


def test_doctor_shows_a_hint_as_text(
    monkeypatch: pytest.MonkeyPatch, terminal: io.StringIO
) -> None:
    """`runner doctor` prints what it was told (here a hint) as text, never as markup."""

    def unreachable() -> None:
        raise ExperimentExecutionError("Cannot reach the engine", hint=HOSTILE)

    monkeypatch.setattr(doctor, "DockerEngine", unreachable)
    assert main(["doctor"]) == 1
    screen = terminal.getvalue()
    assert "FAIL" in screen and "fix: " in screen
    assert_inert(screen)


def test_batch_json_prints_one_parsable_line_per_result(
    fake_runs: type[FakeRunner], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner batch --json`: stdout is one JSON result a line, nothing else; 1 on a failure."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("b.py", "a.py", "notes.txt"):
        (scripts / name).write_text("print(1)\n")
    assert main(["batch", str(scripts), "--json", "--no-record"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["success"] for line in lines] == [True, False]
    assert FakeRunner.jobs == ["a", "b"]  # the directory's *.py files, in name order


def test_batch_writes_a_junit_report_and_refuses_a_missing_path(
    fake_runs: type[FakeRunner], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--junit FILE holds one case per script; a path that is not there is exit 2."""
    script = tmp_path / "exp.py"
    script.write_text("print(1)\n")
    report = tmp_path / "report.xml"
    assert main(["batch", str(script), str(script), "--junit", str(report), "--no-record"]) == 0
    assert report.read_text().count("<testcase ") == 1  # the same script once
    assert main(["batch", str(tmp_path / "missing.py"), "--no-record"]) == 2
    assert "No such script or directory" in capsys.readouterr().err


def test_batch_appends_a_markdown_summary(
    fake_runs: type[FakeRunner], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--summary FILE appends the leaderboard (as $GITHUB_STEP_SUMMARY wants) with the image."""
    monkeypatch.setattr(fake_runs, "results", (SUCCEEDED, FAILED))
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("a.py", "b.py"):
        (scripts / name).write_text("print(1)\n")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    assert main(["batch", str(scripts), "--summary", str(summary), "--no-record"]) == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n### runner batch: 2 script(s), 1 ok, 1 failed")
    assert "Image: `image`" in text and "#### Failures" in text


def test_every_runner_option_of_the_command_line_reaches_the_runner() -> None:
    """Each option that tells a runner something is a RunnerOptions field, and a command
    line that sets them all gives a RunnerOptions with every value (none is dropped)."""
    from runner.cli.main import build_parser
    from runner.cli.options import FILES, POLICY, RESULTS, WHERE, runner_options
    from runner.core.options import RunnerOptions

    own = {"help", "results", "no_record"}
    dests = {a.dest for group in (POLICY, FILES, WHERE, RESULTS) for a in group._actions} - own
    assert dests <= set(RunnerOptions.model_fields)
    words = ["--timeout", "7", "--memory", "1g", "--cpus", "0.5", "--runtime", "runsc",
             "--image", "img:1", "--transfer", "copy", "--input", "/data", "--outputs", "/o",
             "--warm", "2", "--ray", "auto", "--build-missing", "--mlflow", "sqlite:///m.db",
             ]  # fmt: skip
    for command in (["run", "exp.py"], ["batch", "exp.py"]):
        options = runner_options(build_parser().parse_args([*command, *words]))
        assert {
            name for name in dests if getattr(options, name) not in (None, (), 0, False)
        } == dests
        assert (options.timeout, options.memory_limit, options.tracking_uri) == (
            7.0, "1g", "sqlite:///m.db",
        )  # fmt: skip


def test_run_and_batch_take_a_held_out_split(
    fake_runs: type[FakeRunner], tmp_path: Path, terminal: io.StringIO
) -> None:
    """--holdout DATA --target COL --task ... (--test-size, --seed) reach run and run_many
    as a Holdout; a half-given split is a caller's error (exit 2)."""
    from runner import Holdout

    data = tmp_path / "data.csv"
    data.write_text("x,label\n1,a\n2,b\n")
    script = tmp_path / "exp.py"
    script.write_text("print(1)\n")
    words = ["--holdout", str(data), "--target", "label", "--task", "classification",
             "--test-size", "0.5", "--seed", "9", "--no-record"]  # fmt: skip
    expected = Holdout(data, "label", "classification", test_size=0.5, seed=9)
    main(["run", str(script), *words])
    assert FakeRunner.holdouts == [expected]
    main(["batch", str(script), *words])
    assert FakeRunner.holdouts == [expected]
    main(["run", str(script), "--no-record"])
    assert FakeRunner.holdouts == [None]
    assert main(["run", str(script), "--holdout", str(data), "--no-record"]) == 2
    assert main(["run", str(script), "--target", "label", "--no-record"]) == 2


def test_a_verified_result_is_marked_and_ranks_before_claims(
    fake_runs: type[FakeRunner], tmp_path: Path, terminal: io.StringIO
) -> None:
    """The leaderboard says who scored each result, and a higher claim of a script ranks
    below the runner's score of another; the summary shows the claim apart."""
    from runner.cli import show
    from runner.core.models import HoldoutRecord

    record = HoldoutRecord(
        target_column="label", task_type="classification", train_rows=3, test_rows=1,
        test_rows_sha256="ab" * 32, data_sha256="cd" * 32,
    )  # fmt: skip
    scored = result(
        experiment_name="scored", metrics={"accuracy": 0.7}, metrics_source="holdout",
        reported_metrics={"accuracy": 1.0}, holdout=record,
    )  # fmt: skip
    claimed = result(experiment_name="claimed", metrics={"accuracy": 0.99})
    show.print_leaderboard(show.console, [claimed, scored], "board")
    rows = [line for line in terminal.getvalue().splitlines() if "accuracy" in line]
    assert "scored" in rows[0] and "verified" in rows[0]
    assert "claimed" in rows[1] and rows[1].count("claimed") == 2  # its name, its mark
    show.summary(scored)
    out = terminal.getvalue()
    assert "verified: the runner's scores on 1 held-out rows" in out
    assert "the script reported: accuracy=1.0000" in out


def test_image_id_prints_the_id_the_locks_must_give_without_an_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner image id` reads the recorded ID (the CI cache's key); a lock with none says
    so and exits 1; a file that holds no ID is an error naming it."""
    from runner.image.definition import IMAGE_ID, image_dir, recorded_image_id

    assert main(["image", "id"]) == 0
    assert capsys.readouterr().out.strip() == recorded_image_id(image_dir() / IMAGE_ID)
    lock = tmp_path / "user.lock"
    assert main(["image", "id", "--lock", str(lock)]) == 1
    assert "records no image ID" in capsys.readouterr().err
    (tmp_path / "user.lock.image-id").write_text("sha256:" + "ab" * 32 + "\n")
    assert main(["image", "id", "--lock", str(lock)]) == 0
    assert capsys.readouterr().out.strip() == "sha256:" + "ab" * 32
