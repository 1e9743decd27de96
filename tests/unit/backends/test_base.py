"""Which backend serves a runner, found by name; what fits a machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.backends.base import BackendOptions, open_backend, sandboxes_that_fit
from runner.backends.local import DockerBackend
from runner.sandbox.policy import SandboxPolicy
from tests.unit.fakes import FakeEngine

POLICY = SandboxPolicy(image="img", memory_limit="1g", cpu_limit=1.0)


def options(tmp_path: Path, **given: object) -> BackendOptions:
    return BackendOptions(
        POLICY,
        "python",
        "bind",
        cache_dir=tmp_path,
        default_image="img",
        **given,  # type: ignore[arg-type]
    )


def test_without_a_cluster_this_machines_engine_serves_and_ray_is_not_imported(
    tmp_path: Path,
) -> None:
    """The local backend opens with the caller's engine; the Ray backend's module stays out."""
    sys.modules.pop("runner.backends.ray.backend", None)
    engine = FakeEngine()
    backend = open_backend(options(tmp_path, engine=engine))
    assert isinstance(backend, DockerBackend) and backend.engine is engine
    assert "runner.backends.ray.backend" not in sys.modules


def test_a_cluster_opens_the_ray_backend_which_refuses_a_local_engine(tmp_path: Path) -> None:
    """cluster= selects Ray (without connecting yet); an engine of this machine is refused."""
    backend = open_backend(options(tmp_path, cluster="127.0.0.1:1"))
    assert type(backend).__name__ == "RayBackend" and backend.pool_size == 0
    with pytest.raises(ValueError, match="own engine"):
        open_backend(options(tmp_path, cluster="auto", engine=FakeEngine()))
    with pytest.raises(ValueError, match="build_missing"):
        open_backend(options(tmp_path, build_missing=True))


@pytest.mark.parametrize(
    ("cores", "memory", "fits"),
    [(2, 8 * 2**30, 2), (16, 3 * 2**30, 3), (0.5, 64 * 2**30, 1)],
)
def test_sandboxes_that_fit_count_cores_and_memory(cores: float, memory: int, fits: int) -> None:
    """As many sandboxes as both the cores and the memory hold, and at least one."""
    assert sandboxes_that_fit(POLICY, cores, memory) == fits
