"""A cold run: one request, one fresh sandbox made for it on one engine.

The run's resources (its user ID, its cgroup for telemetry), its labels, its
files (bound in place, unpacked here, or copied through the engine), then the
one lifecycle of ``runner.sandbox.lifecycle``. The first run asks the machine's
facts in its sandbox before the script (``runner.sandbox.facts``); later runs
carry what it saw. A sandbox that the engine
refused or the runtime failed to start gets one fresh attempt: nothing of the
script ran.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from runner.core.provenance import SandboxFacts
from runner.sandbox.artifacts import COLLECT_SECONDS
from runner.sandbox.cleanup import build_labels, deadline_after
from runner.sandbox.engine import Engine, SandboxRefused, SandboxStartError
from runner.sandbox.files.transfer import copy_to_engine, unpack_here
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import (
    ActiveRuns,
    Execution,
    Reaper,
    Resources,
    Sandbox,
    registered,
)
from runner.sandbox.policy import Run, SandboxPolicy, self_limited
from runner.sandbox.probe import EngineFacts, FileRoute, probe
from runner.sandbox.request import RunRequest
from runner.sandbox.streams import OutputCallback


class ColdRuns:
    """Cold runs of ``policy``'s sandboxes on one engine, each abortable by its token."""

    def __init__(
        self,
        engine: Engine,
        policy: SandboxPolicy,
        facts: EngineFacts,
        route: FileRoute,
        active: ActiveRuns,
        python_executable: str = "python",
        reaper: Reaper | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.facts = facts
        self.route = route
        self.active = active
        self.python_executable = python_executable
        #: Removes the containers of finished runs in the background (None: at once).
        self.reaper = reaper
        #: The machine's facts as the first sandbox that asked saw them: the same engine,
        #: image, runtime and limits show every later one the same, so it is asked once.
        self.asked: SandboxFacts | None = None

    def run(
        self, request: RunRequest, on_output: OutputCallback | None, token: object
    ) -> Execution:
        """Run ``request`` in a fresh sandbox: once more after a start that failed, never
        after the run was aborted."""
        image_id = self.engine.image_id(self.policy.image)
        support = self.facts.support
        for attempt in (1, 2):
            remade = support.remade
            try:
                return self._once(image_id, request, on_output, token)
            except (SandboxStartError, SandboxRefused) as e:
                # Nothing ran, so one fresh attempt is safe: worth it when the support
                # volume went (`runner cleanup --all` under this runner; it is made
                # again), and after any failure to start (gVisor occasionally fails to
                # set a sandbox up). A refusal for another reason stands.
                if attempt == 2 or self.active.aborted(token):
                    raise  # a cancelled run is never tried again
                if not (support.mend(remade, e) or isinstance(e, SandboxStartError)):
                    raise
        raise AssertionError("unreachable")

    def _once(
        self,
        image_id: str,
        request: RunRequest,
        on_output: OutputCallback | None,
        token: object,
    ) -> Execution:
        telemetry = self.facts.telemetry
        known = self.asked
        resources = Resources(
            lease=lease_uid(),
            cgroup_parent=telemetry.new_parent() if telemetry is not None else None,
            telemetry=telemetry,
        )
        outputs = request.outputs.limits if request.outputs is not None else None
        # Collecting the outputs may take the sandbox past the script's deadline.
        deadline = deadline_after(request.timeout + (COLLECT_SECONDS if outputs else 0))
        labels = build_labels(deadline, dict(request.labels))
        bound: tuple[Path, ...] = request.mounts
        copied: tuple[tuple[Path, Path], ...] = ()
        if self.route.copies(request):
            try:
                bound, copied = (), self._files(image_id, request, labels, resources)
            except BaseException:
                resources.release()
                raise
        run = Run(
            command=self_limited(
                [self.python_executable, str(request.script), *request.args],
                request.timeout,
                outputs=outputs,
                links=request.script.parent,
                facts=known is None,
            ),
            workdir=request.script.parent,
            read_only_paths=bound,
            deadline=deadline,
            uid=resources.lease.uid,
            labels=labels,
            cgroup_parent=resources.cgroup_parent,
            relocated=copied,
            user_kernel=self.facts.user_kernel,
            outputs=outputs,
            support=self.facts.support.files,
            podman=self.facts.podman,
            environment=request.environment,
        )
        with (
            Sandbox.create(self.engine, image_id, self.policy, run, resources) as sandbox,
            registered(self.active, token, sandbox),
        ):
            sandbox.attach()
            execution = sandbox.run(
                request.timeout,
                request.output_limit,
                on_output,
                outputs=request.outputs,
                facts=known is None,
                reaper=self.reaper,
                trusted=request.ends_with_result,
            )
        if known is not None:
            return execution.model_copy(update={"facts": known})
        if execution.facts is not None and execution.facts.kernel:
            self.asked = execution.facts
        return execution

    def _files(
        self,
        image_id: str,
        request: RunRequest,
        labels: dict[str, str],
        resources: Resources,
    ) -> tuple[tuple[Path, Path], ...]:
        """The request's files put where the engine binds them from; removed on release.

        Packed files (from another machine) are unpacked here when the engine sees
        this machine's files and copies are not asked for: no volume, no helper.
        """
        if request.packed and not self.route.through_engine:
            unpacked = unpack_here(request.packed, request.mounts)
            if unpacked is not None:
                resources.extra.append(unpacked.remove)
                return unpacked.binds()
        engine = self.engine
        files = copy_to_engine(engine, image_id, request.mounts, labels, packed=request.packed)
        resources.extra.append(lambda: engine.remove_volume(files.volume))
        return files.binds()


def run_code(
    engine: Engine,
    policy: SandboxPolicy,
    code: str,
    *,
    python_executable: str = "python",
    timeout: float = 300,
    output_limit: int = 1024 * 1024,
) -> Execution:
    """Run ``code`` as a script in one cold sandbox of ``policy`` (every control of a run).

    For the runner's own snippets (listing an image's packages, the doctor's
    smoke test): the script sits alone in a new directory the sandbox user may
    read, bound or copied as the engine needs.
    """
    with tempfile.TemporaryDirectory(prefix="runner-code-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)  # the sandbox's user reads the script in place
        script = directory / "code.py"
        script.write_text(code)
        script.chmod(0o644)
        facts = probe(engine, policy, "auto")
        runs = ColdRuns(
            engine,
            policy,
            facts,
            FileRoute("auto", facts.shares_files),
            ActiveRuns(),
            python_executable,
        )
        request = RunRequest(script, (directory,), timeout, output_limit)
        return runs.run(request, None, object())
