"""Podman's Docker-compatible API: every control asked its way, and checked its way."""

from pathlib import Path
from typing import Any

import pytest

from runner import ExperimentExecutionError, ExperimentRunner, ExperimentSpec
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import Resources, Sandbox
from runner.sandbox.podman import adapt, tmpfs_volume_options
from runner.sandbox.policy import Run, SandboxPolicy, SupportFiles, container_config
from runner.sandbox.seccomp import profile
from runner.sandbox.telemetry import Usage
from tests.unit.fakes import FakeEngine

SPEC = ExperimentSpec(experiment_name="podman", model_type="SVC")
SUPPORT = SupportFiles("support", "/var/lib/containers/storage/volumes/support/_data")


def podman_run(**changes: Any) -> Run:
    fields: dict[str, Any] = {
        "command": ["python", "/exp/s.py"],
        "workdir": Path("/exp"),
        "read_only_paths": (Path("/exp"),),
        "deadline": 0.0,
        "uid": 2_000_000_001,
        "support": SUPPORT,
        "podman": True,
        "tmp_volumes": (("/tmp", "tmpvol"),),
    }
    fields.update(changes)
    return Run(**fields)


def podman_config(policy: SandboxPolicy, run: Run) -> dict[str, Any]:
    assert run.podman and run.support is not None
    return adapt(container_config(policy, run), run.support, dict(run.tmp_volumes))


def test_podman_gets_the_profile_as_a_file_on_its_machine() -> None:
    """Podman reads seccomp profiles from files: the option names the support volume's copy."""
    config = podman_config(SandboxPolicy(image="img"), podman_run())
    seccomp = [o for o in config["security_opt"] if o.startswith("seccomp=")]
    assert seccomp == [f"seccomp={SUPPORT.seccomp}"]
    assert "no-new-privileges" in config["security_opt"]


def test_podman_tmp_is_a_capped_tmpfs_volume_without_exec() -> None:
    """/tmp is the run's own tmpfs volume (Podman refuses nr_inodes on a tmpfs), noexec."""
    config = podman_config(SandboxPolicy(image="img", tmpfs_size="64m"), podman_run())
    assert config["volumes"] == {"tmpvol": {"bind": "/tmp", "mode": "rw,noexec,nosuid,nodev"}}
    assert "/tmp" not in config["tmpfs"]
    docker_form = container_config(SandboxPolicy(image="img", tmpfs_size="64m"), podman_run())
    assert tmpfs_volume_options(docker_form["tmpfs"]["/tmp"]) == {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": "mode=1777,nr_blocks=16384,nr_inodes=16384",
    }


def test_podman_extra_tmpfs_are_masked_read_only() -> None:
    """The writable /var/tmp and /run Podman adds to a read-only root are masked, read-only."""
    config = podman_config(SandboxPolicy(image="img"), podman_run())
    for path in ("/var/tmp", "/run"):
        assert config["tmpfs"][path].split(",")[0] == "ro"


def test_podman_gets_the_sandbox_own_resolver_and_hosts() -> None:
    """The machine's nameservers and hosts never reach the sandbox: its own, read-only."""
    config = podman_config(SandboxPolicy(image="img"), podman_run())
    mounts = {m["Target"]: m for m in config["mounts"]}
    assert mounts["/etc/resolv.conf"]["Source"] == SUPPORT.resolv_conf
    assert mounts["/etc/hosts"]["Source"] == SUPPORT.hosts
    assert all(m["ReadOnly"] for m in mounts.values())


def test_docker_config_is_unchanged_without_podman() -> None:
    """On Docker nothing of the Podman form appears; the engine makes no network at all."""
    config = container_config(SandboxPolicy(image="img"), podman_run(podman=False, tmp_volumes=()))
    assert "volumes" not in config
    assert set(config["tmpfs"]) == {"/tmp"}
    assert any(o == f"seccomp={profile()}" for o in config["security_opt"])
    assert config["network_mode"] == "none"
    assert config["network_disabled"] is True
    mounts = {m["Target"]: m for m in config["mounts"]}
    assert mounts["/etc/hosts"]["Source"] == SUPPORT.hosts
    assert mounts["/etc/hosts"]["ReadOnly"] and mounts["/etc/resolv.conf"]["ReadOnly"]


def test_podman_makes_its_own_empty_network_namespace() -> None:
    """On Podman the network stays "none" as asked (network_disabled is Docker's form)."""
    config = podman_config(SandboxPolicy(image="img"), podman_run())
    assert config["network_mode"] == "none"
    assert "network_disabled" not in config


def test_adapt_needs_a_volume_for_each_tmpfs() -> None:
    """A Podman run without its tmpfs volumes is a programming error, caught early."""
    with pytest.raises(ValueError, match="volume for each tmpfs"):
        podman_config(SandboxPolicy(image="img"), podman_run(tmp_volumes=()))


def test_a_run_on_podman_is_verified_and_cleans_up(script: Path) -> None:
    """On a fake Podman a run passes every check; its /tmp volume goes with it."""
    engine = FakeEngine(engine_kind="podman")
    result = ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)
    assert result.success, result.error
    (tmp,) = engine.volumes_made
    assert engine.volume_options[tmp.name] is not None
    assert engine.volumes_removed == [tmp.name]
    options = [o for o in engine.created[-1]["security_opt"] if o.startswith("seccomp=")]
    assert options == [f"seccomp={engine.support_volumes[0].mountpoint}/seccomp.json"]


def test_runsc_on_podman_is_refused_not_run_as_runc(script: Path) -> None:
    """Podman's compatible API ignores the runtime; asking for gVisor there is an error."""
    engine = FakeEngine(engine_kind="podman", runtimes_registered={"runc", "runsc"})
    with pytest.raises(ExperimentExecutionError, match=r"runtime runsc.*'runc'"):
        ExperimentRunner(timeout=5, engine=engine, runtime="runsc").run(script, SPEC, 0)
    assert "start" not in engine.calls


@pytest.mark.parametrize(
    ("quietly", "control"),
    [
        ({"Tmpfs": {"/var/tmp": "rw,size=4k", "/run": "ro"}}, "writable mount but /tmp"),
        ({"Tmpfs": {"/tmp": "rw,size=1m", "/var/tmp": "ro", "/run": "ro"}}, "own capped volume"),
        ({"SecurityOpt": ["no-new-privileges", "seccomp=/elsewhere.json"]}, "seccomp profile"),
        ({"Ulimits": [{"Name": "RLIMIT_NOFILE", "Soft": 1, "Hard": 1}]}, "ulimit nofile"),
    ],
)
def test_a_control_podman_drops_stops_the_run(
    script: Path, quietly: dict[str, Any], control: str
) -> None:
    """A weaker Podman sandbox is refused by name, as on Docker."""
    engine = FakeEngine(engine_kind="podman", quietly=quietly)
    with pytest.raises(ExperimentExecutionError, match=control):
        ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)
    assert "start" not in engine.calls


def test_capabilities_kept_on_podman_stop_the_run(script: Path) -> None:
    """Podman lists dropped capabilities by name; what counts is the sets its own API reports."""
    engine = FakeEngine(engine_kind="podman")
    original = engine.inspect

    def keeps_one(container_id: str) -> dict[str, Any]:
        data = original(container_id)
        data["EffectiveCaps"] = ["CAP_NET_RAW"]
        return data

    engine.inspect = keeps_one  # type: ignore[method-assign]
    with pytest.raises(ExperimentExecutionError, match="every capability dropped"):
        ExperimentRunner(timeout=5, engine=engine).run(script, SPEC, 0)


class _Measured(Resources):
    def __init__(self, peak: int | None) -> None:
        super().__init__(lease=lease_uid())
        self.peak = peak

    def usage(self) -> Usage:
        return Usage(self.peak, 1.0)


@pytest.mark.parametrize(
    ("exit_code", "peak", "oom"),
    [(137, 256 * 1024**2, True), (137, 100 * 1024**2, False), (1, 256 * 1024**2, False)],
)
def test_podman_oom_is_told_by_a_kill_at_the_memory_cap(
    exit_code: int, peak: int, oom: bool
) -> None:
    """Podman never sets OOMKilled: a SIGKILL with peak memory at the cap is an OOM kill."""
    engine = FakeEngine(engine_kind="podman")
    policy = SandboxPolicy(image="img", memory_limit="256m")
    resources = _Measured(peak)
    run = podman_run(tmp_volumes=())
    with Sandbox.create(engine, "img", policy, run, resources) as sandbox:
        sandbox.attach()
        output = sandbox.collector(1024, None).finish(1.0)
        record = sandbox.record(exit_code, False, output, 1.0)
    assert record.oom_killed is oom
