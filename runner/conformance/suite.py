"""``run_conformance``: the probes run in real sandboxes of the configured policy.

Three sandboxes run at once, each under every control of a run (``main``,
``cpu``, ``memory``; see ``runner.conformance.script``), beside two host-side
checks: the runner's check after create against an engine that drops controls
(``runner.conformance.verification``) and the image against its lock. Then
each probe judges what they showed (``runner.conformance.probes``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from runner.conformance.probes import MASKED, UNWRITABLE, Expected, Finding, Seen, judge
from runner.conformance.script import PROBE
from runner.conformance.verification import refusal
from runner.core.exceptions import ExperimentExecutionError
from runner.core.options import RunnerOptions
from runner.core.settings import DEFAULT_IMAGE, ExperimentDefaults
from runner.core.sizes import parse_size
from runner.image.definition import image_dir
from runner.image.verify import verify_image
from runner.sandbox.cold import ColdRuns
from runner.sandbox.engine import DockerEngine
from runner.sandbox.lifecycle import ActiveRuns, Execution
from runner.sandbox.policy import SandboxPolicy, policy_from, sandbox_environment
from runner.sandbox.probe import EngineFacts, FileRoute, probe
from runner.sandbox.request import RunRequest

#: Seconds the CPU sandbox spins before it reports, and its deadline.
SPIN_SECONDS = 2.0
DEADLINE = 6.0
#: The other sandboxes' bound: they finish in seconds.
PROBE_TIMEOUT = 120.0
#: Environment variables Podman puts into every container (constants, none of the caller's).
PODMAN_ENVIRONMENT = {"container": "podman", "TERM": "xterm"}
SandboxName = Literal["main", "cpu", "memory"]


class Sandboxes(Protocol):
    """Runs one probe request in a sandbox: the runner's cold runs, or a test's mutant."""

    def __call__(self, request: RunRequest) -> Execution: ...


@dataclass(frozen=True)
class Conformance:
    """The outcome: each probe's finding, what was checked, how long it took."""

    findings: list[Finding]
    engine: str
    runtime: str
    image: str
    image_id: str
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 every control holds, 4 one fails, 2 one could not be observed."""
        statuses = {f.status for f in self.findings}
        return 4 if "fail" in statuses else 2 if "error" in statuses else 0


def policy_of(settings: ExperimentDefaults) -> SandboxPolicy:
    """The sandbox policy the settings (``RUNNER_*``, the policy file) configure."""
    return policy_from(RunnerOptions(), settings)


@dataclass(frozen=True)
class ProbeFiles:
    """The probe's directory (what its sandboxes mount) and a file beside it they must
    not see."""

    directory: Path
    script: Path
    canary: Path

    @classmethod
    def make(cls, parent: Path) -> ProbeFiles:
        parent.chmod(0o755)
        directory = parent / "probe"
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        script = directory / "conformance_probe.py"
        script.write_text(PROBE)
        script.chmod(0o644)
        canary = parent / "canary"
        canary.write_text("the sandbox must not see this\n")
        canary.chmod(0o644)
        return cls(directory, script, canary)

    def request(
        self, mode: SandboxName, params: Mapping[str, object], timeout: float, output_limit: int
    ) -> RunRequest:
        args = (mode, json.dumps(params))
        return RunRequest(self.script, (self.directory,), timeout, output_limit, args=args)


def expectations(
    policy: SandboxPolicy, settings: ExperimentDefaults, facts: EngineFacts, files: ProbeFiles
) -> Expected:
    """What each probe holds the sandboxes to."""
    env = {**sandbox_environment(policy.cpu_limit), "HOSTNAME": "sandbox"}
    if facts.podman:
        env.update(PODMAN_ENVIRONMENT)
    hidden = [str(files.canary), "/var/run/docker.sock", "/run/docker.sock", "/etc/docker",
              "/var/lib/docker", "/run/containerd/containerd.sock"]  # fmt: skip
    here = Path.cwd()
    if here != Path("/") and here not in files.directory.parents:
        hidden.append(str(here))  # where the runner was started
    return Expected(
        policy=policy,
        output_limit=settings.output_limit,
        user_kernel=facts.user_kernel,
        environment=env,
        script_dir=str(files.directory),
        hidden=tuple(hidden),
        cores=facts.capacity()[0],
        deadline=DEADLINE,
    )


def requests(files: ProbeFiles, expected: Expected) -> dict[SandboxName, RunRequest]:
    """The three sandboxes' requests, each bounded (see ``runner.conformance.script``)."""
    policy = expected.policy
    memory_bound = 2 * parse_size(policy.memory_limit) + (64 << 20)
    main = {"hidden": list(expected.hidden), "masked": MASKED, "unwritable": UNWRITABLE,
            "pids_limit": policy.pids_limit}  # fmt: skip
    # The CPU sandbox's report must survive in the kept tail of its output.
    cpu = {"filler": expected.output_limit + (64 << 10), "spin": SPIN_SECONDS,
           "workers": expected.cores + 1}  # fmt: skip
    kept = max(expected.output_limit, 1 << 20)  # the main report is a few kB
    return {
        "main": files.request("main", main, PROBE_TIMEOUT, kept),
        "cpu": files.request("cpu", cpu, DEADLINE, expected.output_limit),
        "memory": files.request("memory", {"bound": memory_bound}, PROBE_TIMEOUT, kept),
    }


def observe(
    sandboxes: Sandboxes,
    runs: dict[SandboxName, RunRequest],
    *,
    host_checks: dict[str, Callable[[Seen], None]] | None = None,
) -> Seen:
    """Run the sandboxes (and the host-side checks) at once; what they showed."""
    seen = Seen()
    checks = host_checks or {}
    with ThreadPoolExecutor(max_workers=len(runs) + len(checks)) as pool:
        started: dict[str, Future[object]] = {
            name: pool.submit(sandboxes, request) for name, request in runs.items()
        }
        started.update({name: pool.submit(check, seen) for name, check in checks.items()})
        for name, future in started.items():
            try:
                value = future.result()
            except ExperimentExecutionError as e:
                seen.errors[name] = str(e)
                continue
            if name in runs:
                setattr(seen, name, value)
    return seen


def run_conformance(engine: DockerEngine, settings: ExperimentDefaults) -> Conformance:
    """Every probe against ``engine`` under the configured policy; raises what keeps them
    from running at all (no image, an unregistered runtime)."""
    began = time.monotonic()
    policy = policy_of(settings)
    facts = probe(engine, policy, settings.transfer)
    runs = ColdRuns(engine, policy, facts, FileRoute(settings.transfer, facts.shares_files),
                    ActiveRuns())  # fmt: skip

    def cold(request: RunRequest) -> Execution:
        return runs.run(request, None, object())

    def verification(seen: Seen) -> None:
        shown = refusal(engine, policy, facts)
        seen.refused, seen.dropped, seen.started = shown.refused, shown.dropped, shown.started

    def image(seen: Seen) -> None:
        checked = verify_image(engine, settings.image, lock=_shipped_lock(settings.image))
        seen.image_checks, seen.image_id = checked.checks, checked.image_id

    with tempfile.TemporaryDirectory(prefix="runner-conformance-") as tmp:
        files = ProbeFiles.make(Path(tmp))
        expected = expectations(policy, settings, facts, files)
        seen = observe(
            cold,
            requests(files, expected),
            host_checks={"verification": verification, "image": image},
        )
    return Conformance(
        findings=judge(seen, expected),
        engine=engine.describe(),
        runtime=policy.runtime or "the engine's default",
        image=settings.image,
        image_id=facts.image_id,
        seconds=math.floor((time.monotonic() - began) * 10) / 10,
    )


def _shipped_lock(image: str) -> Path | None:
    """The lock the pinned image was built from, when that is the image checked."""
    if image != DEFAULT_IMAGE:
        return None  # a user image is checked against the lock it records
    try:
        lock = image_dir() / "requirements.lock"
    except ExperimentExecutionError:
        return None
    return lock if lock.is_file() else None
