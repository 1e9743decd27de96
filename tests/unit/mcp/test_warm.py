"""The MCP server's warm sandboxes, on the fake engine: who gets one, with which limits,
where the calls' files lie, and that the server's shutdown removes them."""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runner.cli import mcp as mcp_command
from runner.cli.main import build_parser
from runner.core.options import RunnerOptions
from runner.core.settings import ExperimentDefaults
from runner.core.sizes import parse_size
from runner.mcp import SandboxService, ServerPolicy
from runner.mcp.reports import Limits, report_of, text_of
from tests.unit.fakes import FakeEngine


def slots(engine: FakeEngine) -> list[dict[str, Any]]:
    """The warm sandboxes the engine was asked for (created with stdin open)."""
    return [c for c in engine.created if c.get("stdin_open")]


def cold(engine: FakeEngine) -> list[dict[str, Any]]:
    return [c for c in engine.created if not c.get("stdin_open")]


def service_on(engine: FakeEngine, tmp_path: Path, **policy: Any) -> SandboxService:
    settings = ExperimentDefaults(cache_dir=tmp_path / "cache")
    return SandboxService(
        ServerPolicy.from_settings(settings, timeout=30.0, memory_limit="1g", **policy),
        engine=engine,
        settings=settings,
    )


def test_a_call_under_the_servers_limits_runs_warm_one_that_lowers_them_cold(
    tmp_path: Path,
) -> None:
    """warm=1: the slot has the server's limits and serves a plain call (with its outputs);
    calls with a lower memory cap or timeout get fresh cold sandboxes with their limits."""
    engine = FakeEngine(wait_results=[0] * 10, ncpu=4)
    service = service_on(engine, tmp_path, warm=1)
    try:
        assert service.warm_pool_size == 1
        assert service.wait_for_warm(10)
        warm = asyncio.run(service.run_python("print(1)")).report
        assert warm.success and warm.warm_start
        assert service.wait_for_warm(10)
        low_memory = asyncio.run(service.run_python("print(1)", memory_limit="256m")).report
        low_timeout = asyncio.run(service.run_python("print(1)", timeout=5)).report
        assert not low_memory.warm_start and not low_timeout.warm_start
        assert (low_memory.limits.memory_limit, low_timeout.limits.timeout) == ("256m", 5)
        # The server's cap, written another way, is the server's: that call is warm.
        assert service.wait_for_warm(10)
        same = asyncio.run(service.run_python("print(1)", memory_limit="1024m")).report
        assert same.warm_start and same.limits.memory_limit == "1g"
    finally:
        service.close()
    made = slots(engine)
    assert made and {parse_size(c["mem_limit"]) for c in made} == {1024**3}
    assert all("/outputs" in c["tmpfs"] for c in made)  # made for calls with outputs
    assert [parse_size(c["mem_limit"]) for c in cold(engine)] == [256 * 1024**2, 1024**3]
    assert cold(engine)[1]["command"][3] == "15s"  # killed by itself 10 s after its 5 s


def test_the_warm_sandboxes_are_mounted_at_the_servers_root_which_holds_every_call(
    tmp_path: Path,
) -> None:
    """Every slot is mounted at the server's own directory below the workdir, and the
    script each is handed lies in a call directory of its own below it."""
    engine = FakeEngine(wait_results=[0] * 10, ncpu=4)
    workdir = tmp_path / "work"
    service = service_on(engine, tmp_path, warm=1, workdir=workdir)
    root = service.directories.root
    try:
        assert root.parent == workdir.resolve() and root.stat().st_mode & 0o777 == 0o755
        for _ in range(2):
            assert service.wait_for_warm(10)
            assert asyncio.run(service.run_python("print(1)")).report.warm_start
    finally:
        service.close()
    assert {c["working_dir"] for c in slots(engine)} == {str(root)}
    handed = [bytes.fromhex(line.split(b" ")[1].decode()).decode() for line in _hand_overs(engine)]
    assert len(handed) == 2 and len({Path(p).parents[1] for p in handed}) == 2
    assert all(Path(p).parents[2] == root and Path(p).name == "main.py" for p in handed)
    assert root.is_dir()  # kept, with the calls' files, below the workdir


def _hand_overs(engine: FakeEngine) -> list[bytes]:
    return [data for data in engine.handed_over.values() if data.strip()]


def test_without_a_workdir_the_servers_directory_goes_with_close(tmp_path: Path) -> None:
    """The server's temporary directory (the slots' root) is removed by close()."""
    service = service_on(FakeEngine(), tmp_path, warm=0)
    root = service.directories.root
    assert root.is_dir() and root.stat().st_mode & 0o777 == 0o755
    service.close()
    assert not root.exists()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [({}, 2), ({"max_runs": 1}, 1), ({"warm": 3}, 2), ({"warm": 0}, 0)],
)
def test_warm_defaults_to_the_runs_at_once_and_no_more_than_the_engine_holds(
    tmp_path: Path, policy: dict[str, Any], expected: int
) -> None:
    """Unset: as many slots as runs at once (2 here, by cores); never more than fit; 0: none."""
    engine = FakeEngine(ncpu=2)
    service = service_on(engine, tmp_path, **policy)
    try:
        assert service.warm_pool_size == expected
        if expected:
            assert service.wait_for_warm(10)
    finally:
        service.close()
    assert len(slots(engine)) == expected
    assert service.warm_pool_size == 0  # close() removed them


def test_the_servers_warm_runner_outlives_the_cold_ones_it_keeps(tmp_path: Path) -> None:
    """More distinct lower limits than the server keeps runners for: its own stays warm."""
    engine = FakeEngine(wait_results=[0] * 20, ncpu=4)
    service = service_on(engine, tmp_path, warm=1)
    try:
        for timeout in range(1, 11):
            asyncio.run(service.run_python("print(1)", timeout=timeout))
        assert service.warm_pool_size == 1 and service.wait_for_warm(10)
        assert asyncio.run(service.run_python("print(1)")).report.warm_start
    finally:
        service.close()


def test_a_policy_that_sets_the_runners_own_pool_is_refused() -> None:
    """The server's pool is ServerPolicy.warm, at its own root: options.warm_pool is refused."""
    for options in (RunnerOptions(warm_pool=2), RunnerOptions(pool_root=Path("/srv/x"))):
        with pytest.raises(ValueError, match=r"ServerPolicy\.warm"):
            ServerPolicy(options=options)
    with pytest.raises(ValueError, match="0 or more"):
        ServerPolicy(options=RunnerOptions(), warm=-1)


@pytest.mark.skipif(not Path("/var/tmp").is_dir(), reason="needs /var/tmp")
def test_a_root_that_would_hide_the_image_runs_every_call_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary directory below /var cannot be the slots' root (mounted there, it would
    hide the image's /var): no pool is kept, and calls still run, cold."""
    monkeypatch.setattr(tempfile, "tempdir", "/var/tmp")
    engine = FakeEngine(wait_results=[0] * 2, ncpu=4)
    service = service_on(engine, tmp_path, warm=2)
    try:
        assert service.directories.root.parent == Path("/var/tmp")
        assert service.warm_pool_size == 0
        assert not asyncio.run(service.run_python("print(1)")).report.warm_start
    finally:
        service.close()
    assert slots(engine) == []


def test_the_report_text_says_a_run_was_warm() -> None:
    """The text a client reads names a warm start; warm_start is in the structured result."""
    from runner.core.models import ExperimentResult

    limits = Limits(timeout=30, memory_limit="1g", cpu_limit=1)
    for warm in (True, False):
        result = ExperimentResult(
            experiment_name="x", iteration=0, model_type="script", code_path="/x/main.py",
            timestamp=datetime.now(UTC), success=True, execution_time=0.1, exit_code=0,
            warm_start=warm,
        )  # fmt: skip
        report = report_of(result, limits, {})
        assert report.model_dump()["warm_start"] is warm
        assert ("warm sandbox" in text_of(report)) is warm


def test_runner_mcp_warm_option() -> None:
    """--warm N reaches the policy; unset it is None (as many as run at once); no negatives."""
    parse = build_parser().parse_args
    assert parse(["mcp"]).warm is None
    assert parse(["mcp", "--warm", "0"]).warm == 0
    assert parse(["mcp", "--warm", "3"]).warm == 3
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):
            parse(["mcp", "--warm", bad])


class FakeServer:
    """Stands in for the SDK's server in ``serve``: records the service as it runs."""

    def __init__(self, service: SandboxService, terminate: bool) -> None:
        self.service = service
        self.terminate = terminate
        self.ran: list[tuple[str, int, bool]] = []

    def run(self, transport: str, **_: Any) -> None:
        self.ran.append((transport, self.service.warm_pool_size, self.service.wait_for_warm(10)))
        if self.terminate:
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM ends the transport")


@pytest.mark.parametrize("terminate", [False, True])
@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_the_servers_shutdown_removes_its_warm_sandboxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str, terminate: bool
) -> None:
    """`runner mcp --warm 2`, on either transport, ended by its client or by SIGTERM:
    the pool is there while it serves and gone (every slot removed) when serve returns."""
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    engine = FakeEngine(ncpu=4)
    servers: list[FakeServer] = []
    # What was there before (a test session that ran Ray has Ray's own handler).
    before = signal.getsignal(signal.SIGTERM)

    def build(service: SandboxService) -> FakeServer:
        servers.append(FakeServer(service, terminate))
        return servers[-1]

    monkeypatch.setattr(mcp_command, "build_server", build)
    words = ["mcp", "--warm", "2", "--timeout", "30", "--memory", "1g", "--no-record"]
    args: argparse.Namespace = build_parser().parse_args(
        [*words, *(["--http"] if transport == "http" else [])]
    )
    assert mcp_command.serve(args, None, engine=engine) == 0
    name = "streamable-http" if transport == "http" else "stdio"
    assert servers[0].ran == [(name, 2, True)]
    made = [f"c{i}" for i, c in enumerate(engine.created, 1) if c.get("stdin_open")]
    assert len(made) == 2 and set(made) <= set(engine.removed)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
