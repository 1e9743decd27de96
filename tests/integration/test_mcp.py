"""`runner mcp` as a subprocess, driven over stdio by the MCP SDK's own client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, ImageContent, TextContent

from runner.cli.demo import TARGET, demo_data
from runner.sandbox.engine import DockerEngine
from tests.conftest import our_containers
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
ONE_LINE = "print('{\"success\": true}')"
NETWORK = """
import urllib.request
urllib.request.urlopen("http://example.com", timeout=5)
"""


#: Lists everything below the server's directory (the call's own is two levels up from
#: main.py) as the sandbox sees it, and allocates MB megabytes if asked.
LOOK_AROUND = """
import json, os, sys, time
from pathlib import Path
root = Path(__file__).resolve().parents[2]
seen = sorted(
    str((Path(here) / name).relative_to(root))
    for here, dirs, files in os.walk(root) for name in dirs + files
)
held = b"x" * (int(sys.argv[1]) * 2**20) if len(sys.argv) > 1 else b""  # touched, resident
time.sleep(float(os.environ.get("HOLD", "0")))
print(json.dumps({"success": True, "metrics": {}, "seen": seen, "call": Path(__file__).parts[-3]}))
"""


def server(*words: str) -> StdioServerParameters:
    """``runner mcp WORDS`` as the SDK's stdio client starts it, with the engine's and the
    runner's settings passed on (the SDK gives a server a minimal environment)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("RUNNER_", "DOCKER_"))}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "runner", "mcp", "--timeout", "60", "--memory", "1g", *words],
        env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


async def warm_call(
    client: Client, arguments: dict[str, object], tries: int = 40
) -> CallToolResult:
    """The first of repeated calls that ran warm: the pool fills in the background (calls
    meanwhile run cold), so a test waits for it this way, as a client would see it."""
    for _ in range(tries):
        result = await client.call_tool("run_python", arguments)
        assert not result.is_error, text(result)
        if result.structured_content["warm_start"]:
            return result
        await asyncio.sleep(2)
    raise AssertionError(f"no call ran warm in {tries} tries")


def seen_by(result: CallToolResult) -> list[str]:
    """What a LOOK_AROUND call saw below the server's directory, relative to its own."""
    stdout = result.structured_content["stdout"]
    report = json.loads(stdout.strip().splitlines()[-1])
    call = report["call"]
    assert all(path == call or path.startswith(f"{call}/") for path in report["seen"]), report
    return [path.removeprefix(f"{call}/") for path in report["seen"] if path != call]


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


def test_runner_mcp_is_warm_and_a_client_that_lowers_memory_gets_a_cold_sandbox(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """--warm 2: a scikit-learn call runs warm once the pool is ready, 400 MB fit under the
    server's 1g; a client that asks for 256m runs cold, and its 400 MB are OOM-killed."""

    async def session() -> None:
        async with Client(server("--warm", "2", "--no-record"), read_timeout_seconds=120) as client:
            await warm_call(client, {"code": ONE_LINE})
            good = await warm_call(client, {"code": GOOD, "name": "iris"})
            assert good.structured_content["metrics"]["accuracy"] > 0.9
            assert "in a warm sandbox" in text(good)
            big = await warm_call(client, {"code": LOOK_AROUND, "args": ["400"]})
            assert big.structured_content["success"]
            assert big.structured_content["limits"]["memory_limit"] == "1g"
            low = await client.call_tool(
                "run_python", {"code": LOOK_AROUND, "args": ["400"], "memory_limit": "256m"}
            )
            report = low.structured_content
            assert low.is_error and report["oom_killed"] and not report["warm_start"]
            assert report["limits"]["memory_limit"] == "256m"
            fits = await client.call_tool(
                "run_python", {"code": LOOK_AROUND, "args": ["50"], "memory_limit": "256m"}
            )
            assert not fits.is_error and not fits.structured_content["warm_start"]
            # Idle, the server keeps its two warm sandboxes (of the server's limits) ready.
            for _ in range(60):
                if len(our_containers(engine)) == 2:
                    break
                await asyncio.sleep(1)
            slots = [engine.inspect(c.id)["HostConfig"] for c in our_containers(engine)]
            assert [h["Memory"] for h in slots] == [1024**3] * 2

    asyncio.run(session())
    # The session is over: the server removed its pool (the suite's fixture checks the
    # engine once more).
    assert our_containers(engine) == []


def test_a_warm_sandbox_shows_its_own_calls_files_only(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """With earlier calls' files kept below the same --workdir, and another call running
    beside it, a warm call sees below the server's directory its own files alone."""
    workdir = tmp_path / "work"

    async def session() -> None:
        params = server("--warm", "2", "--no-record", "--workdir", str(workdir))
        async with Client(params, read_timeout_seconds=120) as client:
            first = await client.call_tool(
                "run_python", {"code": LOOK_AROUND, "files": {"first-secret.txt": "one"}}
            )
            assert seen_by(first) == ["code", "code/first-secret.txt", "code/main.py"]
            beside = asyncio.create_task(
                client.call_tool(
                    "run_python",
                    {
                        "code": f"import os\nos.environ['HOLD'] = '6'\n{LOOK_AROUND}",
                        "files": {"beside-secret.txt": "two"},
                    },
                )
            )
            await asyncio.sleep(1)
            warm = await warm_call(
                client, {"code": LOOK_AROUND, "files": {"data/mine.csv": "a\n1\n"}}
            )
            assert seen_by(warm) == ["code", "code/data", "code/data/mine.csv", "code/main.py"]
            assert seen_by(await beside) == ["code", "code/beside-secret.txt", "code/main.py"]
            assert not (await beside).is_error

    asyncio.run(session())
    # The other calls' files were there on the host all along, below the same directory.
    kept = sorted(path.name for path in workdir.rglob("*-secret.txt"))
    assert kept == ["beside-secret.txt", "first-secret.txt"]


def test_runner_mcp_warm_0_runs_every_call_cold(engine: DockerEngine, tmp_path: Path) -> None:
    """--warm 0: no sandbox is started ahead, and every call says it ran cold."""

    async def session() -> None:
        async with Client(server("--warm", "0", "--no-record"), read_timeout_seconds=120) as client:
            for _ in range(3):
                result = await client.call_tool("run_python", {"code": ONE_LINE})
                assert not result.is_error and not result.structured_content["warm_start"]
                assert "warm" not in text(result)
                await asyncio.sleep(2)  # time a pool would have had to fill
                assert our_containers(engine) == []

    asyncio.run(session())


def test_runner_mcp_over_http_removes_its_warm_sandboxes_when_terminated(
    engine: DockerEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runner mcp --http --warm 1` answers warm on loopback; SIGTERM ends it, cleanly, with
    its sandboxes removed."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):  # loopback stays on loopback
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    words = ["--http", "--port", str(port), "--warm", "1", "--no-record"]
    params = server(*words)
    process = subprocess.Popen(
        [params.command, *params.args], env={**os.environ, **(params.env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    async def session() -> None:
        for _ in range(300):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=120) as client:
            await warm_call(client, {"code": ONE_LINE})

    try:
        asyncio.run(session())
        assert our_containers(engine)  # the used slot's replacement, at least
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "terminated: removing the sandboxes" in stderr.decode(errors="replace")
    assert our_containers(engine) == []
