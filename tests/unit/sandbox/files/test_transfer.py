import io
import os
import tarfile
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.sandbox.files.transfer import archive, engine_sees_local_files
from runner.sandbox.files.tree import Budget, TreeRefused
from tests.unit.fakes import FakeEngine, file_mounts

SPEC = ExperimentSpec(experiment_name="copy", model_type="SVC")


def members(paths: list[Path], budget: Budget | None = None) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    archive(paths, budget or Budget(), out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """A 0700 script directory with a 0600 data file and a symlink out of it."""
    directory = tmp_path / "exp"
    directory.mkdir(mode=0o700)
    (directory / "script.py").write_text("print('{\"success\": true}')\n")
    (directory / "data.csv").write_text("x\n1\n")
    (directory / "data.csv").chmod(0o600)
    (directory / "secret").symlink_to("/etc/shadow")
    return directory


def test_archive_lays_files_out_at_their_own_paths_readable_by_anyone(private_dir: Path) -> None:
    """Entries sit at their absolute paths, owned by root, readable by the sandbox's user."""
    found = members([private_dir])
    top = str(private_dir).lstrip("/")
    assert found[top].isdir() and found[top].mode & 0o555 == 0o555
    data = found[f"{top}/data.csv"]
    assert data.isfile() and data.mode & 0o444 == 0o444 and data.size == 4
    assert (data.uid, data.gid) == (0, 0)


def test_archive_keeps_a_symlink_as_a_symlink(private_dir: Path) -> None:
    """A symlink travels as its target text; the target's content never does."""
    link = members([private_dir])[f"{str(private_dir).lstrip('/')}/secret"]
    assert link.issym() and link.linkname == "/etc/shadow"


def test_archive_refuses_special_files_and_is_bounded(private_dir: Path) -> None:
    """A FIFO is refused without being opened; entries and bytes are capped."""
    with pytest.raises(TreeRefused, match="bytes"):
        members([private_dir], Budget(bytes=10))
    with pytest.raises(TreeRefused, match="files"):
        members([private_dir], Budget(entries=1))
    os.mkfifo(private_dir / "pipe")
    with pytest.raises(TreeRefused, match="FIFO"):
        members([private_dir])


def test_a_private_directory_is_copied_and_the_volume_removed(private_dir: Path) -> None:
    """auto: files the sandbox user could not read in place go through a volume, read-only."""
    engine = FakeEngine()
    script = private_dir / "script.py"
    result = ExperimentRunner(timeout=5, engine=engine, transfer="auto").run(script, SPEC, 0)
    assert result.success, result.error_message
    (volume,) = engine.volumes_made
    sandbox = engine.created[-1]
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in file_mounts(sandbox)] == [
        (volume.mountpoint + str(private_dir), str(private_dir), True)
    ]
    helper = engine.created[-2]
    assert helper["command"] == ["true"] and helper["network_mode"] == "none"
    assert [c for c, _ in engine.archives] == ["c" + str(len(engine.created) - 1)]
    assert engine.volumes_removed == [volume.name]


def test_bind_refuses_what_the_sandbox_user_cannot_read(private_dir: Path) -> None:
    """transfer='bind' never copies: an unreadable directory is an error with a fix."""
    runner = ExperimentRunner(timeout=5, engine=FakeEngine(), transfer="bind")
    with pytest.raises(ExperimentExecutionError, match="cannot read the directory"):
        runner.run(private_dir / "script.py", SPEC, 0)


def test_readable_files_on_a_local_engine_are_bind_mounted(script: Path) -> None:
    """auto on an engine that sees this machine's files: a plain bind mount, no volume."""
    engine = FakeEngine()
    result = ExperimentRunner(timeout=5, engine=engine, transfer="auto").run(script, SPEC, 0)
    assert result.success
    assert engine.volumes_made == []
    assert engine.created[-1]["mounts"][0]["Source"] == str(script.parent.resolve())


def test_the_probe_tells_a_local_engine_from_a_remote_one(tmp_path: Path) -> None:
    """The probe reads its token back through a bind mount; a refused mount means remote."""
    assert engine_sees_local_files(FakeEngine(), "img", {})
    remote = FakeEngine(create_error=ExperimentExecutionError("bind source path does not exist"))
    assert not engine_sees_local_files(remote, "img", {})


def test_an_unknown_transfer_is_refused() -> None:
    """Only auto, bind and copy exist."""
    with pytest.raises(ValueError, match="transfer"):
        ExperimentRunner(engine=FakeEngine(), transfer="ftp")  # type: ignore[arg-type]
