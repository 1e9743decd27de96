"""Neighbours: parallel hostile runs cannot see each other's files or processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runner import ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.adversarial.conftest import report
from tests.integration.conftest import SPEC

SNOOP = """
import glob, json, os, time
marker = "{marker}"
with open(f"/tmp/{{marker}}.secret", "w") as f:
    f.write(marker)
os.environ["MARKER"] = marker
time.sleep(2)  # both runs are alive at once here
found_files = [p for p in glob.glob("/tmp/*.secret") if marker not in p]
found_procs = []
for pid in os.listdir("/proc"):
    try:
        command = open(f"/proc/{{pid}}/cmdline", "rb").read() if pid.isdigit() else b""
        if b"neighbour_" in command and marker.encode() not in command:
            found_procs.append(pid)
    except OSError:
        pass
print(json.dumps({{"files": found_files, "procs": found_procs,
                  "pids": len([p for p in os.listdir("/proc") if p.isdigit()])}}))
"""


def test_parallel_runs_are_invisible_to_each_other(
    engine: DockerEngine, workdir: Path, write_script: Callable[..., Path]
) -> None:
    """Two runs at once: neither sees the other's /tmp files or processes."""
    scripts = [write_script(SNOOP.format(marker=m), f"neighbour_{m}.py") for m in ("aa", "bb")]
    runner = ExperimentRunner(timeout=60, engine=engine)
    results = runner.run_many([(s, SPEC, i) for i, s in enumerate(scripts)], max_workers=2)
    for result in results:
        seen = report(result)
        assert seen["files"] == []
        assert seen["procs"] == []
        assert seen["pids"] <= 4
