"""What the caller asks for one run, checked before any container: the script, its
inputs, its arguments and where its outputs go; the result is a ``RunRequest``.

Arguments reach the script's ``sys.argv[1:]`` exactly, cold or warm: no shell
sees them (the container's command is a list, and its wrapper passes ``"$@"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.core.exceptions import ExperimentExecutionError
from runner.sandbox.artifacts import OUTPUTS_PATH, OutputLimits, Outputs
from runner.sandbox.policy import unreadable
from runner.sandbox.request import RunRequest

#: Far below the kernel's limits (128 KiB per string, a few MiB in all), and
#: far above what a command line for an experiment needs.
MAX_ARGS = 1024
MAX_ARGS_BYTES = 128 * 1024

_HINT = "pass a list of strings, e.g. args=['--data', 'train.csv']."


def check_args(args: Iterable[str] | None) -> tuple[str, ...]:
    """``args`` as a tuple of strings, or ``ExperimentExecutionError`` saying what is wrong.

    Each must be a ``str`` (a path too: ``str(path)``), encodable as UTF-8 and
    without NUL, which no command line can carry.
    """
    if args is None:
        return ()
    if isinstance(args, str | bytes):
        raise ExperimentExecutionError(
            f"Script arguments must be a list of strings, not a single {type(args).__name__} "
            f"({args[:40]!r}).",
            hint=_HINT,
        )
    checked = tuple(args)
    if len(checked) > MAX_ARGS:
        raise ExperimentExecutionError(
            f"Too many script arguments: {len(checked)} (at most {MAX_ARGS}).",
            hint="pass large inputs as a file with inputs= instead.",
        )
    total = 0
    for index, arg in enumerate(checked):
        if not isinstance(arg, str):
            raise ExperimentExecutionError(
                f"Script argument {index} is a {type(arg).__name__}, not a string: {arg!r:.60}.",
                hint=_HINT + " Convert numbers and paths with str().",
            )
        if "\0" in arg:
            raise ExperimentExecutionError(
                f"Script argument {index} contains a NUL character, which no command line "
                "can carry.",
                hint="remove it, or pass the data in a file with inputs=.",
            )
        try:
            total += len(arg.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ExperimentExecutionError(
                f"Script argument {index} is not valid Unicode (a lone surrogate at "
                f"position {e.start}).",
                hint="pass text that encodes as UTF-8.",
            ) from e
    if total > MAX_ARGS_BYTES:
        raise ExperimentExecutionError(
            f"Script arguments are too long: {total} bytes (at most {MAX_ARGS_BYTES}).",
            hint="pass large inputs as a file with inputs= instead.",
        )
    return tuple(str(arg) for arg in checked)  # plain str, even from a subclass


@dataclass(frozen=True)
class RunChecks:
    """What every run of one runner is checked against, and the bounds it gets."""

    timeout: float
    output_limit: int
    #: Inputs every run sees besides its own.
    inputs: tuple[Path, ...] = ()
    #: Where outputs come back unless a run says otherwise (None: off).
    outputs_dir: Path | None = None
    output_limits: OutputLimits | None = None

    def outputs(self, outputs_dir: Path | str | None) -> Path | None:
        """Where a run's outputs go: its own directory, else the runner's, else nowhere."""
        if outputs_dir is not None:
            return Path(outputs_dir).expanduser().resolve()
        return self.outputs_dir

    def request(
        self,
        script_path: Path,
        *,
        inputs: Iterable[str | Path] = (),
        args: Sequence[str] = (),
        outputs_dir: Path | str | None = None,
        outputs_below: tuple[str, ...] = (),
    ) -> RunRequest:
        """The checked request for one run; ``ExperimentExecutionError`` says what is wrong.

        ``outputs_below``: directories under the outputs directory that this run's
        outputs go into (a batch job's own), made there and never followed.
        """
        checked = check_args(args)
        script, mounts = self._mounts(script_path, inputs)
        destination = self.outputs(outputs_dir)
        outputs = None
        if destination is not None:
            _apart_from_the_files(destination, mounts)
            if any(path.is_relative_to(OUTPUTS_PATH) for path in mounts):
                raise ExperimentExecutionError(
                    f"With outputs on, the sandbox's working directory is {OUTPUTS_PATH}: "
                    "a script or input there would be hidden.",
                    hint=f"move the script and inputs out of {OUTPUTS_PATH}, or run without "
                    "outputs_dir.",
                )
            limits = self.output_limits
            if limits is None:
                raise ValueError("outputs need output_limits")
            outputs = Outputs(destination, limits, links=script.parent, below=outputs_below)
        return RunRequest(
            script,
            mounts,
            self.timeout,
            self.output_limit,
            unreadable([*mounts, script]),
            args=checked,
            outputs=outputs,
        )

    def _mounts(
        self, script_path: Path, inputs: Iterable[str | Path]
    ) -> tuple[Path, tuple[Path, ...]]:
        """The script (resolved), and what the sandbox shows: its directory, then inputs."""
        script = script_path.expanduser().resolve()
        if not script.is_file():
            raise ExperimentExecutionError(
                f"Script not found: {script_path}",
                hint="pass the path of an existing Python file.",
            )
        paths = [script.parent]
        for raw in (*self.inputs, *inputs):
            path = Path(raw).expanduser().resolve()
            if not path.exists():
                raise ExperimentExecutionError(
                    f"Input not found: {raw}", hint="inputs must be existing files or directories."
                )
            if path not in paths:
                paths.append(path)
        return script, tuple(paths)


def _apart_from_the_files(destination: Path, mounts: Sequence[Path]) -> None:
    """Refuse an outputs directory that is, holds or lies inside the script's directory or
    an input: what the script writes would replace the script's own files or inputs."""
    for path in mounts:
        if (
            destination == path
            or destination.is_relative_to(path)
            or path.is_relative_to(destination)
        ):
            what = "the script's directory" if path == mounts[0] else "an input"
            raise ExperimentExecutionError(
                f"The outputs directory {destination} and {what} ({path}) overlap: what the "
                "script writes would land on its own files or inputs.",
                hint="choose an outputs directory apart from the script's directory and every "
                "input (say, a sibling: --outputs ../out).",
            )
