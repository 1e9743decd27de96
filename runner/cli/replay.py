"""``runner replay RUN_ID`` and ``runner receipt``: a recorded result run again, or attested."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from runner.cli import show
from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.experiment.replay import CannotReplay, ReplayReport, find, replay
from runner.results import receipt
from runner.results.history import ResultsHistory

#: ``runner replay``'s exit codes: reproduced (identically or within tolerance), diverged.
REPRODUCED, DIVERGED = 0, 3


def add_commands(commands: Any) -> None:
    again = commands.add_parser(
        "replay",
        help="run a recorded result again, as it ran, and say whether it reproduces",
        description="Run the result RUN_ID again from its stored script directory, in its "
        "image, with its inputs (each checked against its digest), arguments, limits and "
        "environment; compare the metrics and the provenance.",
        epilog="Exit codes: 0 reproduced (identical or within --tolerance), 3 diverged, "
        "2 cannot replay (the message says what to do).",
    )
    again.add_argument("run_id", metavar="RUN_ID", help="the result's run ID (or its start)")
    _results(again)
    again.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="X",
        help="metrics within X (absolute or relative) count as reproduced",
    )
    again.add_argument("--json", action="store_true", help="print the report as JSON")
    again.set_defaults(handler=replay_command)

    attest = commands.add_parser(
        "receipt",
        help="write an in-toto attestation of a result, or verify one",
        description="`runner receipt RUN_ID` writes an in-toto statement (subjects: the "
        "script and artifacts by SHA-256; predicate: provenance and metrics) in a DSSE "
        "envelope, signed with --key. `runner receipt verify FILE` checks one (its "
        "signature with --key PUBLIC.pem). `runner receipt keygen NAME` makes an Ed25519 pair.",
        usage="%(prog)s RUN_ID [--key PRIVATE.pem] [-o FILE] | verify FILE [--key PUBLIC.pem]"
        " | keygen NAME",
    )
    attest.add_argument("words", nargs="+", metavar="RUN_ID | verify FILE | keygen NAME")
    _results(attest)
    attest.add_argument("--key", type=Path, help="PEM key: private to sign, public to verify")
    attest.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: RUN_ID.intoto.json)"
    )
    attest.set_defaults(handler=receipt_command)


def _results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        help="the JSON Lines file (default: RUNNER_RESULTS_FILE, else results.jsonl)",
    )


def _history(args: argparse.Namespace) -> ResultsHistory:
    return ResultsHistory(args.results or ExperimentDefaults().results_file)


def replay_command(args: argparse.Namespace) -> int:
    try:
        report = replay(
            args.run_id,
            history=_history(args),
            tolerance=args.tolerance,
            log=lambda line: show.errors.print(show.safe_text(line)),
        )
    except CannotReplay as e:
        show.errors.print(f"cannot replay: {e}", soft_wrap=True, markup=False)
        return 2
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        _show(report)
    return REPRODUCED if report.reproduced else DIVERGED


def _show(report: ReplayReport) -> None:
    words = {
        "identical": "reproduced: identical metrics",
        "within_tolerance": f"reproduced: metrics within {report.tolerance:g}",
        "diverged": "diverged",
    }
    show.console.print(show.safe_text(f"{report.run_id}: {words[report.outcome]}"))
    table = Table("metric", "recorded", "replayed", "")
    for pair in report.metrics:
        mark = "diverged" if pair.name in report.diverged else ""
        cells = (pair.name, pair.recorded, pair.replayed, mark)
        table.add_row(*(show.safe_text(str(v)) for v in cells))
    if report.metrics:
        show.console.print(table)
    if report.error:
        show.console.print(show.safe_text(f"error: {report.error}"))
    for d in report.differences:
        show.console.print(
            show.safe_text(
                f"provenance differs: {d.field}: {d.recorded!r} then, {d.replayed!r} now"
            )
        )
    for name in report.artifacts_differ:
        show.console.print(show.safe_text(f"artifact differs: {name}"))


def receipt_command(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if words[0] == "verify" and len(words) == 2:
        return _verify(Path(words[1]), args.key)
    if words[0] == "keygen" and len(words) == 2:
        private, public = receipt.keygen(Path(words[1]))
        show.console.print(show.safe_text(f"wrote {private} (private) and {public} (public)"))
        return 0
    if len(words) != 1:
        raise ExperimentExecutionError(
            "runner receipt takes RUN_ID, `verify FILE` or `keygen NAME`.",
            hint="see `runner receipt --help`.",
        )
    result = find(_history(args), words[0])
    envelope = receipt.write(result, args.key)
    output = args.output or Path(f"{result.run_id}.intoto.json")
    output.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    signed = "signed" if args.key else "unsigned (no --key)"
    show.console.print(show.safe_text(f"wrote {output}: {signed} receipt of {result.run_id}"))
    return 0


def _verify(path: Path, key: Path | None) -> int:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExperimentExecutionError(
            f"Could not read the receipt {path}: {e}", hint="give a receipt file."
        ) from e
    found = receipt.verify(data if isinstance(data, dict) else {}, key)
    for problem in found.problems:
        show.console.print(show.safe_text(f"invalid: {problem}"))
    if found.signature_ok is False:
        show.console.print("invalid: the signature does not verify with that key")
    if found.ok:
        state = {
            True: "signature verified",
            None: f"{found.signatures} signature(s), not checked (no --key)",
        }[found.signature_ok is True or None]
        show.console.print(show.safe_text(f"ok: receipt of {found.run_id}, {state}"))
        return 0
    return 1
