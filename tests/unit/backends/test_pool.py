import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentDefaults, ExperimentExecutionError, ExperimentRunner
from runner.backends.bootstrap import READY, SOURCE, hand_over_line
from runner.backends.local import fits_pool
from runner.backends.pool import (
    SlotMaker,
    WarmPool,
    may_be_pool_root,
    outermost,
    pool_root_for,
    stage,
)
from runner.core.models import ExperimentSpec
from runner.sandbox.cleanup import LABEL, LABEL_DEADLINE, LABEL_OWNER
from runner.sandbox.files.tree import Budget, TreeExpired, TreeRefused
from runner.sandbox.policy import SandboxPolicy
from tests.unit.fakes import FakeEngine, file_mounts

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


def test_negative_pool_size_is_refused() -> None:
    """warm_pool must be 0 or positive."""
    with pytest.raises(ValueError):
        ExperimentRunner(engine=FakeEngine(), warm_pool=-1)


def hand_over(
    tmp_path: Path,
    code: str,
    preload: list[str],
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the bootstrap on this host's Python, as a pool container would, and hand over."""
    (tmp_path / "setsenv.py").write_text("import os\nos.environ['SET_BY_PRELOAD'] = '1'\n")
    # As importing matplotlib.pyplot does: its config directory, with the font cache.
    (tmp_path / "makesmpl.py").write_text(
        "import os\nos.makedirs(os.environ['MPLCONFIGDIR'], exist_ok=True)\n"
        "open(os.path.join(os.environ['MPLCONFIGDIR'], 'fontlist.json'), 'w').close()\n"
    )
    directory = tmp_path / "exp"
    directory.mkdir(exist_ok=True)
    script = directory / "experiment.py"
    script.write_text(code)
    process = subprocess.Popen(
        [sys.executable, "-c", SOURCE, *preload],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tmp_path, env={**os.environ, "MARKER": "1", **(env or {})},
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline() == READY
    out, err = process.communicate(hand_over_line(str(script), args), timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_bootstrap_hands_over_like_a_cold_start(tmp_path: Path) -> None:
    """After hand-over: __main__, __file__, argv, cwd, sys.path[0], env as for `python script`."""
    code = (
        "import json, os, sys\n"
        "print(json.dumps({'name': __name__, 'file': __file__, 'argv': sys.argv,\n"
        "  'cwd': os.getcwd(), 'path0': sys.path[0], 'marker': os.environ.get('MARKER'),\n"
        "  'stdin': sys.stdin.read(), 'preloaded': 'email.message' in sys.modules,\n"
        "  'set_by_preload': 'SET_BY_PRELOAD' in os.environ}))\n"
    )
    done = hand_over(tmp_path, code, ["email.message", "setsenv"])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    script = str(tmp_path / "exp" / "experiment.py")
    assert seen == {
        "name": "__main__", "file": script, "argv": [script], "cwd": str(tmp_path / "exp"),
        "path0": str(tmp_path / "exp"), "marker": "1", "stdin": "", "preloaded": True,
        "set_by_preload": False,
    }  # fmt: skip


#: Arguments a shell or a line-based hand-over would mangle.
AWKWARD_ARGS = [
    "--data", "train data.csv", "", "it's \"quoted\"", "$HOME `id` ; rm -rf /", "*",
    "line one\nline two", "\r\n", " ", "caf\u00e9 \u6570\u636e \U0001f600", "\\", "--",
]  # fmt: skip


def test_bootstrap_hands_arguments_over_exactly(tmp_path: Path) -> None:
    """sys.argv[1:] after a warm hand-over is the arguments, byte for byte, newlines included."""
    code = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    done = hand_over(tmp_path, code, [], AWKWARD_ARGS)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == AWKWARD_ARGS


def test_bootstrap_imports_nothing_to_read_the_hand_over(tmp_path: Path) -> None:
    """With no preload, the script's sys.modules is exactly what `python script.py` shows."""
    code = "import sys\nprint(' '.join(sorted(sys.modules)))\n"
    warm = hand_over(tmp_path, code, [], ["--flag", "x"])
    cold = subprocess.run(
        [sys.executable, str(tmp_path / "exp" / "experiment.py"), "--flag", "x"],
        capture_output=True, check=True, cwd=tmp_path / "exp",
    )  # fmt: skip
    assert warm.stdout.split() == cold.stdout.split()


@pytest.mark.parametrize(
    "line", [b"not hex\n", b"2f78", b"\xff\n", b"2f7\n"], ids=["text", "no-newline", "bytes", "odd"]
)
def test_a_malformed_hand_over_ends_the_container(line: bytes) -> None:
    """A hand-over that is not hex fields on one line runs nothing: exit status 3."""
    done = subprocess.run(
        [sys.executable, "-c", SOURCE], input=line, capture_output=True, timeout=60
    )
    assert done.returncode == 3
    assert done.stdout == READY and done.stderr == b""


def test_bootstrap_removes_what_the_matplotlib_preload_left_in_tmp(tmp_path: Path) -> None:
    """The config directory a preload made under /tmp is gone; one that was there stays."""
    made = Path(tempfile.mkdtemp(prefix="runner-test-", dir="/tmp"))
    try:
        config = made / "matplotlib"
        code = f"import os\nprint(os.path.exists({str(config)!r}))\n"
        done = hand_over(tmp_path, code, ["makesmpl"], env={"MPLCONFIGDIR": str(config)})
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"False\n"
        config.mkdir()
        done = hand_over(tmp_path, code, ["makesmpl"], env={"MPLCONFIGDIR": str(config)})
        assert done.stdout == b"True\n"
    finally:
        shutil.rmtree(made)


def test_bootstrap_reports_errors_like_a_cold_start(tmp_path: Path) -> None:
    """An uncaught exception exits 1 with a traceback that starts in the script."""
    done = hand_over(tmp_path, "raise ValueError('boom')\n", [])
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == "ValueError: boom"
    assert b"<string>" not in done.stderr
    exited = hand_over(
        tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path,
        "raise SystemExit(7)\n",
        [],
    )
    assert exited.returncode == 7


def test_bootstrap_exit_joins_threads_runs_atexit_and_flushes(tmp_path: Path) -> None:
    """The fast exit still waits for threads, runs atexit handlers and flushes output."""
    code = (
        "import atexit, sys, threading, time\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "sys.stdout.write('unflushed')\n"
        "sys.exit(3)\n"
    )
    done = hand_over(tmp_path, code, [])
    assert done.returncode == 3
    assert done.stdout.decode().splitlines() == ["unflushedthread done", "atexit ran"]


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
