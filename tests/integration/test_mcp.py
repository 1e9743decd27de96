"""`runner mcp` as a subprocess, driven over stdio by the MCP SDK's own client."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, ImageContent, TextContent

from runner.cli.demo import TARGET, demo_data
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import run_once

#: Tests what is built on the sandbox, not the engine or runtime: once, in the runc pass.
pytestmark = run_once

GOOD = """
import json
import matplotlib.pyplot as plt
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True)
score = LogisticRegression(max_iter=500).fit(X, y).score(X, y)
plt.plot([1, 2, 3])
plt.savefig("plot.png")
print(json.dumps({"success": True, "metrics": {"accuracy": score}}))
"""
NETWORK = """
import urllib.request
urllib.request.urlopen("http://example.com", timeout=5)
"""


def text(result: CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


def server_processes(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_an_agent_runs_code_through_the_stdio_server(engine: DockerEngine, tmp_path: Path) -> None:
    """Tools listed; good, failing, network, timeout and over-limit calls end as they should."""
    results = tmp_path / "results.jsonl"
    workdir = tmp_path / "work"
    # The SDK gives the server a minimal environment: pass the engine and runner settings on.
    env = {k: v for k, v in os.environ.items() if k.startswith(("RUNNER_", "DOCKER_"))}
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "runner", "mcp", "--timeout", "30", "--memory", "1g",
            "--results", str(results), "--workdir", str(workdir),
            "--data", f"churn={demo_data()}",
        ],
        env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip

    async def session() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert tools == {"run_python", "run_experiment", "list_results"}

            good = await client.call_tool("run_python", {"code": GOOD, "name": "iris"})
            assert not good.is_error, text(good)
            report = good.structured_content
            assert report["metrics"]["accuracy"] > 0.9
            assert report["exit_code"] == 0 and report["image_id"].startswith("sha256:")
            images = [c for c in good.content if isinstance(c, ImageContent)]
            assert [i.mime_type for i in images] == ["image/png"]
            assert base64.b64decode(images[0].data).startswith(b"\x89PNG")

            failing = await client.call_tool("run_python", {"code": "raise SystemExit(3)"})
            assert failing.is_error
            assert failing.structured_content["exit_code"] == 3

            network = await client.call_tool("run_python", {"code": NETWORK})
            assert network.is_error
            message = network.structured_content["error_message"]
            assert "name resolution" in message and "the sandbox has no network" in message

            slow = await client.call_tool(
                "run_python", {"code": "import time\ntime.sleep(60)", "timeout": 2}
            )
            assert slow.is_error and slow.structured_content["timed_out"]
            assert slow.structured_content["limits"]["timeout"] == 2
            assert slow.structured_content["execution_time"] < 20

            over = await client.call_tool("run_python", {"code": "print(1)", "timeout": 999})
            assert over.is_error and over.structured_content is None
            assert "at most 30 s" in text(over)

            experiment = await client.call_tool(
                "run_experiment",
                {
                    "experiment_name": "churn_lr",
                    "model_type": "LogisticRegression",
                    "dataset": "churn",
                    "target_column": TARGET,
                    "memory_limit": "512m",
                },
            )
            assert not experiment.is_error, text(experiment)
            assert "accuracy" in experiment.structured_content["metrics"]
            # Scored by the server on rows the script never saw the labels of.
            assert experiment.structured_content["metrics_source"] == "holdout"

            listed = await client.call_tool("list_results", {"limit": 2})
            assert listed.structured_content["total"] == 5  # the over-limit call never ran
            # The server's own score ranks before the scripts' claims.
            ranked = [r["experiment_name"] for r in listed.structured_content["results"]]
            assert ranked == ["churn_lr", "iris"]

    asyncio.run(session())
    # The client closed the session: the server is gone, and so are its containers
    # (the suite's fixture checks the engine).
    assert server_processes(str(workdir)) == []
    assert any(workdir.iterdir())  # each call kept its script and outputs there
