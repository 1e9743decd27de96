"""Record what the three conformance sandboxes show here, for tests/unit/conformance/data.

    .venv/bin/python scripts/record_conformance_data.py tests/unit/conformance/data/runc.json
    RUNNER_RUNTIME=runsc .venv/bin/python scripts/record_conformance_data.py \\
        tests/unit/conformance/data/runsc.json

Runs the probes under the configured engine and runtime (every control in force), prints
each probe's status, and writes the observations (the CPU sandbox's output cut to its
report line, stderr left out) with what they were held to.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from runner.conformance.probes import judge
from runner.conformance.suite import ProbeFiles, expectations, observe, policy_of, requests
from runner.core.settings import ExperimentDefaults
from runner.sandbox.cold import ColdRuns
from runner.sandbox.engine import DockerEngine
from runner.sandbox.lifecycle import ActiveRuns
from runner.sandbox.probe import FileRoute, probe


def main(target: Path) -> None:
    settings = ExperimentDefaults()
    engine = DockerEngine()
    policy = policy_of(settings)
    facts = probe(engine, policy, settings.transfer)
    runs = ColdRuns(engine, policy, facts, FileRoute(settings.transfer, facts.shares_files),
                    ActiveRuns())  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="runner-conformance-") as tmp:
        files = ProbeFiles.make(Path(tmp))
        expected = expectations(policy, settings, facts, files)
        seen = observe(lambda r: runs.run(r, None, object()), requests(files, expected))
        executions = {
            n: getattr(seen, n).model_dump(mode="json") for n in ("main", "cpu", "memory")
        }
        executions["cpu"]["stdout"] = executions["cpu"]["stdout"].splitlines()[-1] + "\n"
        for execution in executions.values():
            execution["stderr"] = ""
        for finding in judge(seen, expected):
            if finding.probe.needs not in ("verification", "image"):
                print(finding.status, finding.probe.id)
    recorded = {
        "executions": executions,
        "script_dir": expected.script_dir,
        "hidden": list(expected.hidden),
        "environment": dict(expected.environment),
        "cores": expected.cores,
        "runtime": policy.runtime,
        "user_kernel": expected.user_kernel,
    }
    target.write_text(json.dumps(recorded, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
