"""The local backend's warm path on the fake engine: a script handed to a started slot,
or run cold when no slot can show its files exactly; the pool's root moving."""

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentDefaults, ExperimentExecutionError, ExperimentRunner
from runner.backends.bootstrap import hand_over_line
from runner.core.models import ExperimentSpec
from runner.sandbox.cleanup import LABEL, LABEL_DEADLINE, LABEL_OWNER
from runner.sandbox.engine import EngineUnavailable
from tests.unit.fakes import FakeEngine, file_mounts

SPEC = ExperimentSpec(experiment_name="warm", model_type="SVC")


def test_negative_pool_size_is_refused() -> None:
    """warm_pool must be 0 or positive."""
    with pytest.raises(ValueError):
        ExperimentRunner(engine=FakeEngine(), warm_pool=-1)


def test_a_warm_run_hands_the_script_to_a_started_slot(
    warm_runner: tuple[ExperimentRunner, FakeEngine, Path],
) -> None:
    """The slot was started ahead; the run writes the script's path to it and removes it."""
    runner, engine, script = warm_runner
    slot_id = "c1"
    staged: list[bool] = []
    slot_dir = engine.created[0]["mounts"][0]["Source"]
    engine.on_wait = lambda: staged.append(
        (Path(slot_dir) / script.relative_to(runner.pool_root)).is_file()
    )
    result = runner.run(script, SPEC, 0)
    assert result.success, result.error_message
    assert result.warm_start
    assert engine.created[0]["stdin_open"] is True
    assert engine.handed_over == {slot_id: hand_over_line(str(script), ())}
    assert staged == [True]  # the script's directory was in the slot when it ran
    runner.close()  # waits for the removals the run left to the background
    assert slot_id in engine.removed
    assert not Path(slot_dir).exists()


def test_a_dead_slot_sends_the_run_cold(
    warm_runner: tuple[ExperimentRunner, FakeEngine, Path],
) -> None:
    """A slot found stopped is dropped and the script runs in a fresh container."""
    runner, engine, script = warm_runner
    engine.finished.add("c1")
    result = runner.run(script, SPEC, 0)
    assert result.success
    assert not result.warm_start
    assert "c1" in engine.removed
    assert engine.handed_over == {}


def test_a_directory_the_mirror_refuses_runs_cold(
    warm_runner: tuple[ExperimentRunner, FakeEngine, Path],
) -> None:
    """A FIFO beside the script makes the hand-over refuse; the run goes cold, not wrong."""
    runner, engine, script = warm_runner
    os.mkfifo(script.parent / "pipe")
    result = runner.run(script, SPEC, 0)
    assert result.success
    assert not result.warm_start
    assert engine.handed_over == {}


def volume_slot(engine: FakeEngine) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first slot's helper container and the slot container itself."""
    helper = next(c for c in engine.created if [m["Target"] for m in c["mounts"]] == ["/files"])
    slot = next(c for c in engine.created if c.get("stdin_open"))
    return helper, slot


def archived_names(engine: FakeEngine, container: str) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(engine.archives[(container, "/files")])) as tar:
        return tar.getnames()


@pytest.mark.parametrize("case", ["remote engine", "transfer=copy"])
def test_files_reach_a_slot_through_a_volume_where_they_must_be_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A remote engine (or transfer='copy') gets a warm pool filled through a volume."""
    monkeypatch.setenv("RUNNER_TRANSFER", "auto" if case == "remote engine" else "copy")
    engine = FakeEngine(remote=case == "remote engine", wait_results=[0])
    root = tmp_path / "experiments"
    script = root / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    data = root / "data" / "train.csv"
    data.parent.mkdir()
    data.write_text("x\n")
    with ExperimentRunner(
        timeout=5, engine=engine, warm_pool=1, pool_root=root,
        settings=ExperimentDefaults(cache_dir=tmp_path / "cache"),
    ) as runner:  # fmt: skip
        assert runner.wait_for_warm(10)
        (volume,) = engine.volumes_made
        helper, slot = volume_slot(engine)
        # The helper, never started, holds the volume read-write; the slot sees it read-only.
        assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in helper["mounts"]] == [
            (volume.name, "/files", False)
        ]
        assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in file_mounts(slot)] == [
            (volume.mountpoint, str(root), True)
        ]
        for labels in (helper["labels"], slot["labels"], volume.labels):
            assert {LABEL, LABEL_OWNER, LABEL_DEADLINE} <= set(labels)
        result = runner.run(script, SPEC, 0, inputs=[data])
        assert result.success, result.error_message
        assert result.warm_start
        helper_id = f"c{engine.created.index(helper) + 1}"
        slot_id = f"c{engine.created.index(slot) + 1}"
        assert slot_id in engine.started and helper_id not in engine.started
        names = archived_names(engine, helper_id)
        assert {"exp", "exp/experiment.py", "data", "data/train.csv"} <= set(names)
        assert engine.handed_over[slot_id] == hand_over_line(str(script), ())
        # The slot went with its helper and its volume.
        assert {slot_id, helper_id} <= set(engine.removed)
        assert volume.name in engine.volumes_removed
    assert runner.backend.pool_unavailable is None


def test_files_the_sandbox_cannot_read_run_warm_as_readable_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transfer='auto' on a local engine: a private directory is copied into the slot, readable."""
    monkeypatch.setenv("RUNNER_TRANSFER", "auto")
    engine = FakeEngine(wait_results=[0])
    root = tmp_path / "experiments"
    script = root / "exp" / "experiment.py"
    script.parent.mkdir(parents=True, mode=0o700)
    script.parent.chmod(0o700)
    script.write_text("print(1)\n")
    script.chmod(0o600)
    seen: list[int] = []
    with ExperimentRunner(
        timeout=5, engine=engine, warm_pool=1, pool_root=root,
        settings=ExperimentDefaults(cache_dir=tmp_path / "cache"),
    ) as runner:  # fmt: skip
        assert runner.wait_for_warm(10)
        slot = next(c for c in engine.created if c.get("stdin_open"))
        source = Path(slot["mounts"][0]["Source"])
        # Only this caller may enter the slot's directory: the copies are private here.
        assert source.parent.stat().st_mode & 0o777 == 0o700
        engine.on_wait = lambda: seen.append(
            (source / "exp" / "experiment.py").stat().st_mode & 0o777
        )
        result = runner.run(script, SPEC, 0)
    assert result.success and result.warm_start
    assert seen == [0o644]
    assert engine.volumes_made == []


def retargeting_runner(
    tmp_path: Path, **kwargs: object
) -> tuple[ExperimentRunner, FakeEngine, Path]:
    engine = FakeEngine(wait_results=[0, 0, 0])
    runner = ExperimentRunner(
        timeout=5, engine=engine, warm_pool=1,
        settings=ExperimentDefaults(
            cache_dir=tmp_path / "cache", experiments_dir=tmp_path / "proj" / "experiments"
        ),
        **kwargs,
    )  # fmt: skip
    script = tmp_path / "proj" / "scratch" / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    return runner, engine, script


def test_a_script_outside_the_default_root_moves_the_pool(tmp_path: Path) -> None:
    """The first run outside the root is cold; the pool refills at the common ancestor."""
    runner, engine, script = retargeting_runner(tmp_path)
    with runner:
        assert runner.wait_for_warm(10)
        assert runner.pool_root == tmp_path / "proj" / "experiments"
        first = runner.run(script, SPEC, 0)
        assert first.success and not first.warm_start
        assert runner.pool_root == tmp_path / "proj"
        assert "c1" in engine.removed  # the slot at the old root went
        assert runner.wait_for_warm(10)
        second = runner.run(script, SPEC, 1)
        assert second.success and second.warm_start
        slots = [c for c in engine.created if c.get("stdin_open")]
        assert slots[-1]["mounts"][0]["Target"] == str(tmp_path / "proj")
        assert slots[-1]["working_dir"] == str(tmp_path / "proj")


def test_an_explicit_pool_root_stays_put(tmp_path: Path) -> None:
    """With pool_root= given, scripts outside it run cold and the pool does not move."""
    root = tmp_path / "proj" / "experiments"
    runner, engine, script = retargeting_runner(tmp_path, pool_root=root)
    with runner:
        assert runner.wait_for_warm(10)
        for iteration in range(2):
            result = runner.run(script, SPEC, iteration)
            assert result.success and not result.warm_start
        assert runner.pool_root == root
        assert "c1" not in engine.removed


def test_an_explicit_pool_root_that_hides_the_image_is_refused(tmp_path: Path) -> None:
    """pool_root='/usr' would hide the image's own files: a ValueError, not a pool."""
    with pytest.raises(ValueError, match="hide the image"):
        ExperimentRunner(engine=FakeEngine(), warm_pool=1, pool_root="/usr")


def test_a_default_root_that_hides_the_image_waits_for_a_script(tmp_path: Path) -> None:
    """A default root the pool may not use: a note, no slot, until a script gives it a root."""
    engine = FakeEngine(wait_results=[0, 0])
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache", experiments_dir=Path("/etc/x"))
    script = tmp_path / "exp" / "experiment.py"
    script.parent.mkdir()
    script.write_text("print(1)\n")
    with ExperimentRunner(timeout=5, engine=engine, warm_pool=1, settings=settings) as runner:
        assert "hide the image" in (runner.backend.pool_unavailable or "")
        assert runner.pool_root is None
        assert not runner.wait_for_warm(0.2)
        assert not runner.run(script, SPEC, 0).warm_start
        assert runner.pool_root == tmp_path
        assert runner.wait_for_warm(10)
        assert runner.run(script, SPEC, 1).warm_start


def test_inputs_outside_the_script_directory_are_staged_at_their_paths(
    warm_runner: tuple[ExperimentRunner, FakeEngine, Path],
) -> None:
    """An input elsewhere below the root appears at its own path in the slot."""
    runner, engine, script = warm_runner
    root = runner.pool_root
    assert root is not None
    data = root / "shared" / "train.csv"
    data.parent.mkdir()
    data.write_text("x\n")
    source = Path(engine.created[0]["mounts"][0]["Source"])
    staged: list[bool] = []
    engine.on_wait = lambda: staged.append((source / "shared" / "train.csv").is_file())
    result = runner.run(script, SPEC, 0, inputs=[data])
    assert result.success and result.warm_start
    assert staged == [True]


def test_a_volume_hand_over_that_is_refused_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO beside the script: the slot goes (helper, volume too), the cold copy says why."""
    monkeypatch.setenv("RUNNER_TRANSFER", "auto")
    engine = FakeEngine(remote=True)
    root = tmp_path / "experiments"
    script = root / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    os.mkfifo(script.parent / "pipe")
    with ExperimentRunner(
        timeout=5, engine=engine, warm_pool=1, pool_root=root,
        settings=ExperimentDefaults(cache_dir=tmp_path / "cache"),
    ) as runner:  # fmt: skip
        assert runner.wait_for_warm(10)
        with pytest.raises(ExperimentExecutionError, match="cannot be copied"):
            runner.run(script, SPEC, 0)
        handed = next(c for c in engine.created if c.get("stdin_open"))
        assert f"c{engine.created.index(handed) + 1}" in engine.removed
        assert engine.handed_over == {}
    made = {v.name for v in engine.volumes_made}
    assert made == set(engine.volumes_removed)


class GoesAway(FakeEngine):
    """An engine that stops answering at one step of a run, then comes back."""

    def __init__(self, at: str, times: int = 1, pings_down: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at, self.times, self.pings_down = at, times, pings_down

    def _maybe_gone(self, step: str) -> None:
        if step == self.at and self.times > 0:
            self.times -= 1
            self.answering = False
            raise EngineUnavailable("The Docker engine at unix://fake stopped answering")

    def answers(self) -> bool:
        if not self.answering:
            self.pings_down -= 1
            self.answering = self.pings_down <= 0
        return super().answers()

    def create(self, image: str, command: list[str], **config: Any) -> str:
        if not any(m["Target"] == "/support" for m in config.get("mounts", [])):
            self._maybe_gone("create")
        return super().create(image, command, **config)

    def wait(self, container_id: str, timeout: float) -> int | None:
        self._maybe_gone("wait")
        return super().wait(container_id, timeout)


def test_a_run_that_had_not_started_waits_for_the_engine_then_runs(script: Path) -> None:
    """The engine goes away before the sandbox is made: the run waits, then runs once."""
    engine = GoesAway("create")
    result = ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0)
    assert result.success and "ran again" not in result.stderr
    assert engine.calls.count("ping") >= 2 and "remove leftovers" in engine.calls
    assert engine.started == ["c1"]


def test_a_script_cut_off_by_an_outage_runs_again_once_in_a_fresh_sandbox(script: Path) -> None:
    """The engine goes away while the script runs: one more run, fresh, and it says so."""
    engine = GoesAway("wait", wait_results=[0])
    result = ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0)
    assert result.success and "ran again, once, in a fresh sandbox" in result.stderr
    assert engine.started == ["c1", "c2"] and set(engine.removed) >= {"c1", "c2"}


def test_a_second_cut_off_or_an_engine_that_stays_away_fails_the_job_naming_it(
    script: Path,
) -> None:
    """Cut off twice: the run fails; an engine gone past the timeout: the job's result
    names the engine and that it stopped answering."""
    twice = GoesAway("wait", times=2, wait_results=[0])
    with pytest.raises(EngineUnavailable, match="stopped answering"):
        ExperimentRunner(timeout=30, engine=twice).run(script, SPEC, 0)
    gone = GoesAway("create", pings_down=10**9)
    (result,) = ExperimentRunner(timeout=1, engine=gone).run_many([(script, SPEC, 0)])
    assert not result.success
    assert "unix://fake stopped answering" in (result.error_message or "")
    assert "did not answer again within 1 s" in (result.error_message or "")


def test_close_waits_for_the_removals_left_to_the_background(tmp_path: Path) -> None:
    """A run returns before its container is removed; close() returns only once it is."""
    script = tmp_path / "exp" / "experiment.py"
    script.parent.mkdir()
    script.write_text("print(1)\n")
    engine = FakeEngine(remove_delay=0.3)
    runner = ExperimentRunner(
        timeout=5, engine=engine, settings=ExperimentDefaults(cache_dir=tmp_path / "cache")
    )
    result = runner.run(script, SPEC, 0)
    assert result.success
    runner.close()
    assert engine.removed == ["c1"]
