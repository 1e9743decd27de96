"""``RunRequest``: one checked run, what every backend takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.sandbox.artifacts import Outputs
from runner.sandbox.policy import run_environment


@dataclass(frozen=True)
class RunRequest:
    """One checked run: the script, what must be visible beside it, and its bounds."""

    script: Path
    #: Absolute paths mounted read-only at the same place: the script's directory first.
    mounts: tuple[Path, ...]
    timeout: float
    output_limit: int
    #: Why the sandbox user could not read the files in place (then they are copied).
    unreadable: str | None = None
    #: The script's command-line arguments (``sys.argv[1:]``), checked by ``check_args``.
    args: tuple[str, ...] = ()
    #: Where the script's outputs go, if anywhere (None: outputs off).
    outputs: Outputs | None = None
    #: The mounts already packed (``runner.sandbox.files.transfer.pack``), one archive each,
    #: when they were made on another machine (a Ray task's caller): copied in, never bound.
    packed: tuple[bytes, ...] = ()
    #: Labels the run's container and volumes carry besides the project's own
    #: (a Ray batch marks its runs so that cancelling it finds them on every node).
    labels: tuple[tuple[str, str], ...] = ()
    #: Variables the script finds in its environment besides the sandbox's own (the
    #: held-out protocol's file paths), checked by ``runner.sandbox.policy.run_environment``.
    environment: tuple[tuple[str, str], ...] = ()
    #: The runner's own program (the scorer): the sandbox's record of its exit is
    #: enough to end the run, telemetry or not (``Sandbox.completed_run``).
    ends_with_result: bool = False

    def __post_init__(self) -> None:
        run_environment(self.environment)  # a name the sandbox sets itself raises
