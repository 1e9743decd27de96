"""Settings from ``[tool.experiment-runner]`` in pyproject.toml, or a runner.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.config_file import find_policy_file
from runner.core.exceptions import ExperimentExecutionError
from runner.core.options import RunnerOptions
from runner.core.settings import ExperimentDefaults
from runner.experiment.runner import ExperimentRunner
from tests.unit.fakes import FakeEngine


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose working directory is a subdirectory, with no RUNNER_* set."""
    for name in ExperimentDefaults.model_fields:
        monkeypatch.delenv(f"RUNNER_{name.upper()}", raising=False)
    (tmp_path / "experiments" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "experiments" / "deep")
    return tmp_path


def pyproject(repo: Path, table: str) -> Path:
    path = repo / "pyproject.toml"
    path.write_text(f'[project]\nname = "x"\n\n[tool.experiment-runner]\n{table}')
    return path


def test_timeout_in_pyproject_is_the_experiment_timeout(repo: Path) -> None:
    """`timeout = 5` in the nearest pyproject.toml (two directories up) sets the deadline."""
    pyproject(repo, "timeout = 5\n")
    assert ExperimentDefaults().experiment_timeout == 5
    runner = ExperimentRunner(engine=FakeEngine())
    assert runner.timeout == 5


def test_every_setting_name_and_the_kebab_form_are_accepted(repo: Path) -> None:
    """Keys are the settings' names, with `-` or `_`; paths are relative to the file."""
    pyproject(
        repo,
        'memory-limit = "512m"\ncpu_limit = 0.5\nruntime = "runsc"\n'
        'results_file = "out/results.jsonl"\nexperiment_timeout = 7\n',
    )
    settings = ExperimentDefaults()
    assert (settings.memory_limit, settings.cpu_limit, settings.runtime) == ("512m", 0.5, "runsc")
    assert settings.experiment_timeout == 7
    assert settings.results_file == repo / "out" / "results.jsonl"


def test_precedence_cli_over_environment_over_file_over_defaults(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUNNER_* variable wins over the file, an option over both; the rest are defaults."""
    pyproject(repo, 'timeout = 5\nmemory_limit = "512m"\ncpu_limit = 0.5\n')
    monkeypatch.setenv("RUNNER_MEMORY_LIMIT", "1g")
    monkeypatch.setenv("RUNNER_CPU_LIMIT", "0.75")
    settings = ExperimentDefaults()
    assert (settings.experiment_timeout, settings.memory_limit) == (5, "1g")
    assert settings.pids_limit == 256
    runner = ExperimentRunner(
        options=RunnerOptions(cpu_limit=0.25), engine=FakeEngine(), settings=settings
    )
    assert (runner.timeout, runner.policy.memory_limit, runner.policy.cpu_limit) == (5, "1g", 0.25)


def test_runner_toml_wins_over_pyproject_in_the_same_directory(repo: Path) -> None:
    """runner.toml's top level is the table; beside a pyproject.toml, it is the one read."""
    pyproject(repo, "timeout = 5\n")
    (repo / "runner.toml").write_text("timeout = 9\n")
    assert ExperimentDefaults().experiment_timeout == 9
    found = find_policy_file()
    assert found is not None and found.path == repo / "runner.toml"


def test_a_pyproject_without_the_table_is_passed_by(repo: Path) -> None:
    """A nearer pyproject.toml without [tool.experiment-runner] does not hide a farther one."""
    pyproject(repo, "timeout = 5\n")
    (repo / "experiments" / "pyproject.toml").write_text("[tool.ruff]\nline-length = 90\n")
    assert ExperimentDefaults().experiment_timeout == 5


def test_no_file_means_the_defaults(repo: Path) -> None:
    """Without any policy file the defaults hold."""
    assert find_policy_file() is None
    assert ExperimentDefaults().experiment_timeout == 300


def test_an_unknown_key_names_the_file_and_the_key(repo: Path) -> None:
    """A misspelt key is an error naming the file and the key, never ignored."""
    path = pyproject(repo, 'memory_limt = "1g"\n')
    with pytest.raises(ExperimentExecutionError) as info:
        ExperimentDefaults()
    message = str(info.value)
    assert str(path) in message and "[tool.experiment-runner]" in message
    assert "'memory_limt'" in message


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("timeout = -1\n", "'timeout'"),
        ('cpu_limit = "lots"\n', "'cpu_limit'"),
        ('transfer = "teleport"\n', "'transfer'"),
        ('group = "bad group!"\n', "'group'"),
    ],
)
def test_a_bad_value_names_the_file_and_the_key(repo: Path, table: str, key: str) -> None:
    """A value the setting refuses is an error naming the file and the key as written."""
    (repo / "runner.toml").write_text(table)
    with pytest.raises(ExperimentExecutionError) as info:
        ExperimentDefaults()
    assert str(repo / "runner.toml") in str(info.value)
    assert f"bad value for {key}" in str(info.value)


def test_two_keys_for_one_setting_are_refused(repo: Path) -> None:
    """`timeout` and `experiment_timeout` together are ambiguous: an error."""
    pyproject(repo, "timeout = 5\nexperiment_timeout = 6\n")
    with pytest.raises(ExperimentExecutionError, match="both set experiment_timeout"):
        ExperimentDefaults()


def test_broken_toml_names_the_file(repo: Path) -> None:
    """A file that is not TOML is an error naming it."""
    (repo / "runner.toml").write_text("timeout = = 5\n")
    with pytest.raises(ExperimentExecutionError, match=r"runner\.toml"):
        ExperimentDefaults()


def test_the_cli_exits_2_on_a_bad_policy_file(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runner run` with a bad policy file prints one error line naming it and exits 2."""
    from runner.cli.main import main

    pyproject(repo, "timout = 5\n")
    script = repo / "s.py"
    script.write_text("print(1)\n")
    assert main(["run", str(script), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert "pyproject.toml" in err and "'timout'" in err
