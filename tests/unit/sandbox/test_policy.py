from pathlib import Path

import pytest

from runner.sandbox.cleanup import LABEL, build_labels
from runner.sandbox.policy import (
    Run,
    SandboxPolicy,
    container_config,
    host_pids_limit,
    sandbox_environment,
    unreadable,
)
from runner.sandbox.seccomp import profile


def config(**policy: object) -> dict:
    run = Run(
        command=["python", "/exp/script.py"],
        workdir=Path("/exp"),
        read_only_paths=(Path("/exp"), Path("/data/train.csv")),
        deadline=0,
        uid=2_000_000_123,
        labels=build_labels(0),
    )
    return container_config(SandboxPolicy(image="img", **policy), run)  # type: ignore[arg-type]


def test_no_network() -> None:
    """The container has no network at all."""
    assert config()["network_mode"] == "none"


def test_memory_capped_without_swap() -> None:
    """memswap_limit equals mem_limit, so the script gets no swap."""
    cfg = config(memory_limit="512m")
    assert cfg["mem_limit"] == "512m"
    assert cfg["memswap_limit"] == "512m"


def test_cpu_and_pids_capped() -> None:
    """CPU quota follows cpu_limit and the PID count is capped."""
    cfg = config(cpu_limit=1.5, pids_limit=64)
    assert cfg["nano_cpus"] == 1_500_000_000
    assert cfg["pids_limit"] == 64


def test_privileges_dropped() -> None:
    """Non-root user, all capabilities dropped, no-new-privileges, the project's seccomp profile."""
    cfg = config()
    assert cfg["user"] == "2000000123:2000000123"
    assert cfg["cap_drop"] == ["ALL"]
    assert "cap_add" not in cfg
    assert cfg["security_opt"] == ["no-new-privileges", f"seccomp={profile()}"]
    assert not any("unconfined" in opt or "apparmor" in opt for opt in cfg["security_opt"])
    assert "privileged" not in cfg


def test_filesystem_read_only_with_small_noexec_tmp() -> None:
    """Root filesystem read-only; /tmp is a size-capped tmpfs with noexec,nosuid,nodev."""
    cfg = config(tmpfs_size="64m")
    assert cfg["read_only"] is True
    options = cfg["tmpfs"]["/tmp"].split(",")
    assert {"noexec", "nosuid", "nodev", "size=64m"} <= set(options)
    assert list(cfg["tmpfs"]) == ["/tmp"]


def test_only_requested_paths_are_mounted_read_only_at_their_own_path() -> None:
    """Each mount is a read-only bind of a listed path onto the same absolute path."""
    mounts = config()["mounts"]
    assert [(m["Source"], m["Target"], m["ReadOnly"], m["Type"]) for m in mounts] == [
        ("/exp", "/exp", True, "bind"),
        ("/data/train.csv", "/data/train.csv", True, "bind"),
    ]
    assert "volumes" not in config()


def test_init_labels_logs_and_proxy() -> None:
    """tini reaps orphans; the project label is set; engine log capped; no proxy config."""
    cfg = config()
    assert cfg["init"] is True
    assert cfg["labels"][LABEL] == "1"
    assert cfg["log_config"]["Config"]["max-size"] == "1m"
    assert cfg["use_config_proxy"] is False
    assert cfg["working_dir"] == "/exp"


def test_runtime_only_set_when_asked() -> None:
    """The engine's default runtime is used unless one is named."""
    assert "runtime" not in config()
    assert config(runtime="runsc")["runtime"] == "runsc"


def test_environment_is_only_the_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the caller's variables reach the script; HOME is /tmp."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    env = config()["environment"]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "HTTP_PROXY" not in env
    assert env["HOME"] == "/tmp"
    assert set(env) <= set(sandbox_environment(1.0))


@pytest.mark.parametrize(("cpus", "threads"), [(0.5, "1"), (1.0, "1"), (2.0, "2"), (3.7, "3")])
def test_thread_counts_follow_cpu_limit(cpus: float, threads: str) -> None:
    """BLAS/OpenMP thread counts match the CPU cap (at least one)."""
    env = sandbox_environment(cpus)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[name] == threads


@pytest.mark.parametrize(
    "policy",
    [{"memory_limit": "lots"}, {"cpu_limit": 0}, {"cpu_limit": float("inf")}, {"pids_limit": 2}],
)
def test_policy_rejects_nonsense_limits(policy: dict) -> None:
    """Limits that would not bound anything are refused up front."""
    with pytest.raises(ValueError):
        SandboxPolicy(image="img", **policy)


def test_unreadable_directory_is_named(tmp_path: Path) -> None:
    """A 0700 directory is reported as not readable in place by the sandbox user."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert "cannot read the directory" in (unreadable([private]) or "")
    private.chmod(0o755)
    assert unreadable([private]) is None


def test_each_run_has_its_own_process_quota() -> None:
    """RLIMIT_NPROC equals the PID cap: per user ID, and each container has its own."""
    cfg = config(pids_limit=64)
    nproc = [u for u in cfg["ulimits"] if u["Name"] == "nproc"]
    assert [(u["Soft"], u["Hard"]) for u in nproc] == [(64, 64)]


def test_user_kernel_gets_thread_headroom_on_the_host_pid_cap() -> None:
    """Under gVisor the cgroup cap leaves room for its own threads; runc gets the exact cap."""
    assert host_pids_limit(64, user_kernel=False) == 64
    assert host_pids_limit(64, user_kernel=True) > 64 * 5


def test_no_host_nameserver_inside() -> None:
    """The container's resolv.conf names no host nameserver: loopback only, no search."""
    cfg = config()
    assert cfg["dns"] == ["127.0.0.1"]
    assert cfg["dns_search"] == ["."]


def test_output_is_not_left_unbuffered() -> None:
    """PYTHONUNBUFFERED is not set: unbuffered streams drop the rest of a short write."""
    assert "PYTHONUNBUFFERED" not in sandbox_environment(1.0)


def test_a_runs_own_variables_join_the_sandbox_environment() -> None:
    """Variables a run brings ($TRAIN_PATH, ...) are in its container's environment."""
    from runner.sandbox.policy import Run, SandboxPolicy, container_config

    run = Run(
        command=["python", "x.py"], workdir=Path("/w"), read_only_paths=(), deadline=0.0,
        uid=20000, environment=(("TRAIN_PATH", "/w/train.csv"),),
    )  # fmt: skip
    environment = container_config(SandboxPolicy(image="img"), run)["environment"]
    assert environment["TRAIN_PATH"] == "/w/train.csv"
    assert environment["PATH"] == "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize(
    ("name", "value"),
    [("PATH", "/evil"), ("HOME", "/"), ("OMP_NUM_THREADS", "64"), ("lower", "x"),
     ("A=B", "x"), ("TRAIN_PATH", "a\0b")],
)  # fmt: skip
def test_a_run_may_not_set_the_sandboxs_own_variables(name: str, value: str) -> None:
    """A run's variables never replace one the sandbox sets, nor carry a NUL."""
    from runner.sandbox.policy import run_environment

    with pytest.raises(ValueError, match="variable"):
        run_environment([(name, value)])
