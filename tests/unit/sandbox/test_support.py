"""The support volume: each sandbox's own hosts and resolv.conf, from the engine's machine."""

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.sandbox.cleanup import cleanup
from runner.sandbox.engine import EngineKind, SandboxRefused, VolumeInfo
from runner.sandbox.support import HOSTS, RESOLV_CONF, SUPPORT_AT, ensure_support
from tests.unit.fakes import FakeEngine

SPEC = ExperimentSpec(experiment_name="support", model_type="SVC")
KINDS: list[EngineKind] = ["docker", "podman"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_sandbox_binds_its_own_hosts_and_resolver_read_only(
    script: Path, kind: EngineKind
) -> None:
    """hosts (localhost, the sandbox's name) and resolv.conf come from the support volume."""
    engine = FakeEngine(engine_kind=kind)
    assert ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0).success
    (volume,) = engine.support_volumes
    with tarfile.open(fileobj=io.BytesIO(engine.support_archives[0])) as files:
        assert sorted(files.getnames()) == ["hosts", "resolv.conf", "seccomp.json"]
        hosts = files.extractfile("hosts")
        assert hosts is not None and hosts.read().decode() == HOSTS
    mounts = {m["Target"]: m for m in engine.created[-1]["mounts"]}
    for name in ("hosts", "resolv.conf"):
        bound = mounts[f"/etc/{name}"]
        assert (bound["Source"], bound["Type"], bound["ReadOnly"]) == (
            f"{volume.mountpoint}/{name}",
            "bind",
            True,
        )
    assert "127.0.0.1" in RESOLV_CONF and "localhost sandbox" in HOSTS


def test_on_docker_the_engine_sets_up_no_network_and_that_is_verified(script: Path) -> None:
    """network_disabled on top of "none"; an engine that drops it does not run the sandbox."""
    engine = FakeEngine()
    assert ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0).success
    config = engine.created[-1]
    assert (config["network_mode"], config["network_disabled"]) == ("none", True)

    dropped = FakeEngine()
    inspect = dropped.inspect

    def without(container_id: str) -> dict[str, object]:
        found = inspect(container_id)
        found["Config"].pop("NetworkDisabled", None)
        return found

    dropped.inspect = without  # type: ignore[method-assign]
    with pytest.raises(ExperimentExecutionError, match="no network set up by the engine"):
        ExperimentRunner(timeout=5, engine=dropped).run(script, SPEC, 0)
    assert "start" not in dropped.calls


@pytest.mark.parametrize("kind", KINDS)
def test_the_support_volume_is_the_engines_and_only_cleanup_all_removes_it(
    script: Path, kind: EngineKind
) -> None:
    """Shared by runners, it outlives a run and a plain cleanup; `cleanup --all` takes it."""
    engine = FakeEngine(engine_kind=kind)
    ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)
    (support,) = engine.support_volumes
    cleanup(engine, slots_dir=script.parent / "slots")
    assert support.name not in engine.volumes_removed
    cleanup(engine, everything=True, slots_dir=script.parent / "slots")
    assert support.name in engine.volumes_removed


#: How each engine names the files of a directory's archive: below the directory's own
#: name (Docker), or below the archive's root, with the directory itself as "" (Podman).
READ_BACK_PREFIX: dict[EngineKind, str] = {"docker": "support/", "podman": "/"}


@pytest.mark.parametrize("kind", KINDS)
def test_the_support_volume_is_shared_and_written_only_when_it_differs(
    script: Path, kind: EngineKind
) -> None:
    """A second runner finds the support files in place and does not rewrite them."""
    engine = FakeEngine(engine_kind=kind)
    original = engine.get_archive

    def written_back(container_id: str, path: str) -> bytes:
        if path == SUPPORT_AT and engine.support_archives:
            return _as_read_back(engine.support_archives[0], READ_BACK_PREFIX[kind])
        return original(container_id, path)

    engine.get_archive = written_back  # type: ignore[method-assign]
    for _ in range(2):
        ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)
    assert len(engine.support_volumes) == 1
    assert len(engine.support_archives) == 1
    assert len(engine.support_helpers) == 2  # one look per runner, each removed


def _as_read_back(archive: bytes, prefix: str) -> bytes:
    """The tar the engine gives back for the directory the archive was unpacked into."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as source,
        tarfile.open(fileobj=out, mode="w") as tar,
    ):
        directory = tarfile.TarInfo(prefix.rstrip("/"))
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for member in source.getmembers():
            data = source.extractfile(member)
            member.name = prefix + member.name
            tar.addfile(member, data)
    return out.getvalue()


@pytest.mark.parametrize("kind", KINDS)
def test_a_support_volume_removed_under_a_live_runner_is_made_again(
    script: Path, kind: EngineKind
) -> None:
    """`runner cleanup --all` between two runs: the next run makes the volume again and runs."""
    engine = FakeEngine(engine_kind=kind, wait_results=[0, 0, 0])
    runner = ExperimentRunner(timeout=5, engine=engine)
    assert runner.run(script, SPEC, 0).success
    (volume,) = engine.support_volumes
    cleanup(engine, everything=True)
    assert volume.name in engine.volumes_removed

    result = runner.run(script, SPEC, 1)

    assert result.success, result.error_message
    assert engine.volumes_remade == [volume.name]
    assert len(engine.support_archives) == 2  # filled again
    assert runner.run(script, SPEC, 2).success
    assert engine.volumes_remade == [volume.name]  # once


def test_a_sandbox_refused_for_another_reason_is_not_retried(script: Path) -> None:
    """With the support volume in place, the engine's refusal stands: one attempt, its error."""
    engine = FakeEngine(create_error=SandboxRefused("The Docker engine refused the sandbox: no"))
    runner = ExperimentRunner(timeout=5, engine=engine)
    with pytest.raises(SandboxRefused, match="refused the sandbox: no"):
        runner.run(script, SPEC, 0)
    assert engine.volumes_remade == [] and "create" not in engine.calls


def test_a_refusal_naming_a_support_file_fills_the_volume_again(script: Path) -> None:
    """Another runner may be making the volume again: it is there, but the refusal names one
    of its files. The volume is filled once more and the run tried again."""
    engine = FakeEngine(wait_results=[0, 0])
    runner = ExperimentRunner(timeout=5, engine=engine)
    assert runner.run(script, SPEC, 0).success
    (volume,) = engine.support_volumes
    create = engine.create
    refused: list[str] = []

    def once(image: str, command: list[str], **config: object) -> str:
        if not refused and not any(m["Target"] == SUPPORT_AT for m in config["mounts"]):  # type: ignore[attr-defined]
            refused.append(image)
            raise SandboxRefused(f"bind source path does not exist: {volume.mountpoint}/hosts")
        return create(image, command, **config)

    engine.create = once  # type: ignore[method-assign]
    result = runner.run(script, SPEC, 1)
    assert result.success, result.error_message
    assert refused and len(engine.support_archives) == 2


def local_support(tmp_path: Path, kind: EngineKind = "podman") -> tuple[FakeEngine, Path]:
    """A fake engine whose support volume is kept in a directory of this machine, filled
    once through the engine (a first runner's doing), as the engine would keep it."""
    engine = FakeEngine(engine_kind=kind)
    kept = tmp_path / "volume"
    kept.mkdir()
    create_volume = engine.create_volume

    def here(*args: Any, **kwargs: Any) -> VolumeInfo:
        made = create_volume(*args, **kwargs)
        return VolumeInfo(made.name, str(kept), made.labels)

    engine.create_volume = here  # type: ignore[method-assign]
    ensure_support(engine, "img", {})
    with tarfile.open(fileobj=io.BytesIO(engine.support_archives[0])) as archive:
        archive.extractall(kept, filter="data")
    engine.support_helpers.clear()
    engine.support_archives.clear()
    return engine, kept


@pytest.mark.parametrize("kind", KINDS)
def test_support_files_in_place_on_this_machine_need_no_helper(
    tmp_path: Path, kind: EngineKind
) -> None:
    """An engine that sees this machine's files: the volume is read where it is kept; as
    expected, nothing is made or written through the engine."""
    engine, kept = local_support(tmp_path, kind)
    files = ensure_support(engine, "img", {}, here=True)
    assert files.mountpoint == str(kept)
    assert engine.support_helpers == []
    assert engine.support_archives == []


@pytest.mark.parametrize(
    "spoil",
    [
        lambda kept: ((kept / "hosts").unlink(), (kept / "hosts").write_text("10.0.0.1 x\n")),
        lambda kept: (kept / "hosts").unlink(),
        lambda kept: ((kept / "hosts").unlink(), (kept / "hosts").symlink_to(kept / "resolv.conf")),
        lambda kept: (kept / "extra").mkdir(),
    ],
    ids=["changed", "missing", "a symlink", "a directory"],
)
def test_support_files_not_as_expected_here_go_through_the_engine(
    tmp_path: Path, spoil: Callable[[Path], object]
) -> None:
    """A file that differs, is missing, is a link (never followed) or anything else there:
    the volume is read back and written through a helper, as on any engine."""
    engine, kept = local_support(tmp_path)
    spoil(kept)
    ensure_support(engine, "img", {}, here=True)
    assert len(engine.support_helpers) == 1
    assert len(engine.support_archives) == 1


def test_support_files_are_not_read_here_unless_the_engine_sees_them(tmp_path: Path) -> None:
    """Without ``here`` (a remote engine, or one not seen to share files) the directory a
    volume's mountpoint names on this machine is not taken for the volume."""
    engine, _ = local_support(tmp_path)
    ensure_support(engine, "img", {})
    assert len(engine.support_helpers) == 1
