"""The program a warm container runs: it hands a script over as a cold start would."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from runner.backends.bootstrap import READY, SOURCE, hand_over_line
from runner.core.models import ExperimentSpec
from runner.sandbox import facts

SPEC = ExperimentSpec(experiment_name="warm", model_type="SVC")


#: Arguments a shell or a line-based hand-over would mangle.
AWKWARD_ARGS = [
    "--data", "train data.csv", "", "it's \"quoted\"", "$HOME `id` ; rm -rf /", "*",
    "line one\nline two", "\r\n", " ", "caf\u00e9 \u6570\u636e \U0001f600", "\\", "--",
]  # fmt: skip


def hand_over(
    tmp_path: Path,
    code: str,
    preload: list[str],
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    variables: Sequence[tuple[str, str]] = (),
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
    assert facts.parse(process.stdout.readline()[:-1]) is not None
    assert process.stdout.readline() == READY
    out, err = process.communicate(hand_over_line(str(script), args, variables), timeout=60)
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


def test_bootstrap_sets_the_runs_own_variables(tmp_path: Path) -> None:
    """The run's variables reach the script's environment, values exactly (an '=' too),
    beside what it had before."""
    code = (
        "import json, os\n"
        "print(json.dumps([os.environ.get(n) for n in ('A_PATH', 'B', 'MARKER')]))\n"
    )
    variables = [("A_PATH", "/tmp/x y/train.csv"), ("B", "a=b \u00e9")]
    done = hand_over(tmp_path, code, [], variables=variables)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["/tmp/x y/train.csv", "a=b \u00e9", "1"]


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
    assert done.stdout.endswith(READY) and done.stderr == b""
    assert facts.take(done.stdout)[1] == READY


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


def test_bootstrap_says_its_machine_before_it_is_ready_and_unloads_what_that_took() -> None:
    """The facts line (kernel, CPU, BLAS) comes before READY; the script sees no module of it."""
    code = "import sys\nprint(sorted(m for m in ('json', 'ctypes', 'glob') if m in sys.modules))\n"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "x.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, "-c", SOURCE],
            input=hand_over_line(str(script), []), capture_output=True, timeout=60,
        )  # fmt: skip
    found, rest = facts.take(done.stdout)
    assert found is not None and found.kernel == os.uname().release and found.cpus
    assert rest.startswith(READY)
    assert rest[len(READY) :] == b"[]\n", done.stderr
