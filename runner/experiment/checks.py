"""Command-line arguments for a script: checked once, then passed as they are.

They reach the script's ``sys.argv[1:]`` exactly, cold or warm: no shell sees
them (the container's command is a list, and its wrapper passes ``"$@"``).
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.core.exceptions import ExperimentExecutionError

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
