import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import ExperimentRunner
from runner.bootstrap import READY, SOURCE
from runner.pool import stage
from tests.unit.fakes import FakeEngine


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


def test_only_scripts_under_the_pool_root_are_eligible(tmp_path: Path) -> None:
    """The pool serves scripts below its root whose inputs sit in the script's directory."""
    runner = ExperimentRunner(engine=FakeEngine(), pool_root=tmp_path)  # type: ignore[arg-type]
    runner._pool = object()  # type: ignore[assignment]  # eligibility only asks "is there one"
    script = tmp_path / "exp" / "experiment.py"
    assert runner._warm_eligible(script, [])
    assert runner._warm_eligible(script, [tmp_path / "exp" / "data.csv"])
    assert not runner._warm_eligible(script, [tmp_path / "elsewhere.csv"])
    assert not runner._warm_eligible(tmp_path / "experiment.py", [])
    assert not runner._warm_eligible(Path("/opt/other/experiment.py"), [])


def test_negative_pool_size_is_refused() -> None:
    """warm_pool must be 0 or positive."""
    with pytest.raises(ValueError):
        ExperimentRunner(engine=FakeEngine(), warm_pool=-1)  # type: ignore[arg-type]


def hand_over(tmp_path: Path, code: str, preload: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run the bootstrap on this host's Python, as a pool container would, and hand over."""
    (tmp_path / "setsenv.py").write_text("import os\nos.environ['SET_BY_PRELOAD'] = '1'\n")
    directory = tmp_path / "exp"
    directory.mkdir(exist_ok=True)
    script = directory / "experiment.py"
    script.write_text(code)
    process = subprocess.Popen(
        [sys.executable, "-c", SOURCE, *preload],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tmp_path, env={**os.environ, "MARKER": "1"},
    )  # fmt: skip
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline() == READY
    out, err = process.communicate(str(script).encode() + b"\n", timeout=60)
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
