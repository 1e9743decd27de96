"""The warm pool's parts: staging a script's files into a slot, where a pool may stand,
and the pool itself keeping its slots."""

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError
from runner.backends.bootstrap import SOURCE
from runner.backends.pool import (
    SlotMaker,
    WarmPool,
    fits_pool,
    may_be_pool_root,
    outermost,
    pool_root_for,
    stage,
)
from runner.core.models import ExperimentSpec
from runner.sandbox.files.tree import Budget, TreeExpired, TreeRefused
from runner.sandbox.policy import SandboxPolicy
from tests.unit.fakes import FakeEngine

SPEC = ExperimentSpec(experiment_name="warm", model_type="SVC")


def test_stage_links_the_directory_at_its_relative_place(tmp_path: Path) -> None:
    """The script's directory appears under the slot at its path below the root, linked."""
    root = tmp_path / "experiments"
    source = root / "a" / "exp"
    (source / "sub").mkdir(parents=True)
    (source / "experiment.py").write_text("print(1)\n")
    (source / "sub" / "data.csv").write_text("x\n")
    slot = tmp_path / "slot"
    slot.mkdir()
    target = stage(source, root, slot)
    assert target == slot / "a" / "exp"
    assert (target / "experiment.py").stat().st_ino == (source / "experiment.py").stat().st_ino
    assert (target / "sub" / "data.csv").read_text() == "x\n"
    assert oct((slot / "a").stat().st_mode & 0o777) == oct(0o755)


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    """A script directory under a pool root, with a symlink to a private host file."""
    private = tmp_path / "private.txt"
    private.write_text("host secret")
    source = tmp_path / "experiments" / "exp"
    source.mkdir(parents=True)
    (source / "experiment.py").write_text("print(1)\n")
    (source / "data.csv").symlink_to(private)
    (source / "relative.csv").symlink_to("experiment.py")
    return source


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linking fails as it does across filesystems (EXDEV), so the hand-over copies."""

    def cross_device(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)


@pytest.mark.parametrize("linking", ["hard links", "copies"])
def test_stage_recreates_symlinks_and_never_reads_their_targets(
    hostile_dir: Path, tmp_path: Path, request: pytest.FixtureRequest, linking: str
) -> None:
    """A symlink is mirrored as a symlink with the same target text, linked or copied."""
    if linking == "copies":
        request.getfixturevalue("no_hard_links")
    slot = tmp_path / "slot"
    slot.mkdir()
    target = stage(hostile_dir, hostile_dir.parent, slot)
    staged = target / "data.csv"
    assert staged.is_symlink()
    assert staged.readlink() == tmp_path / "private.txt"
    assert (target / "relative.csv").readlink() == Path("experiment.py")
    assert (target / "experiment.py").read_text() == "print(1)\n"
    assert not any(
        p.is_file() and not p.is_symlink() and p.read_bytes() == b"host secret"
        for p in slot.rglob("*")
    )


def test_stage_copies_keep_owner_and_mode(tmp_path: Path, no_hard_links: None) -> None:
    """A copied file keeps its mode, so the sandbox reads exactly what a bind mount shows."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True)
    (source / "secret.txt").write_text("x")
    (source / "secret.txt").chmod(0o600)
    (source / "open.txt").write_text("y")
    (source / "open.txt").chmod(0o644)
    slot = tmp_path / "slot"
    slot.mkdir()
    target = stage(source, source.parent, slot)
    assert (target / "secret.txt").stat().st_mode & 0o777 == 0o600
    assert (target / "open.txt").stat().st_mode & 0o777 == 0o644
    assert (target / "open.txt").stat().st_ino != (source / "open.txt").stat().st_ino


def test_stage_of_a_device_symlink_copies_no_bytes(tmp_path: Path, no_hard_links: None) -> None:
    """`big.bin -> /dev/zero` stays a symlink: nothing is read from the device."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True)
    (source / "big.bin").symlink_to("/dev/zero")
    slot = tmp_path / "slot"
    slot.mkdir()
    target = stage(source, source.parent, slot)
    assert (target / "big.bin").readlink() == Path("/dev/zero")


def test_stage_refuses_a_fifo_without_opening_it(tmp_path: Path, no_hard_links: None) -> None:
    """A FIFO beside the script is refused at once (the run goes cold), never opened."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True)
    os.mkfifo(source / "pipe")
    slot = tmp_path / "slot"
    slot.mkdir()
    started = time.monotonic()
    with pytest.raises(TreeRefused, match="FIFO"):
        stage(source, source.parent, slot)
    assert time.monotonic() - started < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_stage_refuses_a_device_node(tmp_path: Path) -> None:
    """A device node beside the script is refused, never linked or read."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True)
    os.mknod(source / "zero", 0o666 | 0o020000, os.makedev(1, 5))
    slot = tmp_path / "slot"
    slot.mkdir()
    with pytest.raises(TreeRefused, match="device"):
        stage(source, source.parent, slot)


def test_stage_is_bounded_in_files_and_bytes(tmp_path: Path, no_hard_links: None) -> None:
    """Too many entries, or too many bytes to copy, refuse the hand-over."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True)
    for i in range(5):
        (source / f"f{i}").write_bytes(b"x" * 1000)
    with pytest.raises(TreeRefused, match="files"):
        stage(source, source.parent, tmp_path / "s1", budget=Budget(entries=4))
    with pytest.raises(TreeRefused, match="bytes"):
        stage(source, source.parent, tmp_path / "s2", budget=Budget(bytes=4500))


def test_stage_counts_against_the_deadline(tmp_path: Path) -> None:
    """A hand-over that would end past the run's deadline stops with TreeExpired."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True)
    (source / "f").write_text("x")
    with pytest.raises(TreeExpired):
        stage(
            source, source.parent, tmp_path / "slot", budget=Budget(deadline=time.monotonic() - 1)
        )


def test_a_slot_shows_what_lies_strictly_below_its_root(tmp_path: Path) -> None:
    """A slot at a root serves a script directory and inputs strictly below it."""
    script = tmp_path / "exp" / "experiment.py"
    assert fits_pool(tmp_path, script, [])
    assert fits_pool(tmp_path, script, [tmp_path / "exp" / "data.csv"])
    assert fits_pool(tmp_path, script, [tmp_path / "elsewhere.csv"])
    assert not fits_pool(tmp_path, script, [tmp_path])
    assert not fits_pool(tmp_path, tmp_path / "experiment.py", [])
    assert not fits_pool(tmp_path, Path("/opt/other/experiment.py"), [])
    assert not fits_pool(tmp_path, tmp_path / "a\nb" / "experiment.py", [])


@pytest.mark.parametrize(
    "root",
    ["/", "/tmp", "/usr", "/usr/local/x", "/etc/x", "/lib64", "/libexec/x", "/var/tmp/x",
     "/proc/1", "/dev", "/dev/shm", "/dev/mqueue", "/run/x", "/opt", "/opt/venv",
     "/opt/venv/lib", "relative"],
)  # fmt: skip
def test_no_pool_root_hides_the_image(root: str) -> None:
    """/, /tmp itself, system directories and the image's Python are never a pool root."""
    assert not may_be_pool_root(Path(root))


@pytest.mark.parametrize(
    "root", ["/home/me", "/tmp/pytest-of-me/x", "/dev/shm/x", "/opt/data", "/srv", "/mnt/a"]
)
def test_a_pool_root_may_be_any_other_directory(root: str) -> None:
    """Home directories, below /tmp or /dev/shm, /srv and the like may be a pool root."""
    assert may_be_pool_root(Path(root))


def test_the_pool_moves_to_the_common_ancestor() -> None:
    """The new root takes in the old one where it may, else the request's files alone."""
    experiments = Path("/home/me/proj/experiments")
    scratch = [Path("/home/me/proj/scratch/exp")]
    assert pool_root_for(scratch, experiments) == Path("/home/me/proj")
    tmp = [Path("/tmp/pytest-of-me/t0/exp"), Path("/tmp/pytest-of-me/t0/data/train.csv")]
    assert pool_root_for(tmp, experiments) == Path("/tmp/pytest-of-me/t0")
    assert pool_root_for(tmp, None) == Path("/tmp/pytest-of-me/t0")
    # An input under /etc next to a script in /tmp: their only common ancestor is /.
    assert pool_root_for([Path("/tmp/a/exp"), Path("/etc/hosts")], experiments) is None
    assert pool_root_for([Path("/tmp/exp")], experiments) is None  # that would be /tmp itself


def test_outermost_drops_paths_inside_others() -> None:
    """A path inside another staged path (or repeated) is staged only once."""
    paths = [Path("/r/a/exp"), Path("/r/a"), Path("/r/b.csv"), Path("/r/b.csv")]
    assert outermost(paths) == [Path("/r/a"), Path("/r/b.csv")]


def test_stage_puts_a_file_input_at_its_place(tmp_path: Path) -> None:
    """An input file outside the script's directory appears at its path below the root."""
    root = tmp_path / "root"
    data = root / "data" / "train.csv"
    data.parent.mkdir(parents=True)
    data.write_text("x\n")
    slot = tmp_path / "slot"
    slot.mkdir()
    target = stage(data, root, slot)
    assert target == slot / "data" / "train.csv"
    assert target.stat().st_ino == data.stat().st_ino


def test_stage_readable_copies_and_opens_private_files(tmp_path: Path) -> None:
    """For files the sandbox user cannot read in place: copies, never links, readable."""
    source = tmp_path / "root" / "exp"
    source.mkdir(parents=True, mode=0o700)
    source.chmod(0o700)
    (source / "secret.csv").write_text("x")
    (source / "secret.csv").chmod(0o600)
    slot = tmp_path / "slot"
    slot.mkdir()
    target = stage(source, source.parent, slot, readable=True)
    assert target.stat().st_mode & 0o777 == 0o755
    copied = target / "secret.csv"
    assert copied.stat().st_mode & 0o777 == 0o644
    assert copied.stat().st_ino != (source / "secret.csv").stat().st_ino
    assert (source / "secret.csv").stat().st_mode & 0o777 == 0o600  # the original is untouched


def test_a_slot_that_cannot_be_created_leaves_no_directory(tmp_path: Path) -> None:
    """When the engine refuses a pool container, its host directory is removed too."""
    maker = SlotMaker(
        engine=FakeEngine(create_error=ExperimentExecutionError("refused")),
        image="img",
        policy=SandboxPolicy(image="img"),
        command=["python", "-c", "pass"],
        slots_dir=tmp_path / "slots",
        lifetime=60,
    )
    with pytest.raises(ExperimentExecutionError, match="refused"):
        maker.make(tmp_path / "experiments")
    assert list((tmp_path / "slots").iterdir()) == []


def test_an_unexpected_error_starting_a_slot_is_reported_and_the_slot_replaced(
    tmp_path: Path,
) -> None:
    """A slot failing with any error (not only the runner's) is said, and a later take refills."""
    maker = SlotMaker(
        engine=FakeEngine(),
        image="img",
        policy=SandboxPolicy(image="img"),
        command=["python", "-c", SOURCE],
        slots_dir=tmp_path / "slots",
        lifetime=60,
    )
    calls: list[int] = []

    def fails_once(root: Path) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")
        return maker.make(root)

    pool = WarmPool(0, maker, tmp_path / "root")
    pool._create = fails_once  # the pool's own seam to its maker
    pool.size = 1
    pool._refill()
    assert not pool.wait_ready(10)
    assert pool.error is not None and "OSError: disk full" in str(pool.error)
    assert pool.take() is None  # nothing ready yet; the take starts a replacement
    assert pool.wait_ready(10)  # which is waited for: the old failure no longer stands
    assert pool.error is None
    pool.close()
