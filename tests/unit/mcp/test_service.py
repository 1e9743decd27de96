"""The MCP server's tools, driven in-process by the SDK's own client, on the fake engine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult, ImageContent, TextContent

from runner import ExperimentRunner
from runner.cli.mcp import data_sets
from runner.core.exceptions import ExperimentExecutionError
from runner.core.settings import ExperimentDefaults
from runner.core.sizes import parse_size
from runner.mcp import Refused, SandboxService, ServerPolicy, build_server
from runner.mcp.service import RunGate
from runner.sandbox.artifacts import ARTIFACTS_MARKER
from tests.unit.fakes import FakeEngine
from tests.unit.sandbox.test_artifacts import file, tar_of

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
GOOD = b'{"success": true, "metrics": {"accuracy": 0.75}}\n'

Call = Callable[..., Awaitable[CallToolResult]]


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback traffic stays on loopback: no proxy from the environment is used."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def serve(
    engine: FakeEngine, tmp_path: Path, **policy: Any
) -> Callable[[Callable[[Call], Awaitable[None]]], None]:
    """Run a test body against a server on ``engine``, through the SDK's client (cold,
    unless ``policy`` says ``warm``)."""
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    service = SandboxService(
        ServerPolicy.from_settings(
            settings, timeout=30.0, memory_limit="1g", **{"warm": 0, **policy}
        ),
        engine=engine,
        settings=settings,
    )

    def run(body: Callable[[Call], Awaitable[None]]) -> None:
        async def session() -> None:
            async with Client(build_server(service)) as client:
                await body(client.call_tool)

        try:
            asyncio.run(session())
        finally:
            service.close()

    return run


def text(result: CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text


def test_the_three_tools_are_listed_with_output_schemas(tmp_path: Path) -> None:
    """list_tools shows run_python, run_experiment and list_results, each with a schema."""
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    service = SandboxService(
        ServerPolicy.from_settings(settings, warm=0), engine=FakeEngine(), settings=settings
    )

    async def body() -> None:
        async with Client(build_server(service)) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"run_python", "run_experiment", "list_results"}
        assert tools["run_python"].input_schema["required"] == ["code"]
        assert all(tool.output_schema for tool in tools.values())

    asyncio.run(body())


def test_good_code_returns_structure_text_and_images(tmp_path: Path) -> None:
    """A successful run: structured result, a short text, and a PNG as image content only."""
    stream = tar_of(file("plot.png", PNG), file("fake.png", b"not an image"), file("m.pkl"))
    engine = FakeEngine(stdout=GOOD + ARTIFACTS_MARKER + stream)

    async def body(call: Call) -> None:
        result = await call("run_python", {"code": "print(1)", "name": "probe"})
        assert not result.is_error
        report = result.structured_content
        assert report["success"] and report["metrics"] == {"accuracy": 0.75}
        assert report["experiment_name"] == "probe" and report["exit_code"] == 0
        assert report["limits"] == {"timeout": 30.0, "memory_limit": "1g", "cpu_limit": 1.0}
        assert [(a["name"], a["mime_type"]) for a in report["artifacts"]] == [
            ("fake.png", None),
            ("m.pkl", None),
            ("plot.png", "image/png"),
        ]
        assert text(result).startswith("succeeded in ")
        assert "accuracy=0.75" in text(result)
        images = [c for c in result.content if isinstance(c, ImageContent)]
        assert [(i.mime_type, base64.b64decode(i.data)) for i in images] == [("image/png", PNG)]

    serve(engine, tmp_path)(body)
    # The script and its outputs were in a temporary directory, gone after the call.
    assert not Path(engine.created[0]["working_dir"]).exists()


def test_a_failing_script_is_an_error_result_with_its_structure(tmp_path: Path) -> None:
    """Exit 1 is a normal tool result with isError, the exit code and the traceback's end."""
    engine = FakeEngine(wait_results=[1], stdout=b"", stderr=b"ZeroDivisionError: division\n")

    async def body(call: Call) -> None:
        result = await call("run_python", {"code": "1/0"})
        assert result.is_error
        report = result.structured_content
        assert not report["success"] and report["exit_code"] == 1
        assert "ZeroDivisionError" in report["error_message"]
        assert "ZeroDivisionError" in report["stderr"]
        assert text(result).startswith("failed in ")

    serve(engine, tmp_path)(body)


def test_clients_can_lower_limits_but_never_raise_them(tmp_path: Path) -> None:
    """Lower timeout and memory apply to the container; higher ones are refused, not run."""
    engine = FakeEngine(wait_results=[0])

    async def body(call: Call) -> None:
        low = await call("run_python", {"code": "x", "timeout": 5, "memory_limit": "256m"})
        assert low.structured_content["limits"]["timeout"] == 5
        for asked in (
            {"timeout": 31},
            {"timeout": 0},
            {"memory_limit": "2g"},
            {"memory_limit": "lots"},
        ):
            refused = await call("run_python", {"code": "x", **asked})
            assert refused.is_error and refused.structured_content is None
            assert "Refused: " in text(refused)
        high = await call("run_python", {"code": "x", "timeout": 99})
        assert "at most 30 s" in text(high)

    serve(engine, tmp_path)(body)
    assert len(engine.created) == 1
    assert parse_size(engine.created[0]["mem_limit"]) == 256 * 1024**2
    # The container kills itself 10 s after the 5 s deadline asked for.
    assert engine.created[0]["command"][3] == "15s"


def test_oversized_or_misnamed_requests_are_refused_before_any_container(tmp_path: Path) -> None:
    """Code or files over the limits, bad names and bad arguments are refused with why."""
    engine = FakeEngine()

    async def body(call: Call) -> None:
        cases = {
            "bytes of code": {"code": "#" * 101},
            "at most 2": {"code": "x", "files": {"a": "", "b": "", "c": ""}},
            "bytes in all": {"code": "x", "files": {"a": "x" * 60, "b": "y" * 60}},
            "'..'": {"code": "x", "files": {"../escape.py": ""}},
            "relative path": {"code": "x", "files": {"/etc/passwd": ""}},
            "letters, digits": {"code": "x", "files": {"a b": ""}},
            "is the code itself": {"code": "x", "files": {"main.py": ""}},
            "NUL": {"code": "x", "args": ["a\x00b"]},
        }
        for expected, arguments in cases.items():
            result = await call("run_python", arguments)
            assert result.is_error, expected
            assert expected in text(result)

    serve(engine, tmp_path, max_code_bytes=100, max_files=2, max_files_bytes=100)(body)
    assert engine.created == []


def test_files_and_arguments_reach_the_script(tmp_path: Path) -> None:
    """Files land beside main.py (subdirectories too), readable; args are the argv."""
    engine = FakeEngine()
    workdir = tmp_path / "work"

    async def body(call: Call) -> None:
        files = {"data.csv": "a,b\n1,2\n", "conf/params.json": "{}"}
        result = await call(
            "run_python", {"code": "print(1)", "files": files, "args": ["--x", "1"]}
        )
        assert not result.is_error

    serve(engine, tmp_path, workdir=workdir)(body)
    command = engine.created[0]["command"]
    script = Path(command[-3])
    assert script.name == "main.py" and command[-2:] == ["--x", "1"]
    assert script.read_text() == "print(1)"
    assert (script.parent / "data.csv").read_text() == "a,b\n1,2\n"
    assert (script.parent / "conf" / "params.json").stat().st_mode & 0o777 == 0o644
    assert (script.parent / "conf").stat().st_mode & 0o777 == 0o755
    assert script.is_relative_to(workdir.resolve())


def test_run_experiment_uses_only_the_servers_data_sets(tmp_path: Path) -> None:
    """A named data set is generated into a script and run; other names and models refused."""
    csv = tmp_path / "iris.csv"
    csv.write_text("x,y\n1,a\n2,b\n")
    engine = FakeEngine()

    async def body(call: Call) -> None:
        spec = {
            "experiment_name": "lr",
            "model_type": "LogisticRegression",
            "target_column": "y",
            "model_params": {"C": 0.5},
            "holdout": False,
        }
        result = await call("run_experiment", {**spec, "dataset": "iris"})
        assert not result.is_error and result.structured_content["experiment_name"] == "lr"
        unknown = await call("run_experiment", {**spec, "dataset": str(csv)})
        assert unknown.is_error and "this server has: iris" in text(unknown)
        bad = await call("run_experiment", {**spec, "dataset": "iris", "model_type": "os.system"})
        assert bad.is_error and "Unknown model_type" in text(bad)
        empty = await call("run_experiment", {**spec, "dataset": "iris", "experiment_name": ""})
        assert empty.is_error and "experiment_name" in text(empty)

    serve(engine, tmp_path, data={"iris": csv})(body)
    assert len(engine.created) == 1
    script = Path(engine.created[0]["command"][-1])
    assert script.name == "experiment.py"


def test_run_experiment_scores_on_held_out_rows_by_default(tmp_path: Path) -> None:
    """By default the script sees neither the data file nor the test labels, and the
    answer's metrics are the runner's scorer's, marked verified, the script's claim apart."""
    csv = tmp_path / "iris.csv"
    csv.write_text("x,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(8)))
    claim = b'{"success": true, "metrics": {"accuracy": 0.75}}\n'
    predictions = tar_of(file("predictions.csv", b"prediction\na\nb\n"))
    engine = FakeEngine(stdout=claim + ARTIFACTS_MARKER + predictions, wait_results=[0, 0])

    async def body(call: Call) -> None:
        spec = {"experiment_name": "lr", "model_type": "LogisticRegression",
                "target_column": "y", "dataset": "iris"}  # fmt: skip
        result = await call("run_experiment", spec)
        assert not result.is_error, text(result)
        report = result.structured_content
        assert report["metrics_source"] == "holdout"
        assert report["reported_metrics"] == {"accuracy": 0.75}
        assert report["holdout"]["test_rows"] == 2 and "classes" in report["holdout"]
        assert "verified metrics (the server's scores on held-out rows)" in text(result)
        listed = await call("list_results", {})
        assert listed.structured_content["results"][0]["metrics_source"] == "holdout"

    serve(engine, tmp_path, data={"iris": csv})(body)
    script_run, scorer = engine.created
    assert Path(script_run["command"][-1]).name == "experiment.py"
    assert Path(scorer["command"][-1]).name == "score.py"
    shown = {m["Target"] for m in script_run["mounts"] if m.get("Type") == "bind"}
    assert not any(csv.is_relative_to(path) for path in shown)
    assert not any(str(csv) in value for value in script_run["environment"].values())


def test_list_results_reads_the_servers_history_best_first(tmp_path: Path) -> None:
    """list_results filters by name, ranks by metric and caps at limit."""
    engine = FakeEngine(wait_results=[0, 0, 0])
    history = tmp_path / "results.jsonl"

    async def body(call: Call) -> None:
        for name in ("alpha", "beta", "alpha"):
            await call("run_python", {"code": "x", "name": name})
        listed = await call("list_results", {"name": "alpha", "limit": 1})
        content = listed.structured_content
        assert content["total"] == 2
        assert [(r["experiment_name"], r["iteration"]) for r in content["results"]] == [
            ("alpha", 1)
        ]
        everything = await call("list_results", {})
        assert everything.structured_content["total"] == 3
        too_many = await call("list_results", {"limit": 10_000})
        assert too_many.is_error

    serve(engine, tmp_path, history=history)(body)
    assert len(history.read_text().splitlines()) == 3


def test_data_sets_are_name_equals_path() -> None:
    """--data NAME=PATH pairs parse; anything else is a caller error."""
    assert data_sets(["a=/x/a.csv"]) == {"a": Path("/x/a.csv")}
    for bad in ("a", "=x", "a="):
        with pytest.raises(ExperimentExecutionError, match="NAME=PATH"):
            data_sets([bad])


def test_a_data_set_that_is_not_a_file_stops_the_server_at_start(tmp_path: Path) -> None:
    """The server refuses to start with a data set it cannot read."""
    with pytest.raises(ExperimentExecutionError, match="is not a file"):
        SandboxService(
            ServerPolicy.from_settings(ExperimentDefaults(), data={"x": tmp_path / "missing"}),
            engine=FakeEngine(),
        )


def test_streamable_http_serves_on_loopback_by_default(tmp_path: Path) -> None:
    """`runner mcp --http` binds 127.0.0.1 unless told otherwise; a client calls a tool there."""
    import socket

    from runner.cli.main import build_parser

    args = build_parser().parse_args(["mcp", "--http"])
    assert (args.host, args.http) == ("127.0.0.1", True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    service = SandboxService(
        ServerPolicy.from_settings(settings, warm=0), engine=FakeEngine(), settings=settings
    )
    server = build_server(service)

    async def session() -> None:
        serving = asyncio.create_task(server.run_streamable_http_async(host=args.host, port=port))
        try:
            for _ in range(100):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                result = await client.call_tool("run_python", {"code": "print(1)"})
            assert not result.is_error
            assert result.structured_content["metrics"] == {"accuracy": 0.9}
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving

    asyncio.run(session())


def test_runs_are_capped_server_wide_and_a_flooding_client_is_refused(tmp_path: Path) -> None:
    """max_runs=1, max_waiting=1, through the SDK: one run at a time; a client's second call
    waits for it, its third is refused at once with a tool error; the waiting one then runs."""
    release = threading.Event()
    running: list[int] = []
    most = [0]

    def hold() -> None:
        running.append(1)
        most[0] = max(most[0], len(running))
        release.wait(10)
        running.pop()

    engine = FakeEngine(wait_results=[0] * 3, stdout=GOOD, on_wait=hold)
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    service = SandboxService(
        ServerPolicy.from_settings(
            settings, timeout=30.0, memory_limit="1g", max_runs=1, max_waiting=1, warm=0
        ),
        engine=engine,
        settings=settings,
    )
    assert (service.gate.limit, service.gate.backlog) == (1, 1)

    async def session() -> None:
        async with Client(build_server(service)) as client:
            code = {"code": "print(1)"}
            first = asyncio.create_task(client.call_tool("run_python", code))
            while service.gate.running < 1:
                await asyncio.sleep(0.01)
            second = asyncio.create_task(client.call_tool("run_python", code))
            await asyncio.sleep(0.3)
            third = await client.call_tool("run_python", code)
            assert third.is_error and "at most 1 call(s) at once" in text(third)
            assert not second.done()
            release.set()
            results = await asyncio.gather(first, second)
            assert [r.is_error for r in results] == [False, False]

    asyncio.run(session())
    assert most[0] == 1


def test_each_client_has_its_own_backlog_and_waits_in_order() -> None:
    """A client that filled its backlog is refused; another client still queues, and the
    waiting calls run in the order they came."""
    gate = RunGate(1, 1)
    order: list[str] = []

    async def call(client: str, name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.turn(client):
            order.append(name)
            if hold is not None:
                await hold.wait()

    async def scenario() -> None:
        hold = asyncio.Event()
        running = asyncio.create_task(call("a", "a1", hold))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(call("a", "a2")), asyncio.create_task(call("b", "b1"))]
        await asyncio.sleep(0)
        with pytest.raises(Refused, match="already has 1 waiting"):
            await call("a", "a3")
        hold.set()
        await asyncio.gather(running, *waiting)

    asyncio.run(scenario())
    assert order == ["a1", "a2", "b1"]


def test_the_server_wide_cap_defaults_to_what_the_engine_holds(tmp_path: Path) -> None:
    """Without max_runs, as many runs at once as default_workers() (cores and memory)."""
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    engine = FakeEngine()
    service = SandboxService(
        ServerPolicy.from_settings(settings, cpu_limit=1.0, memory_limit="1g", warm=0),
        engine=engine,
        settings=settings,
    )
    fits = ExperimentRunner(engine=engine, settings=settings, memory_limit="1g").default_workers()
    assert (service.gate.limit, service.gate.backlog) == (fits, fits)
    service.close()
