"""``runner mcp``: the MCP server on stdio or streamable HTTP, under the server's policy."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.cli.options import POLICY, RESULTS, runner_options
from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.mcp.server import build_server
from runner.mcp.service import MAX_CODE_BYTES, SandboxService, ServerPolicy
from runner.sandbox.engine import Engine

log = logging.getLogger("runner.mcp")


def add_commands(commands: Any) -> None:
    mcp = commands.add_parser(
        "mcp",
        parents=[POLICY, RESULTS],
        help="serve run_python, run_experiment and list_results to agents over MCP (stdio)",
        description="A Model Context Protocol server (needs the [mcp] extra): each tool call "
        "runs in a fresh sandbox under these limits, which clients can lower, never raise. "
        "Logs go to stderr; stdout is the protocol.",
    )
    add_arguments(mcp)
    mcp.set_defaults(handler=mcp_command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``runner mcp``'s own options (besides the policy's and the results'): the data
    sets, the limits of what a client may send, and the transport."""
    parser.add_argument(
        "--data", action="append", default=[], metavar="NAME=PATH",
        help="a CSV data set run_experiment may use by NAME (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, metavar="DIR",
        help="keep each call's script and outputs under DIR (default: removed after the call)",
    )  # fmt: skip
    parser.add_argument(
        "--max-code-bytes", type=int, default=MAX_CODE_BYTES, metavar="N",
        help=f"largest code a client may send (default {MAX_CODE_BYTES})",
    )  # fmt: skip
    parser.add_argument(
        "--max-runs", type=int, metavar="N",
        help="runs at once, for all clients together (default: what the engine holds)",
    )  # fmt: skip
    parser.add_argument(
        "--max-waiting", type=int, metavar="N",
        help="calls one client may have waiting for a run; more are refused "
        "(default: as many as --max-runs)",
    )  # fmt: skip
    parser.add_argument(
        "--warm", type=_count, metavar="N",
        help="keep N single-use sandboxes started ahead, libraries imported, for calls "
        "under the server's limits (default: as many as --max-runs; 0: every call cold)",
    )  # fmt: skip
    parser.add_argument(
        "--http", action="store_true",
        help="serve streamable HTTP instead of stdio (on --host, 127.0.0.1 by default)",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of sandboxes (0 or more)")
    return value


def data_sets(pairs: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` pairs as a mapping; ``ExperimentExecutionError`` for a bad one."""
    data: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ExperimentExecutionError(
                f"--data {pair!r} is not NAME=PATH.", hint="e.g. --data churn=data/churn.csv"
            )
        data[name] = Path(path).expanduser().resolve()
    return data


def mcp_command(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    history = None if args.no_record else args.results or settings.results_file
    return serve(args, history)


def serve(args: argparse.Namespace, history: Path | None, engine: Engine | None = None) -> int:
    """Run the server until the client goes (stdio) or it is interrupted (HTTP)."""
    settings = ExperimentDefaults()
    policy = ServerPolicy.from_settings(
        settings,
        runner_options(args),
        data=data_sets(args.data),
        history=history,
        workdir=args.workdir,
        max_code_bytes=args.max_code_bytes,
        max_runs=args.max_runs,
        max_waiting=args.max_waiting,
        warm=args.warm,
    )
    service = SandboxService(policy, engine=engine, settings=settings)
    try:
        server = build_server(service)
        where = f"http://{args.host}:{args.port}/mcp" if args.http else "stdio"
        log.info(
            "experiment-runner MCP server on %s, %d warm sandbox(es)",
            where,
            service.warm_pool_size,
        )
        with _ended_by(signal.SIGTERM):
            if args.http:
                server.run("streamable-http", host=args.host, port=args.port)
            else:
                server.run("stdio")
    finally:
        # A stdio client that closed the session sends SIGTERM soon after: the warm
        # sandboxes still go (until a SIGKILL; what that leaves, the next runner sweeps).
        with _deaf_to(signal.SIGTERM):
            service.close()
    return 0


class _Terminated(SystemExit):
    """The server was asked to end (SIGTERM): it removes its sandboxes first. A
    ``SystemExit``, which asyncio lets out of any task as it is, never wrapped."""


@contextlib.contextmanager
def _ended_by(signum: signal.Signals) -> Iterator[None]:
    """``signum`` ends the block with an exception, so that cleanup runs (Python's own
    default ends the process at once); the HTTP transport's server installs its own
    handlers meanwhile, which end it gracefully too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(*_: object) -> None:
        raise _Terminated

    previous = signal.signal(signum, stop)
    try:
        yield
    except _Terminated:
        log.info("terminated: removing the sandboxes")
    finally:
        signal.signal(signum, previous)


@contextlib.contextmanager
def _deaf_to(signum: signal.Signals) -> Iterator[None]:
    """``signum`` is ignored during the block (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)
