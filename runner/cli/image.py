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
from runner.image.build import build_image, build_user_image, lock_image
from runner.image.definition import (
    IMAGE_ID,
    LABEL_ADDED,
    LABEL_DEBIAN,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LABEL_PYTHON,
    image_dir,
    recorded_image_id,
)
from runner.image.listing import parse_listing
from runner.image.verify import load_image, rebuild_and_compare, save_image, verify_image
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
    build.add_argument("--debian", nargs="+", metavar="PKG", default=[],
                       help="Debian packages a user image adds (names only), locked into "
                       "LOCK.debian and unpacked with no maintainer script")  # fmt: skip
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
    verify.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild it from its locks (--lock, default the shipped one) with an empty "
        "cache and compare the image IDs, naming differing files",
    )
    verify.set_defaults(handler=verify_command)
    lock = image_commands.add_parser(
        "lock",
        help="re-lock the pinned image: Python (uv), Debian (mmdebstrap), and its image ID",
        description="Resolve requirements.in into requirements.lock with uv, the Debian base "
        "into debian.lock against RUNNER_DEBIAN_MIRROR with mmdebstrap (each .deb's version "
        "and SHA-256), build the image from both and record its ID in image-id.",
    )
    lock.set_defaults(handler=lock_command)
    save = image_commands.add_parser("save", help="write an image to an archive file")
    save.add_argument("name", help="the image")
    save.add_argument("file", type=Path, help="the archive to write")
    save.set_defaults(handler=save_command)
    load = image_commands.add_parser(
        "load", help="load an image archive, its ID checked against the lock"
    )
    load.add_argument("file", type=Path, help="an archive from `runner image save`")
    load.add_argument("--lock", type=Path, metavar="FILE",
                      help="a user image's lock (its LOCK.image-id is checked); default: the "
                      "shipped lock's image-id")  # fmt: skip
    load.set_defaults(handler=load_command)
    ident = image_commands.add_parser(
        "id", help="print the image ID the locks must give (a cache key for CI), no engine needed"
    )
    ident.add_argument("--lock", type=Path, metavar="FILE",
                       help="a user image's lock (default: the pinned image's)")  # fmt: skip
    ident.set_defaults(handler=id_command)


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
            debian=args.debian, force=args.force, log=log,
        )  # fmt: skip
    elif args.debian:
        raise ExperimentExecutionError(
            "--debian adds packages to a user image.",
            hint="add --requirements FILE (or --lock FILE) and --tag NAME.",
        )
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


def _log(message: str) -> None:
    show.errors.print(show.safe_text(message, limit=10_000))


def lock_command(args: argparse.Namespace) -> int:
    built = lock_image(DockerEngine(), log=_log)
    print(f"{built.tag} {built.image_id}")
    return 0


def save_command(args: argparse.Namespace) -> int:
    ident = save_image(DockerEngine(), args.name, args.file)
    print(f"{args.file} {ident}")
    return 0


def _id_file(lock: Path | None) -> Path:
    """Where the image ID of ``lock`` (default: the pinned image's locks) is recorded."""
    return lock.with_name(lock.name + ".image-id") if lock else image_dir() / IMAGE_ID


def id_command(args: argparse.Namespace) -> int:
    id_file = _id_file(args.lock)
    expected = recorded_image_id(id_file)
    if expected is None:
        show.errors.print(
            show.safe_text(f"{id_file} records no image ID: build the image once to record it")
        )
        return 1
    print(expected)
    return 0


def load_command(args: argparse.Namespace) -> int:
    id_file = _id_file(args.lock)
    expected = recorded_image_id(id_file)
    ident = load_image(DockerEngine(), args.file, expected_id=expected)
    checked = f"matches {id_file}" if expected else f"not checked: {id_file} records no ID"
    print(f"{ident} ({checked})")
    return 0


def rebuild_command(args: argparse.Namespace, name: str) -> int:
    result = rebuild_and_compare(DockerEngine(), name, lock=args.lock, log=_log)
    show.console.print(show.safe_text(f"{name} {result.image_id}"))
    show.console.print(show.safe_text(f"rebuilt {result.rebuilt_id}"))
    if result.ok:
        show.console.print(Text.assemble(("ok  ", "green"), " the rebuild has the same image ID"))
        return 0
    show.console.print(Text.assemble(("FAIL", "red"), f" {len(result.differing)} entries differ:"))
    for entry in result.differing[:200]:
        show.console.print(show.safe_text(f"  {entry}"))
    return 1


def verify_command(args: argparse.Namespace) -> int:
    name = args.name or ExperimentDefaults().image
    if args.rebuild:
        return rebuild_command(args, name)
    report = verify_image(DockerEngine(), name, lock=args.lock)
    show.console.print(show.safe_text(f"{name} ({report.image_id})"))
    for what, problem in report.checks:
        line = Text.assemble(("ok  ", "green") if problem is None else ("FAIL", "red"), " ",
                             show.safe_text(what))  # fmt: skip
        if problem is not None:
            line.append(": ").append_text(show.safe_text(problem, limit=2000))
        show.console.print(line)
    return 0 if report.ok else 1
