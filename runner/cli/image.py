"""``runner image``: build, describe and verify sandbox images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from runner.cli import show
from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.image.build import build_image, build_user_image
from runner.image.definition import (
    LABEL_ADDED,
    LABEL_DEBIAN,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LABEL_PYTHON,
)
from runner.image.listing import parse_listing
from runner.image.verify import verify_image
from runner.sandbox.engine import DockerEngine


def add_commands(commands: Any) -> None:
    image = commands.add_parser("image", help="build, describe or verify sandbox images")
    image_commands = image.add_subparsers(required=True, metavar="ACTION")
    build = image_commands.add_parser(
        "build",
        help="build the pinned image, or a user image with your packages, offline",
        description="Without options: the pinned image (and its base). With --requirements "
        "and --tag: a user image holding the pinned packages plus yours, locked with hashes "
        "by uv (the pinned versions kept) into --lock (default: beside the requirements, "
        ".lock), the wheels downloaded here, installed with no network. With --lock alone: "
        "a user image built from that lock as it is.",
    )
    build.add_argument("--requirements", type=Path, metavar="FILE",
                       help="your packages, one requirement per line as for pip")  # fmt: skip
    build.add_argument("--lock", type=Path, metavar="FILE",
                       help="the lock to write (with --requirements) or to build from")  # fmt: skip
    build.add_argument("--tag", metavar="NAME", help="the user image's tag (required for one)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(handler=build_command)
    info = image_commands.add_parser("info", help="show an image's ID, size and versions")
    info.add_argument("name", nargs="?", help="the image (default: RUNNER_IMAGE or the pinned one)")
    info.set_defaults(handler=info_command)
    verify = image_commands.add_parser(
        "verify",
        help="check an image against its lock and recorded package lists",
        description="List the Python and Debian packages inside a sandboxed container from "
        "the image (no network) and compare them, and every installed file's hash, with what "
        "the image records and, with --lock, with that lock.",
    )
    verify.add_argument(
        "name", nargs="?", help="the image (default: RUNNER_IMAGE or the pinned one)"
    )
    verify.add_argument("--lock", type=Path, metavar="FILE", help="the lock it must match")
    verify.set_defaults(handler=verify_command)


def build_command(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        show.errors.print(show.safe_text(message, limit=10_000))

    if args.requirements or args.lock or args.tag:
        if not args.tag:
            raise ExperimentExecutionError(
                "A user image needs a tag of its own.", hint="add --tag NAME."
            )
        built = build_user_image(
            DockerEngine(), args.tag, requirements=args.requirements, lock=args.lock,
            force=args.force, log=log,
        )  # fmt: skip
    else:
        built = build_image(DockerEngine(), force=args.force, log=log)
    if built.lock is not None and args.requirements:
        log(f"lock: {built.lock}")
    print(f"{built.tag} {built.image_id}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    name = args.name or ExperimentDefaults().image
    data = DockerEngine().image_inspect(name)
    labels = data["Config"].get("Labels") or {}
    table = Table.grid(padding=(0, 2))
    table.add_row("image", show.safe_text(name))
    table.add_row("id", data["Id"])
    table.add_row("size", f"{data['Size'] / 1e6:.0f} MB")
    table.add_row("python", show.safe_text(labels.get(LABEL_PYTHON, "?")))
    table.add_row("lock", show.safe_text(f"sha256:{labels.get(LABEL_LOCK, '?')}"))
    if LABEL_ADDED in labels:
        table.add_row("added", show.lines(labels[LABEL_ADDED]))
    table.add_row("packages", show.lines(labels.get(LABEL_PACKAGES, "?")))
    debian = parse_listing(labels.get(LABEL_DEBIAN, ""), "=")
    table.add_row("debian", f"{len(debian)} packages recorded" if debian else "not recorded")
    show.console.print(table)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    name = args.name or ExperimentDefaults().image
    report = verify_image(DockerEngine(), name, lock=args.lock)
    show.console.print(show.safe_text(f"{name} ({report.image_id})"))
    for what, problem in report.checks:
        line = Text.assemble(("ok  ", "green") if problem is None else ("FAIL", "red"), " ",
                             show.safe_text(what))  # fmt: skip
        if problem is not None:
            line.append(": ").append_text(show.safe_text(problem, limit=2000))
        show.console.print(line)
    return 0 if report.ok else 1
