"""``runner doctor`` and ``runner cleanup``: the engine, the image and each runtime
checked, and what crashed runs left behind removed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from runner.backends.local import DockerBackend
from runner.cli import show
from runner.conformance.reports import as_json, as_junit, as_sarif
from runner.conformance.suite import Conformance, run_conformance
from runner.core.config_file import find_policy_file
from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.image.definition import LABEL_DEFINITION, image_dir
from runner.image.recipe import definition_digest
from runner.sandbox.cleanup import cleanup
from runner.sandbox.cold import run_code
from runner.sandbox.engine import DockerEngine
from runner.sandbox.policy import SandboxPolicy
from runner.sandbox.telemetry import CgroupTelemetry


def add_commands(commands: Any) -> None:
    clean = commands.add_parser("cleanup", help="remove containers left behind by crashed runs")
    clean.add_argument(
        "--all", action="store_true", help="also remove containers of runs still in progress"
    )
    clean.set_defaults(handler=cleanup_command)

    doctor = commands.add_parser(
        "doctor", help="check the engine, the image and each runtime, and say what to fix"
    )
    doctor.add_argument(
        "--conformance",
        action="store_true",
        help="attack this host's sandbox from inside, under the configured engine, runtime, "
        "image and policy: exit 0 every control holds, 4 one fails, 2 the probes cannot run",
    )
    doctor.add_argument(
        "--junit",
        type=Path,
        metavar="FILE",
        help="with --conformance: a JUnit XML report, one case per probe",
    )
    doctor.add_argument(
        "--sarif",
        type=Path,
        metavar="FILE",
        help="with --conformance: a SARIF 2.1.0 log, one rule per control",
    )
    doctor.add_argument(
        "--json", action="store_true", help="with --conformance: print the outcome as JSON"
    )
    doctor.set_defaults(handler=doctor_command)


def cleanup_command(args: argparse.Namespace) -> int:
    removed = cleanup(everything=args.all, telemetry=CgroupTelemetry())
    for container in removed:
        print(f"removed {container.name} ({container.id[:12]})")
    print(f"{len(removed)} container(s) removed")
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    settings = ExperimentDefaults()
    if args.conformance:
        return conformance_command(args, settings)
    if args.junit or args.sarif or args.json:
        raise ExperimentExecutionError(
            "--junit, --sarif and --json report on the conformance probes.",
            hint="add --conformance.",
        )
    ok = True

    def report(good: bool, what: str, fix: str = "") -> None:
        nonlocal ok
        ok = ok and good
        line = Text.assemble(
            ("ok  ", "green") if good else ("FAIL", "red"), " ", show.safe_text(what)
        )
        if fix:
            line.append("\n      fix: ").append_text(show.safe_text(fix))
        show.console.print(line)

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
    backend = DockerBackend(
        SandboxPolicy(image=settings.image, runtime=settings.runtime),
        engine=engine,
        transfer=settings.transfer,
        slots_dir=settings.cache_dir / "pool",
    )
    report(True, f"files: {backend.describe_files()}")
    telemetry = "read from the engine's cgroups" if backend.telemetry_available else "not available"
    report(True, f"telemetry (peak memory, CPU time): {telemetry}")

    wanted = settings.runtime
    if podman:
        # Its Docker-compatible API runs every container under the service's own runtime.
        show.console.print(
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
        show.console.print(
            f"note gVisor (runsc) is not registered; optional, for stronger isolation: {_RUNSC_FIX}"
        )
    for runtime in sorted(r for r in runtimes if not r.startswith("io.containerd")):
        good, detail = _smoke_test(engine, runtime)
        report(good, f"runtime {runtime}: {detail}")
    return 0 if ok else 1


def conformance_command(args: argparse.Namespace, settings: ExperimentDefaults) -> int:
    """Every probe under the configured policy; the reports asked for; 0, 4 or 2."""
    found = find_policy_file()
    screen = show.errors if args.json else show.console
    screen.print(
        show.safe_text(
            f"Conformance of {settings.image} ({settings.runtime or 'default runtime'}, "
            f"{settings.memory_limit}, {settings.cpu_limit:g} CPU, {settings.pids_limit} PIDs; "
            f"policy: {found.describe() if found else 'RUNNER_* and defaults'})",
            limit=2000,
        )
    )
    outcome = run_conformance(DockerEngine(), settings)
    if args.junit:
        args.junit.write_bytes(as_junit(outcome))
    if args.sarif:
        args.sarif.write_text(as_sarif(outcome), encoding="utf-8")
    if args.json:
        sys.stdout.write(as_json(outcome))
    else:
        show.console.print(_findings_table(outcome))
    counts = {s: sum(f.status == s for f in outcome.findings) for s in ("pass", "fail", "error")}
    screen.print(
        show.safe_text(
            f"{counts['pass']} of {len(outcome.findings)} controls hold, {counts['fail']} "
            f"fail, {counts['error']} not observed; {outcome.seconds:.1f} s on "
            f"{outcome.engine} ({outcome.runtime}), image {outcome.image_id[:19]}",
            limit=2000,
        )
    )
    return outcome.exit_code


def _findings_table(outcome: Conformance) -> Table:
    table = Table()
    for column in ("", "probe", "control", "what the sandbox showed"):
        table.add_column(column)
    marks = {"pass": ("ok", "green"), "fail": ("FAIL", "red"), "error": ("?", "yellow")}
    for finding in outcome.findings:
        mark, style = marks[finding.status]
        table.add_row(
            Text(mark, style=style),
            finding.probe.id,
            finding.probe.control,
            show.safe_text(finding.detail, limit=400),
        )
    return table


_RUNSC_FIX = (
    "apt-get install runsc, add it to /etc/docker/daemon.json as "
    '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}} '
    "and reload dockerd (SIGHUP)"
)


def _smoke_test(engine: DockerEngine, runtime: str | None) -> tuple[bool, str]:
    """Run a one-line script under ``runtime`` with every control in place."""
    code = 'import json\nprint(json.dumps({"success": True}))\n'
    try:
        execution = run_code(
            engine, SandboxPolicy(image=ExperimentDefaults().image, runtime=runtime), code,
            timeout=60,
        )  # fmt: skip
    except ExperimentExecutionError as e:
        return False, str(e)
    if execution.exit_code == 0:
        return True, "runs a sandboxed script"
    return False, f"sandboxed script exited {execution.exit_code}: {execution.stderr[-300:]}"
