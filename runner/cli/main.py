"""The ``runner`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from runner.backends.pool import pool_root_for
from runner.cli.demo import demo_jobs
from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, ExperimentSpec
from runner.core.settings import ExperimentDefaults
from runner.core.text import printable
from runner.experiment.codegen import CodeGenerator
from runner.experiment.runner import ExperimentRunner, Job
from runner.image.build import (
    LABEL_ADDED,
    LABEL_DEBIAN,
    LABEL_DEFINITION,
    LABEL_LOCK,
    LABEL_PACKAGES,
    LABEL_PYTHON,
    build_image,
    build_user_image,
    definition_digest,
    image_dir,
    parse_listing,
    verify_image,
)
from runner.mcp import service as mcp_server
from runner.results.history import ResultsHistory, best_first, ranking_metric
from runner.results.junit import junit_report
from runner.results.mlflow import MlflowTracker
from runner.sandbox.cleanup import cleanup
from runner.sandbox.engine import DockerEngine
from runner.sandbox.telemetry import CgroupTelemetry

# Piped output (CI logs, tests) gets a wide fixed width instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
errors = Console(stderr=True, highlight=False)


def safe_text(value: object, limit: int = 500) -> Text:
    """Text a script (or a file) controls, for a console: never markup, controls escaped.

    rich strips only a few control codes itself (not ESC, C1 or bidi characters).
    """
    return Text(printable(str(value), limit))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the script's, verbatim (more "--" included).
    script_args: list[str] = []
    if "--" in words:
        at = words.index("--")
        words, script_args = words[:at], words[at + 1 :]
    parser = _parser()
    args = parser.parse_args(words)
    if script_args and args.handler is not _run:
        parser.error("arguments after -- are for a script: only `runner run` takes them")
    args.script_args = script_args
    try:
        return int(args.handler(args))
    except ExperimentExecutionError as e:
        errors.print(f"error: {e}", soft_wrap=True, markup=False)
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted: every container this command started was removed")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        description="Run scikit-learn experiment scripts in hardened, single-use containers.",
        epilog="Exit codes: 0 success, 1 an experiment or check failed, 2 the runner "
        "could not run (the message says what to fix), 130 interrupted.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run one script in the sandbox and print its result",
        description="Run one script in a fresh hardened container and print its result.",
        usage="%(prog)s [options] script [-- script arguments...]",
        epilog="Everything after -- goes to the script's sys.argv[1:] as it is, e.g. "
        "`runner run exp.py -- --data train.csv`.",
    )
    run.add_argument("script", type=Path, help="the Python script to run")
    run.add_argument("--timeout", type=float, help="seconds before the container is killed")
    run.add_argument("--memory", help="memory cap, e.g. 512m or 2g (no swap)")
    run.add_argument("--cpus", type=float, help="CPU cap, e.g. 1.0")
    run.add_argument("--runtime", help="OCI runtime registered with the engine: runc or runsc")
    run.add_argument(
        "--image", help="the image to run in (default: RUNNER_IMAGE, else the pinned image)"
    )
    run.add_argument(
        "--input", action="append", default=[], type=Path, metavar="PATH",
        help="a file or directory to mount read-only at its own path (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "--transfer", choices=("auto", "bind", "copy"),
        help="how the script's files reach the sandbox: bind-mounted in place, copied "
        "through the engine's API, or auto (bind where the engine sees them; default)",
    )  # fmt: skip
    run.add_argument(
        "--outputs", type=Path, metavar="DIR",
        help="make the script's working directory writable and copy what it writes there "
        "(or to $OUTPUT_DIR) back into DIR",
    )  # fmt: skip
    run.add_argument("--name", help="experiment name to record (default: the script's name)")
    run.add_argument(
        "--warm", type=int, default=0, metavar="N",
        help="start N pooled containers with the libraries preloaded (for scripts below "
        "the script's parent directory)",
    )  # fmt: skip
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    _ray_option(run)
    _results_options(run)
    run.set_defaults(handler=_run)

    batch = commands.add_parser(
        "batch",
        help="run many scripts at once and show a leaderboard",
        description="Run every given script (files, or directories of *.py) in parallel, "
        "each in a fresh sandbox, here or on a Ray cluster (--ray); show progress and a "
        "leaderboard, or print one JSON result a line (--json).",
    )
    batch.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                       help="a script, or a directory whose *.py files are scripts")  # fmt: skip
    batch.add_argument("--timeout", type=float, help="seconds before a container is killed")
    batch.add_argument("--memory", help="memory cap of each run, e.g. 512m or 2g (no swap)")
    batch.add_argument("--cpus", type=float, help="CPU cap of each run, e.g. 1.0")
    batch.add_argument("--runtime", help="OCI runtime registered with the engine(s)")
    batch.add_argument("--image", help="the image to run in")
    batch.add_argument(
        "--input", action="append", default=[], type=Path, metavar="PATH",
        help="a file or directory every script sees read-only at its own path (repeatable)",
    )  # fmt: skip
    batch.add_argument(
        "--outputs", type=Path, metavar="DIR",
        help="copy what each script writes to its working directory back into DIR/NNNN-NAME",
    )  # fmt: skip
    batch.add_argument("--workers", type=int, help="runs at once (default: what fits)")
    batch.add_argument(
        "--warm", type=int, default=0, metavar="N",
        help="keep N single-use containers started ahead, libraries preloaded (with --ray: N on "
        "each node)",
    )  # fmt: skip
    batch.add_argument("--json", action="store_true",
                       help="print each result as one line of JSON as it finishes")  # fmt: skip
    batch.add_argument("--junit", type=Path, metavar="FILE",
                       help="write a JUnit XML report, one test case per script")  # fmt: skip
    _ray_option(batch)
    _results_options(batch)
    batch.set_defaults(handler=_batch)

    demo = commands.add_parser(
        "demo",
        help="run demo experiments in parallel on shipped data and show a leaderboard",
        description="Generate experiments for the shipped churn data set with CodeGenerator, "
        "run them in parallel in the sandbox, and rank them. Works offline.",
    )
    demo.add_argument("--workers", type=int, help="runs at once (default: what the host fits)")
    demo.add_argument(
        "--warm", type=int, default=0, metavar="N",
        help="keep N single-use containers started ahead, libraries preloaded",
    )  # fmt: skip
    _ray_option(demo)
    _results_options(demo)
    demo.set_defaults(handler=_demo)

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
    build.set_defaults(handler=_image_build)
    info = image_commands.add_parser("info", help="show an image's ID, size and versions")
    info.add_argument("name", nargs="?", help="the image (default: RUNNER_IMAGE or the pinned one)")
    info.set_defaults(handler=_image_info)
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
    verify.set_defaults(handler=_image_verify)

    clean = commands.add_parser("cleanup", help="remove containers left behind by crashed runs")
    clean.add_argument(
        "--all", action="store_true", help="also remove containers of runs still in progress"
    )
    clean.set_defaults(handler=_cleanup)

    doctor = commands.add_parser(
        "doctor", help="check the engine, the image and each runtime, and say what to fix"
    )
    doctor.set_defaults(handler=_doctor)

    mcp = commands.add_parser(
        "mcp",
        help="serve run_python, run_experiment and list_results to agents over MCP (stdio)",
        description="A Model Context Protocol server (needs the [mcp] extra): each tool call "
        "runs in a fresh sandbox under these limits, which clients can lower, never raise. "
        "Logs go to stderr; stdout is the protocol.",
    )
    mcp_server.add_arguments(mcp)
    _results_options(mcp)
    mcp.set_defaults(handler=_mcp)

    history = commands.add_parser("history", help="show recorded results, best first")
    history.add_argument(
        "--results", type=Path, help="the JSON Lines file (default: results.jsonl)"
    )
    history.add_argument("--name", help="only experiments whose name contains this")
    history.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    history.add_argument(
        "--mlflow", metavar="URI", help="read the results logged to this MLflow tracking URI"
    )
    history.set_defaults(handler=_history)
    return parser


def _ray_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray", metavar="ADDRESS",
        help="run on a Ray cluster: its address (HOST:PORT) or auto (default: RUNNER_CLUSTER, "
        "else this machine's engine)",
    )  # fmt: skip
    parser.add_argument(
        "--build-missing", action="store_true",
        help="with --ray: a node whose engine lacks the runner's own image builds it first",
    )  # fmt: skip


def _results_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        help="append results to this JSON Lines file (default: results.jsonl)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not record the results")
    parser.add_argument(
        "--mlflow", metavar="URI",
        help="also log each result as an MLflow run (default: RUNNER_TRACKING_URI)",
    )  # fmt: skip


def _history_for(args: argparse.Namespace, settings: ExperimentDefaults) -> ResultsHistory | None:
    if args.no_record:
        return None
    return ResultsHistory(args.results or settings.results_file)


def _run(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    files = [args.script.resolve().parent, *(Path(i).resolve() for i in args.input or ())]
    with ExperimentRunner(
        timeout=args.timeout,
        image=args.image,
        memory_limit=args.memory,
        cpu_limit=args.cpus,
        runtime=args.runtime,
        inputs=args.input,
        history=_history_for(args, settings),
        warm_pool=args.warm,
        # The pool root nearest the script and inputs; None (none may be): the default.
        pool_root=pool_root_for(files, None),
        transfer=args.transfer,
        outputs_dir=args.outputs,
        tracking_uri=args.mlflow,
        settings=settings,
        cluster=args.ray,
        build_missing=args.build_missing,
    ) as runner:
        if args.warm:
            _note_pool(runner)
            runner.wait_for_warm(120)
        spec = ExperimentSpec(experiment_name=args.name or args.script.stem, model_type="script")
        result = runner.run(args.script, spec, 0, args=args.script_args)
    if args.json:
        # ensure_ascii also escapes C1 and bidi characters (and DEL), which JSON allows raw.
        print(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=True))
    else:
        _summary(result)
    return 0 if result.success else 1


def _demo(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    with ExperimentRunner(
        history=_history_for(args, settings),
        warm_pool=args.warm,
        tracking_uri=args.mlflow,
        settings=settings,
        cluster=args.ray,
        build_missing=args.build_missing,
    ) as runner:
        return _run_demo(args, runner, settings)


def _run_demo(
    args: argparse.Namespace, runner: ExperimentRunner, settings: ExperimentDefaults
) -> int:
    jobs = demo_jobs(CodeGenerator(settings.experiments_dir))
    workers = args.workers or runner.default_workers()
    if args.warm:
        _note_pool(runner)
    warm = f", {runner.warm_pool_size} kept warm" if runner.warm_pool_size else ""
    console.print(
        f"Running {len(jobs)} experiments on the churn demo data, {workers} at once, "
        f"each in a fresh sandbox ({runner.policy.image}, {runner.policy.cpu_limit:g} CPU, "
        f"{runner.policy.memory_limit}{warm})"
    )
    results = _run_with_progress(runner, jobs, workers, "experiments", console, _print_outcome)
    console.print(_leaderboard(results, title="Leaderboard"))
    return 0 if all(r.success for r in results) else 1


def _run_with_progress(
    runner: ExperimentRunner,
    jobs: list[Job],
    workers: int,
    what: str,
    screen: Console,
    report: Callable[[Console, ExperimentResult], None],
) -> list[ExperimentResult]:
    """``run_many`` under a progress bar on ``screen``, each result reported as it comes."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=screen,
    ) as progress:
        task = progress.add_task(what, total=len(jobs))

        def done(index: int, result: ExperimentResult) -> None:
            progress.advance(task)
            report(progress.console, result)

        return runner.run_many(jobs, max_workers=workers, on_result=done)


def _print_outcome(screen: Console, result: ExperimentResult) -> None:
    screen.print(Text.assemble("  ", _outcome(result), ": ", safe_text(result.experiment_name)))


def _print_json_line(screen: Console, result: ExperimentResult) -> None:
    """One result on stdout (the progress is on ``screen``, stderr)."""
    # ensure_ascii also escapes C1 and bidi characters, which JSON allows raw.
    sys.stdout.write(json.dumps(result.model_dump(mode="json"), ensure_ascii=True) + "\n")
    sys.stdout.flush()


def _batch(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    scripts = _scripts(args.paths)
    files = [*(script.parent for script in scripts), *(Path(i).resolve() for i in args.input)]
    with ExperimentRunner(
        timeout=args.timeout,
        image=args.image,
        memory_limit=args.memory,
        cpu_limit=args.cpus,
        runtime=args.runtime,
        inputs=args.input,
        history=_history_for(args, settings),
        warm_pool=args.warm,
        # The pool root nearest every script and input (None when none may be).
        pool_root=pool_root_for(files, None) if args.warm else None,
        outputs_dir=args.outputs,
        settings=settings,
        cluster=args.ray,
        build_missing=args.build_missing,
    ) as runner:
        if args.warm:
            _note_pool(runner)
            runner.wait_for_warm(120)
        jobs: list[Job] = [
            (script, ExperimentSpec(experiment_name=name, model_type="script"), 0)
            for script, name in zip(scripts, _names(scripts), strict=True)
        ]
        workers = args.workers or runner.default_workers()
        # With --json, stdout carries only the results; the progress goes to stderr.
        screen = errors if args.json else console
        where = f"Ray cluster {runner.cluster}" if runner.cluster else "this machine"
        screen.print(
            safe_text(f"Running {len(jobs)} script(s) on {where}, {workers} at once", limit=1000)
        )
        report = _print_json_line if args.json else _print_outcome
        results = _run_with_progress(runner, jobs, workers, "scripts", screen, report)
    if args.junit:
        args.junit.write_bytes(junit_report(results, suite="runner batch"))
    if not args.json:
        console.print(_leaderboard(results, title="Leaderboard"))
    return 0 if all(r.success for r in results) else 1


def _scripts(paths: Sequence[Path]) -> list[Path]:
    """The scripts ``paths`` name: files as they are, directories' ``*.py`` in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.py") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise ExperimentExecutionError(
                f"No such script or directory: {path}",
                hint="pass Python files, or directories holding *.py files.",
            )
    if not found:
        raise ExperimentExecutionError(
            "No scripts found.", hint="pass Python files, or directories holding *.py files."
        )
    return list(dict.fromkeys(p.resolve() for p in found))


def _names(scripts: Sequence[Path]) -> list[str]:
    """Each script's experiment name: its stem, with its directory where stems repeat."""
    stems = [script.stem for script in scripts]
    return [
        f"{script.parent.name}/{script.stem}" if stems.count(script.stem) > 1 else script.stem
        for script in scripts
    ]


def _note_pool(runner: ExperimentRunner) -> None:
    if runner.backend.pool_unavailable:
        errors.print(safe_text(f"note: {runner.backend.pool_unavailable}"))


def _image_build(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        errors.print(safe_text(message, limit=10_000))

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


def _image_info(args: argparse.Namespace) -> int:
    name = args.name or ExperimentDefaults().image
    data = DockerEngine().image_inspect(name)
    labels = data["Config"].get("Labels") or {}
    table = Table.grid(padding=(0, 2))
    table.add_row("image", safe_text(name))
    table.add_row("id", data["Id"])
    table.add_row("size", f"{data['Size'] / 1e6:.0f} MB")
    table.add_row("python", safe_text(labels.get(LABEL_PYTHON, "?")))
    table.add_row("lock", safe_text(f"sha256:{labels.get(LABEL_LOCK, '?')}"))
    if LABEL_ADDED in labels:
        table.add_row("added", _lines(labels[LABEL_ADDED]))
    table.add_row("packages", _lines(labels.get(LABEL_PACKAGES, "?")))
    debian = parse_listing(labels.get(LABEL_DEBIAN, ""), "=")
    table.add_row("debian", f"{len(debian)} packages recorded" if debian else "not recorded")
    console.print(table)
    return 0


def _lines(listing: str) -> Text:
    """A label's space-separated items, one a line, each made safe to print."""
    return Text("\n").join(safe_text(item) for item in listing.split()) if listing else Text("-")


def _image_verify(args: argparse.Namespace) -> int:
    name = args.name or ExperimentDefaults().image
    report = verify_image(DockerEngine(), name, lock=args.lock)
    console.print(safe_text(f"{name} ({report.image_id})"))
    for what, problem in report.checks:
        line = Text.assemble(("ok  ", "green") if problem is None else ("FAIL", "red"), " ",
                             safe_text(what))  # fmt: skip
        if problem is not None:
            line.append(": ").append_text(safe_text(problem, limit=2000))
        console.print(line)
    return 0 if report.ok else 1


def _cleanup(args: argparse.Namespace) -> int:
    removed = cleanup(everything=args.all, telemetry=CgroupTelemetry())
    for container in removed:
        print(f"removed {container.name} ({container.id[:12]})")
    print(f"{len(removed)} container(s) removed")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    ok = True

    def report(good: bool, what: str, fix: str = "") -> None:
        nonlocal ok
        ok = ok and good
        line = Text.assemble(("ok  ", "green") if good else ("FAIL", "red"), " ", safe_text(what))
        if fix:
            line.append("\n      fix: ").append_text(safe_text(fix))
        console.print(line)

    try:
        engine = DockerEngine()
        runtimes = engine.runtimes()
    except ExperimentExecutionError as e:
        report(False, "Docker engine: not reachable", e.hint or "")
        return 1
    podman = engine.kind() == "podman"
    report(True, f"engine: {engine.describe()} (runtimes: {', '.join(sorted(runtimes))})")

    if not engine.image_exists(settings.image):
        report(False, f"image {settings.image}: missing", "runner image build")
        return 1
    labels = engine.image_inspect(settings.image)["Config"].get("Labels") or {}
    try:
        current = labels.get(LABEL_DEFINITION) == definition_digest(image_dir())
    except ExperimentExecutionError:
        current = True  # no checkout to compare with
    report(
        current,
        f"image {settings.image}: {engine.image_id(settings.image)[:19]}"
        + ("" if current else " (older than images/sandbox)"),
        "" if current else "runner image build",
    )

    # The doctor checks this machine's engine, whatever RUNNER_CLUSTER says.
    backend = ExperimentRunner(engine=engine, settings=settings, cluster="").backend
    report(True, f"files: {backend.describe_files()}")
    telemetry = "read from the engine's cgroups" if backend.telemetry_available else "not available"
    report(True, f"telemetry (peak memory, CPU time): {telemetry}")

    wanted = settings.runtime
    if podman:
        # Its Docker-compatible API runs every container under the service's own runtime.
        console.print(
            "note Podman's Docker-compatible API cannot choose a runtime per run: every "
            "sandbox runs under the service's default, and a run that asks for another "
            "(RUNNER_RUNTIME) is refused"
        )
        good, detail = _smoke_test(engine, None)
        report(good, f"runtime (Podman's default): {detail}")
        return 0 if ok else 1
    if wanted and wanted not in runtimes:
        report(False, f"runtime {wanted} (RUNNER_RUNTIME): not registered", _RUNSC_FIX)
    if "runsc" not in runtimes:
        console.print(f"note gVisor (runsc) is not registered; optional, for stronger isolation: "
                      f"{_RUNSC_FIX}")  # fmt: skip
    for runtime in sorted(r for r in runtimes if not r.startswith("io.containerd")):
        good, detail = _smoke_test(engine, runtime)
        report(good, f"runtime {runtime}: {detail}")
    return 0 if ok else 1


_RUNSC_FIX = (
    "apt-get install runsc, add it to /etc/docker/daemon.json as "
    '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}} '
    "and reload dockerd (SIGHUP)"
)


def _smoke_test(engine: DockerEngine, runtime: str | None) -> tuple[bool, str]:
    """Run a one-line script under ``runtime`` with every control in place."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        script = directory / "doctor.py"
        script.write_text('import json, sys\nprint(json.dumps({"success": True}))\n')
        script.chmod(0o644)
        runner = ExperimentRunner(timeout=60, runtime=runtime, engine=engine, cluster="")
        try:
            raw = runner.run_script_directly(script)
        except ExperimentExecutionError as e:
            return False, str(e)
    if raw["returncode"] == 0:
        return True, "runs a sandboxed script"
    return False, f"sandboxed script exited {raw['returncode']}: {raw['stderr'][-300:]}"


def _mcp(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    history = None if args.no_record else args.results or settings.results_file
    return mcp_server.serve(args, history)


def _history(args: argparse.Namespace) -> int:
    path = args.results or ExperimentDefaults().results_file
    if args.mlflow:
        path, unreadable = args.mlflow, 0
        results = MlflowTracker(args.mlflow).read(name=args.name)
    else:
        results, unreadable = ResultsHistory(path).read()
    if args.name:
        results = [r for r in results if args.name in r.experiment_name]
    if unreadable:
        errors.print(safe_text(f"note: skipped {unreadable} unreadable line(s) in {path}"))
    if not results:
        matching = f" matching {args.name!r}" if args.name else ""
        console.print(safe_text(f"no results in {path}{matching}"))
        return 0
    shown = best_first(results)[: args.limit]
    console.print(_leaderboard(shown, title=f"{path}: {len(results)} result(s), best first"))
    return 0


def _leaderboard(results: Sequence[ExperimentResult], title: str) -> Table:
    table = Table(title=safe_text(title))
    for column in ("#", "experiment", "model", "main metric", "time", "outcome", "when (UTC)"):
        table.add_column(column, justify="right" if column in ("#", "time") else "left")
    for rank, result in enumerate(best_first(results), 1):
        metric = ranking_metric(result)
        table.add_row(
            str(rank),
            safe_text(result.experiment_name),
            safe_text(result.model_type),
            f"{metric[0]} {metric[1]:.4f}" if metric and result.success else "-",
            f"{result.execution_time:.2f}s",
            _outcome(result),
            result.timestamp.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def _outcome(result: ExperimentResult) -> Text:
    if result.success:
        return Text("ok")
    if result.timed_out:
        return Text("timed out")
    if result.oom_killed:
        return Text("out of memory")
    return Text("failed: ").append_text(safe_text(result.error_message or "", limit=60))


def _summary(result: ExperimentResult) -> None:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    detail = metrics if result.success else result.error_message or ""
    # Script text in a message is escaped (printable), so a newline is the runner's: a hint.
    first, *more = detail.split("\n")
    console.print(
        Text.assemble(
            _outcome(result).plain.split(":")[0],
            " ",
            safe_text(result.experiment_name),
            f" ({result.execution_time:.2f}s, exit {result.exit_code}): ",
            safe_text(first, limit=10_000),
        )
    )
    for line in more:
        console.print(safe_text(line, limit=10_000))
    for artifact in result.artifacts:
        console.print(
            Text.assemble("  artifact ", safe_text(artifact.path), f" ({artifact.size} bytes)")
        )
    if result.artifacts_message:
        console.print(Text.assemble("  ", safe_text(result.artifacts_message, limit=2000)))
    if result.tracking_error:
        errors.print(Text.assemble("note: ", safe_text(result.tracking_error, limit=2000)))


if __name__ == "__main__":
    sys.exit(main())
