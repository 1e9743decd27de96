"""The one exception the runner raises: something the caller or the machine got wrong."""

from __future__ import annotations


class ExperimentExecutionError(Exception):
    """An experiment could not be run at all (no engine, no image, no script...).

    What a script does (a crash, a timeout, an OOM kill, bad output) is never
    raised: it is reported in ``ExperimentResult``. The message says what to do.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{message} Hint: {hint}" if hint else message)
