"""The ``runner`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.cleanup import cleanup
from runner.codegen import CodeGenerator
from runner.demo import run_demo
from runner.engine import DockerEngine
from runner.exceptions import ExperimentExecutionError
from runner.experiment_runner import ExperimentRunner
from runner.image import LABEL_LOCK, LABEL_PACKAGES, LABEL_PYTHON, build_image
from runner.models import ExperimentResult, ExperimentSpec
from runner.settings import ExperimentDefaults


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ExperimentExecutionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        description="Run scikit-learn experiment scripts in hardened, single-use containers.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one script in the sandbox and print its result")
    run.add_argument("script", type=Path, help="the Python script to run")
    run.add_argument("--timeout", type=float, help="seconds before the container is killed")
    run.add_argument("--memory", help="memory cap, e.g. 512m or 2g (no swap)")
    run.add_argument("--cpus", type=float, help="CPU cap, e.g. 1.0")
    run.add_argument("--runtime", help="OCI runtime registered with the engine, e.g. runsc")
    run.add_argument(
        "--input", action="append", default=[], type=Path, metavar="PATH",
        help="a file or directory to mount read-only at its own path (repeatable)",
    )  # fmt: skip
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="generate and run demo experiments on shipped data")
    demo.set_defaults(handler=_demo)

    image = commands.add_parser("image", help="build or describe the pinned sandbox image")
    image_commands = image.add_subparsers(required=True, metavar="ACTION")
    build = image_commands.add_parser("build", help="build the image (and its base) offline")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(handler=_image_build)
    info = image_commands.add_parser("info", help="show the image's ID, size and versions")
    info.set_defaults(handler=_image_info)

    clean = commands.add_parser("cleanup", help="remove containers left behind by crashed runs")
    clean.add_argument(
        "--all", action="store_true", help="also remove containers of runs still in progress"
    )
    clean.set_defaults(handler=_cleanup)
    return parser


def _run(args: argparse.Namespace) -> int:
    runner = ExperimentRunner(
        timeout=args.timeout,
        memory_limit=args.memory,
        cpu_limit=args.cpus,
        runtime=args.runtime,
        inputs=args.input,
    )
    spec = ExperimentSpec(experiment_name=args.script.stem, model_type="unknown")
    result = runner.run(args.script, spec, 0)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        _summary(result)
    return 0 if result.success else 1


def _demo(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    runner = ExperimentRunner(settings=settings)
    generator = CodeGenerator(settings.experiments_dir)
    print(f"running demo experiments in the sandbox ({runner.policy.image})")
    results = run_demo(runner, generator, report=_summary)
    return 0 if all(r.success for r in results) else 1


def _image_build(args: argparse.Namespace) -> int:
    built = build_image(DockerEngine(), force=args.force)
    print(f"{built.tag} {built.image_id}")
    return 0


def _image_info(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    data = DockerEngine().image_inspect(settings.image)
    labels = data["Config"].get("Labels") or {}
    print(f"image:    {settings.image}")
    print(f"id:       {data['Id']}")
    print(f"size:     {data['Size'] / 1e6:.0f} MB")
    print(f"python:   {labels.get(LABEL_PYTHON, '?')}")
    print(f"lock:     sha256:{labels.get(LABEL_LOCK, '?')}")
    print("packages: " + "\n          ".join(labels.get(LABEL_PACKAGES, "?").split()))
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    removed = cleanup(everything=args.all)
    for container in removed:
        print(f"removed {container.name} ({container.id[:12]})")
    print(f"{len(removed)} container(s) removed")
    return 0


def _summary(result: ExperimentResult) -> None:
    mark = "ok  " if result.success else "FAIL"
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    detail = metrics if result.success else result.error_message
    print(f"{mark} {result.experiment_name} ({result.execution_time:.2f}s): {detail}")


if __name__ == "__main__":
    sys.exit(main())
