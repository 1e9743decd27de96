"""The adversarial suite: one small hostile script per case, and the safe outcome it must get.

Every case runs with the same fixtures as the integration suite: each test ends
with no project container left (``no_leftover_containers``), and ``hostile``
checks that the run ended within its deadline (+2 s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentResult, ExperimentRunner
from runner.sandbox.engine import DockerEngine
from tests.integration.conftest import (  # noqa: F401 - fixtures shared with this suite
    SPEC,
    no_leftover_containers,
    runner,
    workdir,
    write_script,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


Hostile = Callable[..., ExperimentResult]


@pytest.fixture
def hostile(engine: DockerEngine, write_script: Callable[..., Path]) -> Hostile:  # noqa: F811
    """Run a hostile script with the given limits; assert it ended within its deadline."""

    def run(code: str, *, timeout: float = 15, name: str = "hostile.py", **options: Any):
        script = write_script(code, name)
        sandbox = ExperimentRunner(timeout=timeout, engine=engine, **options)
        sandbox.backend.prepare()  # once per runner, before any deadline
        started = time.monotonic()
        result = sandbox.run(script, SPEC, 0)
        elapsed = time.monotonic() - started
        assert elapsed < timeout + 2, f"the run took {elapsed:.1f}s past a {timeout}s deadline"
        return result

    return run


def report(result: ExperimentResult) -> dict[str, Any]:
    """The observations a probe script printed as its last stdout line."""
    lines = result.stdout.strip().splitlines()
    assert lines, f"no report; stderr: {result.stderr[-500:]}"
    return dict(json.loads(lines[-1]))
