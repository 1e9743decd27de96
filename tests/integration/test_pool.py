"""The warm pool: a warm run looks like a cold one to the script, and nothing is reused or left.

They run on any engine: on one that cannot see this machine's files
(``RUNNER_TEST_ENGINE=dind``) the slots are filled through volumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest

from runner import ExperimentResult, ExperimentRunner
from runner.core.settings import ExperimentDefaults
from runner.sandbox.engine import DockerEngine
from runner.sandbox.identity import UID_COUNT, UID_FIRST
from tests.conftest import our_containers, our_volumes
from tests.integration.conftest import SPEC, needs_local_engine
from tests.integration.test_args_and_hints import AWKWARD_ARGS
from tests.integration.test_lifecycle import spawn, wait_for_container, wait_until_none_left

PROBE = """
import json, os, sys
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "name": __name__,
    "file": __file__,
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "path0": sys.path[0],
    "modules": sorted(sys.modules),
    "env": dict(os.environ),
    "stdin_at_eof": os.read(0, 1) == b"",
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "data": open("data.txt").read(),
    "tmp": sorted(os.listdir("/tmp")),
}))
"""


@pytest.fixture
def pool_root(tmp_path: Path) -> Path:
    root = tmp_path / "experiments"
    root.mkdir()
    root.chmod(0o755)
    return root


def experiment(root: Path, code: str, name: str = "exp") -> Path:
    """A script directory under the pool root, with a data file beside the script."""
    directory = root / name
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "data.txt").write_text("beside the script")
    (directory / "data.txt").chmod(0o644)
    script = directory / "experiment.py"
    script.write_text(textwrap.dedent(code))
    script.chmod(0o644)
    return script


@pytest.fixture
def warm(engine: DockerEngine, pool_root: Path) -> Iterator[ExperimentRunner]:
    runner = ExperimentRunner(timeout=30, engine=engine, warm_pool=1, pool_root=pool_root)
    yield runner
    runner.close()


def run_ready(runner: ExperimentRunner, script: Path, args: Sequence[str] = ()) -> ExperimentResult:
    assert runner.wait_for_warm(120)
    result = runner.run(script, SPEC, 0, args=args)
    assert result.warm_start
    return result


def seen(result: ExperimentResult) -> dict[str, Any]:
    assert result.stdout, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_a_warm_run_looks_like_a_cold_one(
    engine: DockerEngine, warm: ExperimentRunner, pool_root: Path
) -> None:
    """Name, file, argv, cwd, sys.path[0], env, stdin, identity, network and files match."""
    script = experiment(pool_root, PROBE)
    warm_view = seen(run_ready(warm, script))
    cold = ExperimentRunner(timeout=60, engine=engine).run(script, SPEC, 0)
    assert not cold.warm_start
    cold_view = seen(cold)
    preloaded = set(warm_view.pop("modules")) - set(cold_view.pop("modules"))
    # Each sandbox has a user ID of its own: the only field that must differ.
    warm_uid, cold_uid = warm_view.pop("uid"), cold_view.pop("uid")
    assert warm_uid != cold_uid
    assert UID_FIRST <= warm_uid < UID_FIRST + UID_COUNT
    assert UID_FIRST <= cold_uid < UID_FIRST + UID_COUNT
    assert warm_view == cold_view
    assert warm_view["name"] == "__main__"
    assert warm_view["argv"] == [str(script)]
    assert warm_view["cwd"] == str(script.parent)
    # The only difference: the preloaded libraries (and what they import) are loaded.
    closure = ExperimentRunner(timeout=60, engine=engine).run(
        experiment(
            pool_root,
            "import json, sys\n"
            + "".join(f"import {name}\n" for name in warm.preload)
            + "print(json.dumps({'modules': sorted(sys.modules)}))\n",
            "closure",
        ),
        SPEC,
        0,
    )
    assert preloaded <= set(seen(closure)["modules"])
    assert "numpy" in preloaded and "sklearn" in preloaded


def test_without_preload_the_modules_match_exactly(engine: DockerEngine, pool_root: Path) -> None:
    """With an empty preload list, sys.modules is the same as in a cold run."""
    script = experiment(pool_root, "import json, sys\nprint(json.dumps(sorted(sys.modules)))\n")
    with ExperimentRunner(
        timeout=30, engine=engine, warm_pool=1, pool_root=pool_root, preload=()
    ) as runner:
        warm_modules = json.loads(run_ready(runner, script).stdout)
    cold_modules = json.loads(
        ExperimentRunner(timeout=30, engine=engine).run_script_directly(script)["stdout"]
    )
    assert warm_modules == cold_modules


def test_arguments_reach_a_warm_script_as_a_cold_one(
    engine: DockerEngine, warm: ExperimentRunner, pool_root: Path
) -> None:
    """sys.argv[1:] is the arguments exactly, warm and cold alike, newlines and all."""
    script = experiment(pool_root, "import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    warm_argv = json.loads(run_ready(warm, script, AWKWARD_ARGS).stdout)
    cold = ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0, args=AWKWARD_ARGS)
    assert warm_argv == json.loads(cold.stdout) == AWKWARD_ARGS


def test_errors_read_the_same_warm_and_cold(
    engine: DockerEngine, warm: ExperimentRunner, pool_root: Path
) -> None:
    """An uncaught exception gives the same exit code and error message in both."""
    script = experiment(pool_root, "def f():\n    raise ValueError('boom')\nf()\n")
    warm_result = run_ready(warm, script)
    cold_result = ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0)
    assert warm_result.exit_code == cold_result.exit_code == 1
    assert warm_result.error_message == cold_result.error_message
    assert warm_result.error_message == "Script exited with code 1: ValueError: boom"
    assert "<string>" not in warm_result.stderr  # no frame of the bootstrap


def test_a_pooled_container_is_never_used_twice(warm: ExperimentRunner, pool_root: Path) -> None:
    """Each warm run gets a fresh container: nothing a previous script left is there."""
    script = experiment(
        pool_root,
        """
        import json, os
        leftover = os.path.exists("/tmp/left-by-previous-run")
        open("/tmp/left-by-previous-run", "w").close()
        print(json.dumps({"leftover": leftover, "boot": open("/proc/1/stat").read().split()[21]}))
        """,
    )
    views = [seen(run_ready(warm, script)) for _ in range(3)]
    assert [v["leftover"] for v in views] == [False, False, False]


def test_timeout_counts_from_the_hand_over(engine: DockerEngine, pool_root: Path) -> None:
    """A slot that waited longer than the timeout still runs its script in full; the
    deadline then kills a script that overstays."""
    quick = experiment(pool_root, "import json\nprint(json.dumps({'success': True}))\n", "quick")
    slow = experiment(pool_root, "import time\ntime.sleep(600)\n", "slow")
    with ExperimentRunner(timeout=2, engine=engine, warm_pool=1, pool_root=pool_root) as runner:
        assert runner.wait_for_warm(120)
        time.sleep(3)  # longer than the timeout, spent waiting in the pool
        assert run_ready(runner, quick).success
        assert runner.wait_for_warm(120)
        started = time.monotonic()
        result = run_ready(runner, slow)
        assert result.timed_out
        assert result.error_message == "Experiment timed out after 2 seconds"
        assert time.monotonic() - started < 2 + 2


def test_scripts_outside_an_explicit_pool_root_run_cold(
    warm: ExperimentRunner, workdir: Path
) -> None:
    """A script outside an explicit pool root runs in a cold container, with the same result."""
    script = workdir / "outside.py"
    script.write_text("import json\nprint(json.dumps({'success': True}))\n")
    script.chmod(0o644)
    assert warm.wait_for_warm(120)
    result = warm.run(script, SPEC, 0)
    assert result.success
    assert not result.warm_start


def test_closing_the_runner_leaves_no_container(engine: DockerEngine, pool_root: Path) -> None:
    """close() (or leaving the with block) removes every pool container."""
    with ExperimentRunner(timeout=30, engine=engine, warm_pool=2, pool_root=pool_root) as runner:
        assert runner.wait_for_warm(120)
        started = [c for c in our_containers(engine) if c.status.startswith("Up")]
        assert len(started) == 2  # (and, where files are copied, a helper each, never started)
    assert our_containers(engine) == []
    assert our_volumes(engine) == []


def test_ctrl_c_with_a_pool_leaves_no_container(engine: DockerEngine, pool_root: Path) -> None:
    """SIGINT during a warm run removes the run's and the pool's containers."""
    script = experiment(pool_root, "import time\ntime.sleep(600)\n")
    process = spawn(
        f"""
        from runner import ExperimentRunner, ExperimentSpec
        runner = ExperimentRunner(timeout=600, warm_pool=2, pool_root={str(pool_root)!r})
        runner.wait_for_warm(120)
        print("ready", flush=True)
        runner.run({str(script)!r}, ExperimentSpec(experiment_name="x", model_type="SVC"), 0)
        """
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    wait_for_container(engine)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert our_containers(engine) == []


def test_a_caller_killed_right_after_a_warm_result_leaves_no_container(
    engine: DockerEngine, pool_root: Path
) -> None:
    """SIGKILL right after a warm result: the used slot, still being removed in the
    background, and the idle slot that replaced it both go (the caller's lifeline)."""
    script = experiment(pool_root, "import json\nprint(json.dumps({'success': True}))\n")
    process = spawn(
        f"""
        import os, signal
        from runner import ExperimentRunner, ExperimentSpec
        runner = ExperimentRunner(timeout=60, warm_pool=1, pool_root={str(pool_root)!r})
        assert runner.wait_for_warm(120)
        spec = ExperimentSpec(experiment_name="x", model_type="SVC")
        result = runner.run({str(script)!r}, spec, 0)
        print(result.success, result.warm_start, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out, err = process.communicate(timeout=180)
    assert process.returncode == -signal.SIGKILL, err
    assert out.split() == ["True", "True"], err
    wait_until_none_left(engine)


@needs_local_engine
def test_warm_telemetry_counts_the_script_not_the_preload(
    warm: ExperimentRunner, pool_root: Path
) -> None:
    """CPU time of a warm run excludes the imports done before the hand-over."""
    script = experiment(pool_root, "import json\nprint(json.dumps({'success': True}))\n")
    result = run_ready(warm, script)
    assert result.cpu_seconds is not None and result.peak_memory_bytes is not None
    assert result.cpu_seconds < 0.6  # the preload alone costs more than a CPU-second
    assert result.peak_memory_bytes > 50 * 1024 * 1024  # the preloaded libraries are resident


def test_a_dead_slot_falls_back_to_a_cold_run(
    engine: DockerEngine, warm: ExperimentRunner, pool_root: Path
) -> None:
    """If a waiting container died (here: killed from outside), the script runs cold."""
    assert warm.wait_for_warm(120)
    for container in our_containers(engine):
        engine.kill(container.id)
    script = experiment(pool_root, "import json\nprint(json.dumps({'success': True}))\n")
    result = warm.run(script, SPEC, 0)
    assert result.success, result.error_message
    assert not result.warm_start


SYMLINK_PROBE = """
import json, os
def read(name):
    try:
        with open(name, "rb") as f:
            return f.read(64).decode("latin-1")
    except OSError as e:
        return type(e).__name__
print(json.dumps({
    "private": read("private.csv"),
    # The root mount's place and options: IDs and overlay paths differ per container.
    "mounts": read("mounts").split(" ", 3)[-1].split(" - ")[0],
    "zero": os.readlink("big.bin"),
    "zero_head": read("big.bin")[:4],
}))
"""


@pytest.fixture
def pool_root_on_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A pool root on /dev/shm: another filesystem than the pool's cache, so links fail."""
    root = Path(tempfile.mkdtemp(prefix="runner-test-", dir="/dev/shm"))
    root.chmod(0o755)
    cache = ExperimentDefaults().cache_dir
    while not cache.exists():  # a new machine has no cache yet; the pool makes it there
        cache = cache.parent
    if root.stat().st_dev == cache.stat().st_dev:
        pytest.fail("/dev/shm is on the cache directory's filesystem; the test needs two")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_warm_hand_over_across_filesystems_reads_no_host_file(
    engine: DockerEngine, pool_root_on_tmpfs: Path, tmp_path: Path
) -> None:
    """Symlinks to host files or devices show in a warm run exactly as in a cold one."""
    private = tmp_path / "private.csv"
    private.write_text("host secret")
    private.chmod(0o644)
    script = experiment(pool_root_on_tmpfs, SYMLINK_PROBE)
    (script.parent / "private.csv").symlink_to(private)
    (script.parent / "big.bin").symlink_to("/dev/zero")
    (script.parent / "mounts").symlink_to("/proc/self/mountinfo")  # the runner's, on the host
    with ExperimentRunner(
        timeout=30, engine=engine, warm_pool=1, pool_root=pool_root_on_tmpfs
    ) as runner:
        warm_view = seen(run_ready(runner, script))
    cold_view = seen(ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0))
    # Each sandbox's own mount table (its mount IDs differ): its read-only root, not the host's.
    for view in (warm_view, cold_view):
        assert view.pop("mounts").startswith("/ / ro")  # gVisor shows "ro" alone
    assert warm_view == cold_view
    assert warm_view["private"] == "FileNotFoundError"
    assert warm_view["zero"] == "/dev/zero"


def test_a_warm_result_reports_the_image_its_slot_was_made_from(
    engine: DockerEngine, pool_root: Path
) -> None:
    """Retagging the image after the pool started does not change a warm run's image ID."""
    images = docker.from_env().images
    sandbox_id = engine.image_id(ExperimentDefaults().image)
    tag = f"experiment-runner/test-retag:{os.getpid()}"
    images.get(sandbox_id).tag(*tag.split(":"))  # Podman wants the tag apart
    try:
        script = experiment(pool_root, "import json\nprint(json.dumps({'success': True}))\n")
        with ExperimentRunner(
            timeout=30, engine=engine, warm_pool=1, pool_root=pool_root, image=tag
        ) as runner:
            assert runner.wait_for_warm(120)
            # The tag now names another image; the waiting slot was made from the first.
            images.get("experiment-runner/base:bookworm").tag(*tag.split(":"))
            result = run_ready(runner, script)
    finally:
        images.remove(tag)
    assert result.success, result.error_message
    assert result.image_id == sandbox_id


INPUT_PROBE = """
import json, os, sys
print(json.dumps({
    "cwd": os.getcwd(),
    "data": open("data.txt").read(),
    "input": open(sys.argv[0].rsplit("/", 2)[0] + "/shared/train.csv").read(),
    "listing": sorted(os.listdir(".")),
}))
"""


def test_an_input_outside_the_script_directory_runs_warm(
    engine: DockerEngine, warm: ExperimentRunner, pool_root: Path
) -> None:
    """An input elsewhere below the root appears at its own path, warm as cold."""
    script = experiment(pool_root, INPUT_PROBE)
    train = pool_root / "shared" / "train.csv"
    train.parent.mkdir()
    train.parent.chmod(0o755)
    train.write_text("x\n3\n")
    train.chmod(0o644)
    assert warm.wait_for_warm(120)
    warm_result = warm.run(script, SPEC, 0, inputs=[train])
    assert warm_result.warm_start, warm_result.stderr
    cold = ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0, inputs=[train])
    assert seen(warm_result) == seen(cold)
    assert seen(warm_result)["input"] == "x\n3\n"


def test_a_private_directory_runs_warm(engine: DockerEngine, tmp_path: Path) -> None:
    """A 0700 directory with a 0600 file runs warm, readable, as a cold copy shows it."""
    root = tmp_path / "private-root"
    root.mkdir(mode=0o700)
    script = experiment(root, PROBE)
    script.parent.chmod(0o700)
    (script.parent / "data.txt").chmod(0o600)
    with ExperimentRunner(timeout=30, engine=engine, warm_pool=1, pool_root=root) as runner:
        warm_view = seen(run_ready(runner, script))
    cold_view = seen(ExperimentRunner(timeout=30, engine=engine).run(script, SPEC, 0))
    for view in (warm_view, cold_view):
        view.pop("uid")
        view.pop("modules")
    assert warm_view == cold_view
    assert warm_view["data"] == "beside the script"


def test_a_script_elsewhere_moves_the_default_pool(
    engine: DockerEngine, tmp_path: Path, pool_root: Path
) -> None:
    """Without pool_root, a script outside the experiments directory runs cold once, then
    warm: the pool moved to the common ancestor."""
    settings = ExperimentDefaults(experiments_dir=pool_root, cache_dir=tmp_path / "cache")
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    script = experiment(elsewhere, "import json\nprint(json.dumps({'success': True}))\n")
    with ExperimentRunner(timeout=30, engine=engine, warm_pool=1, settings=settings) as runner:
        assert runner.wait_for_warm(120)
        first = runner.run(script, SPEC, 0)
        assert first.success and not first.warm_start
        assert runner.pool_root == tmp_path
        second = run_ready(runner, script)
        assert second.success, second.error_message
        inside = experiment(pool_root, "import json\nprint(json.dumps({'success': True}))\n")
        assert run_ready(runner, inside).success  # what ran warm before still does
