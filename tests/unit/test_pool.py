import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from runner import ExperimentExecutionError, ExperimentRunner
from runner.backend import fits_pool
from runner.bootstrap import READY, SOURCE, hand_over_line
from runner.models import ExperimentSpec
from runner.pool import SlotMaker, stage
from runner.sandbox import SandboxPolicy
from runner.tree import Budget, TreeExpired, TreeRefused
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


def test_only_scripts_under_the_pool_root_are_eligible(tmp_path: Path) -> None:
    """The pool serves scripts below its root whose inputs sit in the script's directory."""
    script = tmp_path / "exp" / "experiment.py"
    assert fits_pool(tmp_path, script, [])
    assert fits_pool(tmp_path, script, [tmp_path / "exp" / "data.csv"])
    assert not fits_pool(tmp_path, script, [tmp_path / "elsewhere.csv"])
    assert not fits_pool(tmp_path, tmp_path / "experiment.py", [])
    assert not fits_pool(tmp_path, Path("/opt/other/experiment.py"), [])


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
        pool_root=tmp_path / "experiments",
        slots_dir=tmp_path / "slots",
        lifetime=60,
    )
    with pytest.raises(ExperimentExecutionError, match="refused"):
        maker.make()
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


def test_on_an_engine_that_cannot_see_the_files_the_pool_says_why_and_runs_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote engine gets no warm pool (slots bind a host directory): a note, cold runs."""
    monkeypatch.setenv("RUNNER_TRANSFER", "auto")
    engine = FakeEngine(remote=True)
    script = tmp_path / "experiments" / "exp" / "experiment.py"
    script.parent.mkdir(parents=True)
    script.write_text("print(1)\n")
    with ExperimentRunner(
        timeout=5, engine=engine, warm_pool=1, pool_root=tmp_path / "experiments"
    ) as runner:
        assert runner.warm_pool_size == 0
        assert "cold" in (runner.backend.pool_unavailable or "")
        result = runner.run(script, SPEC, 0)
    assert result.success and not result.warm_start
    assert engine.volumes_made  # the files were copied, not bound
