"""``replay``: run a recorded result again, as it ran, and say whether it reproduces.

From the result's provenance: the script's directory from the store (never the
file that may have changed since), each input checked against its digest (a
changed one is named, and the replay refused), the image by its ID (rebuilt and
checked when missing: ``runner.image.rebuild``), the same arguments, limits,
runtime and (so) environment. The verdict compares the metrics: *identical*,
*within tolerance*, or *diverged*, with what differs in the provenance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import ExperimentResult, ExperimentSpec
from runner.core.provenance import Provenance
from runner.core.settings import ExperimentDefaults
from runner.experiment.runner import ExperimentRunner
from runner.image.rebuild import rebuild_recorded_image
from runner.results.history import ResultsHistory
from runner.results.provenance import UNAVAILABLE, close, differences, input_digest
from runner.results.store import ScriptStore, store_dir_for
from runner.sandbox.engine import DockerEngine

Outcome = Literal["identical", "within_tolerance", "diverged"]


class CannotReplay(ExperimentExecutionError):
    """The result cannot be replayed as it ran (exit code 2); the message says why."""


class MetricPair(BaseModel):
    """One metric, as recorded and as replayed (None: that run did not report it)."""

    name: str
    recorded: float | None
    replayed: float | None


class ProvenanceDifference(BaseModel):
    """A provenance field that differs between the recorded run and the replay."""

    field: str
    recorded: object = None
    replayed: object = None


class ReplayReport(BaseModel):
    """What a replay found: the verdict, the metrics side by side, what else differed."""

    run_id: str
    outcome: Outcome
    tolerance: float
    metrics: list[MetricPair] = Field(default_factory=list)
    #: Metrics that differ beyond the tolerance (or are missing on one side).
    diverged: list[str] = Field(default_factory=list)
    differences: list[ProvenanceDifference] = Field(default_factory=list)
    #: Artifacts whose digests differ (or that only one run wrote), by name.
    artifacts_differ: list[str] = Field(default_factory=list)
    #: Why the replay failed where the recorded run succeeded (or the reverse).
    error: str | None = None
    replayed: ExperimentResult

    @property
    def reproduced(self) -> bool:
        return self.outcome != "diverged"


def find(history: ResultsHistory, run_id: str) -> ExperimentResult:
    """The result whose ``run_id`` is ``run_id`` (or starts with it, if only one does)."""
    results, _skipped = history.read()
    exact = [r for r in results if r.run_id == run_id]
    matches = exact or [r for r in results if r.run_id and run_id and r.run_id.startswith(run_id)]
    if not matches:
        raise CannotReplay(
            f"No result with run ID {run_id!r} in {history.path}.",
            hint="each line of the results file has its run_id (`runner run --json` prints it); "
            "--results names another file.",
        )
    if len({r.run_id for r in matches}) > 1:
        raise CannotReplay(
            f"{run_id!r} starts {len(matches)} run IDs in {history.path}.",
            hint="give more of the run ID.",
        )
    return matches[-1]


def check_inputs(provenance: Provenance) -> None:
    """Every recorded input is there with its recorded digest; else ``CannotReplay``
    naming each that changed or went."""
    problems = []
    for recorded in provenance.inputs:
        path = Path(recorded.path)
        if recorded.sha256.startswith(UNAVAILABLE):
            problems.append(f"{path}: it had no digest ({recorded.sha256})")
        elif not path.exists():
            problems.append(f"{path}: it is gone")
        else:
            now = input_digest(path)
            if now.sha256 != recorded.sha256:
                problems.append(
                    f"{path}: changed (sha256 {recorded.sha256[:16]}..., now {now.sha256[:16]}..., "
                    f"{recorded.size} bytes then, {now.size} now)"
                )
    if problems:
        raise CannotReplay(
            "An input is not what the run read:\n  " + "\n  ".join(problems),
            hint="put the recorded input back (same bytes) and replay; a run on the new "
            "input is a new experiment (`runner run`).",
        )


def replay(
    run_id: str,
    *,
    history: ResultsHistory | Path | str,
    tolerance: float = 0.0,
    settings: ExperimentDefaults | None = None,
    store: ScriptStore | None = None,
    log: Callable[[str], None] = print,
) -> ReplayReport:
    """Replay the recorded result ``run_id`` of ``history`` and compare.

    Raises ``CannotReplay`` (an ``ExperimentExecutionError``) when it cannot be run as it
    ran: no provenance, its directory not stored, an input changed, its image neither
    here nor rebuildable to the same ID.
    """
    if tolerance < 0:
        raise ValueError("tolerance must not be negative")
    settings = settings or ExperimentDefaults()
    history = history if isinstance(history, ResultsHistory) else ResultsHistory(history)
    recorded = find(history, run_id)
    provenance = recorded.provenance
    if provenance is None:
        raise CannotReplay(
            f"The result {recorded.run_id} has no provenance: it never reached a sandbox.",
            hint="only a result that ran can be replayed.",
        )
    if recorded.metrics_source == "holdout":
        raise CannotReplay(
            f"The result {recorded.run_id} was scored on a held-out split: its metrics are "
            "the runner's scores of the split it made, which a replay does not make again.",
            hint="run the script again with the same Holdout (data, seed, test size): the "
            "split is seeded, and its test rows' digest is in result.holdout.",
        )
    store = store or ScriptStore(store_dir_for(history.path), 0)
    if provenance.stored is None or not store.has(provenance.stored):
        raise CannotReplay(
            f"The script directory of {recorded.run_id} is not in the store {store.root} "
            "(it was over the store's bound, or no history kept it): only its digests are.",
            hint="raise RUNNER_STORE_MAX_BYTES and run it again to keep it.",
        )
    check_inputs(provenance)
    image = _image(provenance, settings, log)
    work = Path(tempfile.mkdtemp(prefix="runner-replay-"))
    try:
        work.chmod(0o755)  # the sandbox user reads it in place, or the runner copies it
        directory = work / "script"
        directory.mkdir(mode=0o755)
        store.restore(provenance.stored, directory)
        directory.chmod(0o755)
        outputs = work / "outputs" if "OUTPUT_DIR" in provenance.environment else None
        limits = provenance.limits
        runner = ExperimentRunner(
            timeout=limits.timeout,
            image=image,
            memory_limit=limits.memory,
            cpu_limit=limits.cpus,
            pids_limit=limits.pids,
            tmpfs_size=limits.tmpfs,
            output_limit=limits.output_limit,
            runtime=provenance.runtime_asked,
            inputs=[Path(i.path) for i in provenance.inputs],
            outputs_dir=outputs,
            settings=settings,
        )
        spec = ExperimentSpec(
            experiment_name=recorded.experiment_name,
            model_type=recorded.model_type,
            model_params=recorded.model_params,
            preprocessing=recorded.preprocessing,
            hypothesis=recorded.hypothesis,
            reasoning=recorded.reasoning,
        )
        script = directory / Path(provenance.script_path).name
        result = runner.run(script, spec, recorded.iteration, args=provenance.args)
    finally:
        _remove(work)
    return compare(recorded, result, tolerance)


def _remove(work: Path) -> None:
    """Remove the replay's directory, read-only directories of the script's included."""
    for here, dirs, _files in os.walk(work):
        for name in dirs:
            path = Path(here) / name
            # os.walk lists a symlink to a directory among the directories: never chmod
            # through one (its target is anywhere on the host).
            if path.is_symlink():
                continue
            with contextlib.suppress(OSError):
                path.chmod(0o755)
    shutil.rmtree(work, ignore_errors=True)


def _image(provenance: Provenance, settings: ExperimentDefaults, log: Callable[[str], None]) -> str:
    """The image to replay in: the recorded tag if it still names the recorded ID, else the
    ID itself (rebuilt when missing)."""
    if provenance.image_id is None:
        raise CannotReplay("The result does not say which image ran it.")
    engine = DockerEngine()
    if engine.image_exists(provenance.image) and (
        engine.image_id(provenance.image) == provenance.image_id
    ):
        return provenance.image
    try:
        return rebuild_recorded_image(
            engine, provenance.image_id, provenance.lock_sha256, settings, log=log
        )
    except CannotReplay:
        raise
    except ExperimentExecutionError as e:
        raise CannotReplay(str(e)) from e


def compare(
    recorded: ExperimentResult, replayed: ExperimentResult, tolerance: float
) -> ReplayReport:
    """The verdict on ``replayed`` against ``recorded``: metrics, then provenance."""
    names = sorted(set(recorded.metrics) | set(replayed.metrics))
    pairs = [MetricPair(name=n, recorded=recorded.metrics.get(n), replayed=replayed.metrics.get(n))
             for n in names]  # fmt: skip
    diverged = []
    exact = True
    for pair in pairs:
        if pair.recorded is None or pair.replayed is None:
            diverged.append(pair.name)
        elif pair.recorded != pair.replayed:
            exact = False
            if not close(pair.recorded, pair.replayed, tolerance):
                diverged.append(pair.name)
    error = None
    if recorded.success != replayed.success:
        error = replayed.error_message if not replayed.success else "the recorded run had failed"
    outcome: Outcome = "identical" if exact else "within_tolerance"
    if diverged or error is not None:
        outcome = "diverged"
    found = []
    artifacts: list[str] = []
    if recorded.provenance is not None and replayed.provenance is not None:
        found = [
            ProvenanceDifference(field=d.field, recorded=d.recorded, replayed=d.now)
            for d in differences(recorded.provenance, replayed.provenance)
        ]
        before = {a.name: a.sha256 for a in recorded.provenance.artifacts}
        after = {a.name: a.sha256 for a in replayed.provenance.artifacts}
        artifacts = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
    return ReplayReport(
        run_id=recorded.run_id or "",
        outcome=outcome,
        tolerance=tolerance,
        metrics=pairs,
        diverged=diverged,
        differences=found,
        artifacts_differ=artifacts,
        error=error,
        replayed=replayed,
    )
