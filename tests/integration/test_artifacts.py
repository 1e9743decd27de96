"""Artifacts from real sandboxes: plots and models come back; hostile outputs do not."""

from __future__ import annotations

import errno
import hashlib
import json
import pickletools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from runner import CodeGenerator, ExperimentRunner, ExperimentSpec
from runner.cli.demo import demo_data
from runner.core.settings import ExperimentDefaults
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import RUNTIME, SPEC, needs_local_engine

#: A million tiny files; gVisor's tmpfs ignores its inode cap, and that many would
#: end at the memory cap there, so under it as many as the cap lets through elsewhere:
#: the collector's count cap holds.
HOSTILE_FILES = 4_000 if RUNTIME == "runsc" else 1_000_000

SMALL = ExperimentDefaults(outputs_max_files=50, outputs_max_file_size="1m", outputs_max_bytes="4m")


def outputs_runner(engine: DockerEngine, outputs: Path, timeout: float = 60) -> ExperimentRunner:
    return ExperimentRunner(timeout=timeout, engine=engine, outputs_dir=outputs, settings=SMALL)


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_plot_and_a_pickled_model_in_the_working_directory_come_back(
    engine: DockerEngine, write_script: Callable[..., Path], workdir: Path, tmp_path: Path
) -> None:
    """plot.png and model.pkl saved in the cwd come back with the sha256 the script saw."""
    (workdir / "data.csv").write_text("x,y\n0,0\n1,1\n2,0\n3,1\n")
    (workdir / "data.csv").chmod(0o644)
    script = write_script(
        """
        import hashlib, json, os, pickle, sys
        import pandas as pd
        from sklearn.linear_model import LogisticRegression

        data = pd.read_csv("data.csv")  # a relative read of the script's own file
        model = LogisticRegression().fit(data[["x"]], data["y"])
        with open("model.pkl", "wb") as f:
            pickle.dump(model, f)
        png = b"\\x89PNG\\r\\n\\x1a\\n" + os.urandom(5000)
        with open("plot.png", "wb") as f:
            f.write(png)
        try:
            open("data.csv", "w")
            overwrite = "allowed"
        except OSError as e:
            overwrite = e.errno
        names = ("model.pkl", "plot.png")
        sums = {n: hashlib.sha256(open(n, "rb").read()).hexdigest() for n in names}
        print(json.dumps({"sums": sums, "overwrite": overwrite, "cwd": os.getcwd(),
                          "file": __file__, "path0": sys.path[0]}))
        print(json.dumps({"success": True, "metrics": {}}))
        """
    )
    before = everything_under(workdir)
    outputs = tmp_path / "outputs"
    result = outputs_runner(engine, outputs).run(script, SPEC, 0)
    assert result.success, result.stderr
    seen = json.loads(result.stdout.splitlines()[0])
    # EROFS (gVisor: EACCES): the script's own files stay as they are.
    assert seen["overwrite"] in (errno.EROFS, errno.EACCES)
    assert seen["cwd"] == "/outputs"
    assert (seen["file"], seen["path0"]) == (str(script), str(script.parent))
    got = {a.name: a for a in result.artifacts}
    assert sorted(got) == ["model.pkl", "plot.png"]
    for name, artifact in got.items():
        assert artifact.sha256 == seen["sums"][name]
        assert Path(artifact.path) == outputs / name
        assert hashlib.sha256(Path(artifact.path).read_bytes()).hexdigest() == artifact.sha256
    # The host has no scikit-learn to unpickle it with: read the pickle's opcodes instead.
    opcodes = pickletools.genops((outputs / "model.pkl").read_bytes())
    assert "LogisticRegression" in {str(arg) for _op, arg, _pos in opcodes}
    assert result.artifacts_message is None
    assert everything_under(workdir) == before


def test_files_written_to_output_dir_come_back_nested(
    engine: DockerEngine, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """$OUTPUT_DIR names the same writable directory; subdirectories come back as paths."""
    script = write_script(
        """
        import json, os
        out = os.environ["OUTPUT_DIR"]
        os.makedirs(os.path.join(out, "figs"))
        with open(os.path.join(out, "figs", "roc.svg"), "w") as f:
            f.write("<svg/>")
        print(json.dumps({"success": True, "metrics": {}}))
        """
    )
    result = outputs_runner(engine, tmp_path / "o").run(script, SPEC, 0)
    assert [(a.name, a.size) for a in result.artifacts] == [("figs/roc.svg", 6)]
    assert (tmp_path / "o" / "figs" / "roc.svg").read_text() == "<svg/>"


def test_hostile_outputs_are_refused_or_capped_with_a_message(
    engine: DockerEngine, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """A symlink to /etc/passwd, a FIFO, a hard link, a million files and a huge file."""
    script = write_script(
        """
        import json, os
        os.symlink("/etc/passwd", "passwd")
        os.mkfifo("fifo")
        with open("kept.txt", "w") as f:
            f.write("kept")
        os.link("kept.txt", "hardlink.txt")
        with open("big.bin", "wb") as f:
            try:
                f.write(b"\\0" * (2 * 1024 * 1024))
            except OSError:
                pass
        os.mkdir("many")
        made = 0
        try:
            for i in range(FILES):
                open(f"many/{i}", "w").close()
                made += 1
        except OSError as e:
            stopped = e.errno
        print(json.dumps({"success": True, "metrics": {"made": made}}))
        """.replace("FILES", str(HOSTILE_FILES))
    )
    outputs = tmp_path / "out"
    result = outputs_runner(engine, outputs, timeout=120).run(script, SPEC, 0)
    assert result.success, result.stderr
    if RUNTIME != "runsc":
        assert result.metrics["made"] < 1_000_000  # the tmpfs's inode cap stopped it
    message = result.artifacts_message or ""
    assert "(a symlink): 'passwd'" in message
    assert "(a FIFO): 'fifo'" in message
    assert "(a hard link)" in message and "'kept.txt'" in message
    assert "RUNNER_OUTPUTS_MAX_FILE_SIZE): 'big.bin'" in message
    assert "RUNNER_OUTPUTS_MAX_FILES)" in message
    assert len(result.artifacts) == 50
    assert all(a.name.startswith("many/") for a in result.artifacts)
    assert not (outputs / "passwd").exists() and not (outputs / "fifo").exists()
    expected = ["exp", "exp/script.py", "out", "out/many"]
    expected += [f"out/{a.name}" for a in result.artifacts]
    assert everything_under(tmp_path) == sorted(expected)


def test_a_timed_out_run_still_brings_back_what_it_wrote(
    engine: DockerEngine, write_script: Callable[..., Path], tmp_path: Path
) -> None:
    """At the deadline the script is ended, and what it wrote so far still comes back."""
    script = write_script(
        """
        import time
        with open("checkpoint.txt", "w") as f:
            f.write("epoch 1")
        time.sleep(600)
        """
    )
    result = outputs_runner(engine, tmp_path / "o", timeout=5).run(script, SPEC, 0)
    assert result.timed_out
    assert [a.name for a in result.artifacts] == ["checkpoint.txt"]
    assert result.execution_time < 30


def test_a_generated_experiment_saves_its_fitted_model(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """CodeGenerator's script pickles the fitted pipeline to $OUTPUT_DIR/model.pkl."""
    spec = ExperimentSpec(experiment_name="saved", model_type="LogisticRegression")
    script = CodeGenerator(tmp_path / "experiments").generate(spec, demo_data(), "churned")
    result = outputs_runner(engine, tmp_path / "o").run(script, spec, 0)
    assert result.success, result.stderr
    assert [a.name for a in result.artifacts] == ["model.pkl"]
    assert result.artifacts[0].size > 0


@needs_local_engine
def test_a_warm_run_brings_outputs_back_like_a_cold_one(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """A pool made with outputs on links the script's files in and sends its outputs back."""
    root = tmp_path / "experiments"
    (root / "exp").mkdir(parents=True)
    for path in (root, root / "exp"):
        path.chmod(0o755)
    (root / "exp" / "data.csv").write_text("a\n1\n")
    script = root / "exp" / "experiment.py"
    script.write_text(
        "import json, os\n"
        "open('copy.csv', 'w').write(open('data.csv').read())\n"
        "print(json.dumps({'success': True, 'metrics': {}, 'cwd': os.getcwd()}))\n"
    )
    for path in (script, root / "exp" / "data.csv"):
        path.chmod(0o644)
    with ExperimentRunner(
        timeout=30,
        engine=engine,
        warm_pool=1,
        pool_root=root,
        outputs_dir=tmp_path / "out",
        settings=SMALL,
    ) as runner:
        assert runner.wait_for_warm(120)
        result = runner.run(script, SPEC, 0)
    assert result.warm_start and result.success, result.stderr
    assert [a.name for a in result.artifacts] == ["copy.csv"]
    assert (tmp_path / "out" / "copy.csv").read_text() == "a\n1\n"


def test_outputs_over_the_scripts_own_directory_are_refused_and_nothing_changes(
    engine: DockerEngine, write_script: Callable[..., Path], workdir: Path
) -> None:
    """`runner run exp.py --outputs .`: a script that swaps the link to itself for a file of
    its own never runs, so exp.py and its data stay as they were."""
    (workdir / "data.csv").write_text("x\n1\n")
    (workdir / "data.csv").chmod(0o644)
    script = write_script(
        """
        import os
        for name in ("exp.py", "data.csv"):
            os.remove(name)
            with open(name, "w") as f:
                f.write("replaced")
        """,
        "exp.py",
    )
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(script), "--outputs", str(workdir),
         "--no-record"],
        capture_output=True, text=True, check=False, cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "overlap" in done.stderr
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before
