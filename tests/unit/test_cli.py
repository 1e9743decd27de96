from pathlib import Path

import pytest

from runner.cli import main


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
