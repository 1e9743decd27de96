"""The ``runner`` command line: one parser, each command from the module that serves it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runner.cli import doctor, experiments, history, image, mcp, replay, show
from runner.core.exceptions import ExperimentExecutionError


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the script's, verbatim (more "--" included).
    script_args: list[str] = []
    if "--" in words:
        at = words.index("--")
        words, script_args = words[:at], words[at + 1 :]
    parser = build_parser()
    args = parser.parse_args(words)
    if script_args and not getattr(args, "takes_script_args", False):
        parser.error("arguments after -- are for a script: only `runner run` takes them")
    args.script_args = script_args
    try:
        return int(args.handler(args))
    except ExperimentExecutionError as e:
        show.errors.print(f"error: {e}", soft_wrap=True, markup=False)
        return 2
    except KeyboardInterrupt:
        show.errors.print("interrupted: every container this command started was removed")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        description="Run scikit-learn experiment scripts in hardened, single-use containers.",
        epilog="Exit codes: 0 success, 1 an experiment or check failed, 2 the runner "
        "could not run (the message says what to fix), 130 interrupted.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    experiments.add_commands(commands)  # run, batch, demo
    image.add_commands(commands)
    doctor.add_commands(commands)  # cleanup, doctor
    mcp.add_commands(commands)
    history.add_commands(commands)
    replay.add_commands(commands)  # replay, receipt
    return parser


if __name__ == "__main__":
    sys.exit(main())
