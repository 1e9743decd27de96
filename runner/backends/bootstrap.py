"""The program a warm pool container runs: preload, wait, then become the script.

It is passed to ``python -c`` with the modules to preload as arguments. While it
imports them its stdout and stderr point at /dev/null; it then announces it is
ready with one line on the real stdout, and reads one line from stdin: the
hand-over (``hand_over_line``): the run's own variables, the script's absolute path and
its arguments.
From there on the script sees what it would see in a cold container:
``__name__ == "__main__"``, ``__file__`` and ``sys.argv[0]`` its path,
``sys.argv[1:]`` its arguments, its directory as working directory (with
outputs on: ``$OUTPUT_DIR``, holding links to the directory's entries) and
``sys.path[0]``, stdin at /dev/null, the environment and ``/tmp`` as they were
before the preload, and no module loaded apart from what a bare interpreter and
the preloaded libraries bring. After the hand-over it imports nothing.

Before it says it is ready, it writes the machine's facts (``runner.sandbox.facts``),
asked of the preloaded libraries, on the same stdout: the pool keeps them for
the run.

The hand-over is one line of space-separated fields, each the hex of a UTF-8
string: hex has no newline or space in it whatever the arguments hold, and
decoding it needs no import (a JSON line would load ``json`` into the
script's ``sys.modules``). The first field is the run's own variables
(``NAME=VALUE`` entries separated by NUL, often none), which a cold run has in
its container's environment; then the script's path, then its arguments.
"""

from collections.abc import Sequence

from runner.sandbox import facts

READY = b"\x00experiment-runner-ready\n"

SOURCE = (
    r"""
import os, sys
_out, _err = os.dup(1), os.dup(2)
_null = os.open("/dev/null", os.O_WRONLY)
os.dup2(_null, 1)
os.dup2(_null, 2)
_environ = dict(os.environ)
_mpl = os.environ.get("MPLCONFIGDIR", "")
_made_mpl = _mpl.startswith("/tmp/") and not os.path.exists(_mpl)
for _name in sys.argv[1:]:
    try:
        __import__(_name)
    except Exception:
        pass  # a preload that fails is the script's to meet, as in a cold run
# matplotlib's config directory, made by the preload for its font cache (loaded by now),
# goes: the script finds /tmp as a cold run does.
if _made_mpl and os.path.isdir(_mpl) and not os.path.islink(_mpl):
    __import__("shutil").rmtree(_mpl, ignore_errors=True)
# The machine as the script will see it (runner.sandbox.facts), asked of the preloaded
# libraries; what that imports is taken out again.
_loaded = set(sys.modules)
try:
    _facts = {}
    exec(FACTS, _facts)
    _facts = _facts["_runner_facts"]()
except Exception:
    _facts = EMPTY
for _name in set(sys.modules) - _loaded:
    del sys.modules[_name]
del _loaded
# Imports may set variables (scikit-learn sets KMP_*): the script starts from the same ones.
os.environ.clear()
os.environ.update(_environ)
sys.stdout.flush()
sys.stderr.flush()
os.write(_out, _facts + READY)
del _facts
_line = sys.stdin.buffer.readline()
if not _line.endswith(b"\n"):
    os._exit(3)
try:
    _variables, _path, *_args = [
        bytes.fromhex(_field).decode("utf-8", "surrogateescape")
        for _field in _line[:-1].decode("ascii").split(" ")
    ]
except ValueError:
    os._exit(3)
for _entry in _variables.split("\0") if _variables else ():
    _name, _, _value = _entry.partition("=")
    os.environ[_name] = _value
_stdin = os.open("/dev/null", os.O_RDONLY)
os.dup2(_stdin, 0)
os.close(_stdin)
os.dup2(_out, 1)
os.dup2(_err, 2)
for _fd in (_out, _err, _null):
    os.close(_fd)
_dir = os.path.dirname(_path)
_outputs = _environ.get("OUTPUT_DIR")
if _outputs:
    # Outputs on: the working directory is the writable one, with the script's files linked in.
    for _entry in os.listdir(_dir):
        try:
            os.symlink(os.path.join(_dir, _entry), os.path.join(_outputs, _entry))
        except OSError:
            pass
    os.chdir(_outputs)
else:
    os.chdir(_dir)
sys.argv[:] = [_path, *_args]
sys.path[0] = _dir
_main = type(sys)("__main__")
_main.__file__ = _path
_main.__cached__ = None
_main.__package__ = None
_main.__spec__ = None
_main.__loader__ = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", _path)
_main.__builtins__ = sys.modules["builtins"]
sys.modules["__main__"] = _main
with open(_path, "rb") as _file:
    _code = compile(_file.read(), _path, "exec")


def _finish(status):
    # What interpreter shutdown does that a script can observe (join non-daemon
    # threads, run atexit, flush), then leave without tearing every preloaded
    # module down: that teardown alone takes a fifth of a second.
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        __import__("atexit")._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        status = status or 120
    os._exit(status)


try:
    exec(_code, _main.__dict__)
except SystemExit as _exit:
    if _exit.code is None or isinstance(_exit.code, int):
        _finish(_exit.code or 0)
    print(_exit.code, file=sys.stderr)
    _finish(1)
except BaseException:
    _type, _value, _tb = sys.exc_info()
    _value.__traceback__ = _tb.tb_next  # the traceback starts in the script, as in a cold run
    sys.excepthook(_type, _value, _tb.tb_next)
    _finish(1)
_finish(0)
""".replace("READY", repr(READY))
    .replace("FACTS", repr(facts.SOURCE))
    .replace("EMPTY", repr(facts.EMPTY))
)


def hand_over_line(
    script: str, args: Sequence[str], environment: Sequence[tuple[str, str]] = ()
) -> bytes:
    """What the runner writes to a pool container's stdin: the run's own variables
    (checked by ``runner.sandbox.policy.run_environment``), the script's path, then
    its arguments."""
    variables = "\0".join(f"{name}={value}" for name, value in environment)
    fields = (
        value.encode("utf-8", "surrogateescape").hex() for value in (variables, script, *args)
    )
    return " ".join(fields).encode("ascii") + b"\n"


#: What a warm container imports ahead of time unless told otherwise.
DEFAULT_PRELOAD = (
    "numpy",
    "scipy",
    "pandas",
    "sklearn",
    "sklearn.base",
    "sklearn.compose",
    "sklearn.datasets",
    "sklearn.ensemble",
    "sklearn.impute",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    # Most example code plots: importing pyplot (and building matplotlib's font cache in
    # /tmp) took 0.74 s of a warm run's 0.95 s; preloaded, 25 MB more per warm container.
    "matplotlib.pyplot",
)
