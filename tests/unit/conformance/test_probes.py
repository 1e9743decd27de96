"""Each conformance probe holds on a real observation and fails on one that lacks its control.

``data/runc.json`` and ``data/runsc.json`` are what the three probe sandboxes
printed on this project's CI machine under runc and gVisor (recorded with every
control in force). Each case below takes one control away from such an
observation, the way a sandbox without it would show, and its probe must fail.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.conformance.probes import PROBES, Expected, Seen, judge
from runner.conformance.suite import DEADLINE, Conformance
from runner.core.settings import DEFAULT_IMAGE
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import SandboxPolicy

DATA = Path(__file__).parent / "data"
GOOD_IMAGE = [("python packages = recorded list", None), ("installed files", None)]


def recorded(runtime: str) -> tuple[Seen, Expected]:
    """A real observation with every control in force, and what it was held to."""
    data = json.loads((DATA / f"{runtime}.json").read_text())
    runs = {k: Execution.model_validate(v) for k, v in data["executions"].items()}
    seen = Seen(**runs, refused="would run the sandbox without: " + "; ".join(
        ["read-only root filesystem", "every capability dropped", "no-new-privileges",
         "the project's seccomp profile", "PID cap"]),
        dropped=("read-only root filesystem", "every capability dropped", "no-new-privileges",
                 "the project's seccomp profile", "PID cap"),
        image_checks=list(GOOD_IMAGE), image_id="sha256:" + "0" * 64)  # fmt: skip
    expected = Expected(
        policy=SandboxPolicy(image=DEFAULT_IMAGE, runtime=data["runtime"]),
        output_limit=1024 * 1024,
        user_kernel=data["user_kernel"],
        environment=data["environment"],
        script_dir=data["script_dir"],
        hidden=tuple(data["hidden"]),
        cores=data["cores"],
        deadline=DEADLINE,
    )
    return seen, expected


Mutation = Callable[[Seen, Expected], tuple[Seen, Expected]]


def on_report(name: str, change: Callable[[dict[str, Any]], None]) -> Mutation:
    """A mutation of the last JSON line the sandbox ``name`` printed."""

    def mutate(seen: Seen, expected: Expected) -> tuple[Seen, Expected]:
        execution = getattr(seen, name)
        lines = execution.stdout.splitlines()
        report = json.loads(lines[-1])
        change(report)
        stdout = "\n".join([*lines[:-1], json.dumps(report)]) + "\n"
        setattr(seen, name, execution.model_copy(update={"stdout": stdout}))
        return seen, expected

    return mutate


def on_main(change: Callable[[dict[str, Any]], None]) -> Mutation:
    return on_report("main", change)


def on_run(name: str, **update: Any) -> Mutation:
    def mutate(seen: Seen, expected: Expected) -> tuple[Seen, Expected]:
        setattr(seen, name, getattr(seen, name).model_copy(update=update))
        return seen, expected

    return mutate


def on_seen(**update: Any) -> Mutation:
    def mutate(seen: Seen, expected: Expected) -> tuple[Seen, Expected]:
        for key, value in update.items():
            setattr(seen, key, value)
        return seen, expected

    return mutate


def on_expected(**update: Any) -> Mutation:
    def mutate(seen: Seen, expected: Expected) -> tuple[Seen, Expected]:
        fields = {**expected.__dict__, **update}
        return seen, Expected(**fields)

    return mutate


def call(name: str, answer: str = "ok") -> Mutation:
    return on_main(lambda r: r["syscalls"].__setitem__(name, answer))


def net(key: str, value: Any) -> Mutation:
    return on_main(lambda r: r["network"].__setitem__(key, value))


def status(key: str, value: str) -> Mutation:
    return on_main(lambda r: r["identity"]["status"].__setitem__(key, value))


def mount_options(point: str, options: str) -> Mutation:
    def change(report: dict[str, Any]) -> None:
        for mount in report["mounts"]:
            if mount[0] == point:
                mount[1] = options

    return on_main(change)


def with_memory_survivor(seen: Seen, expected: Expected) -> tuple[Seen, Expected]:
    memory = seen.memory
    assert memory is not None
    stdout = memory.stdout + json.dumps({"identity": {"uid": 1}, "survived": 5 << 30}) + "\n"
    seen.memory = memory.model_copy(update={"stdout": stdout, "oom_killed": False, "exit_code": 0})
    return seen, expected


def shared_uid(seen: Seen, expected: Expected) -> tuple[Seen, Expected]:
    uid = json.loads(seen.main.stdout.splitlines()[-1])["identity"]["uid"]  # type: ignore[union-attr]
    return on_report("cpu", lambda r: r["identity"].__setitem__("uid", uid))(seen, expected)


#: For each probe, sandboxes that lack its control (runc observations unless marked).
MUTANTS: dict[str, list[Mutation]] = {
    "network-interfaces": [net("interfaces", ["eth0", "lo"])],
    "network-routes": [net("routes", ["v4 dev eth0 dst 00000000"])],
    "network-connect": [net("connect", None),
                        net("connect", {"tcp 192.0.2.1:9": ["ECONNREFUSED", 0.01]}),
                        net("connect", {"tcp 192.0.2.1:9": ["ETIMEDOUT", 2.0]})],
    "network-dns": [net("nameservers", ["10.0.0.2"]), net("lookup", ["ok", 0.01]),
                    net("lookup", None), net("nameservers", [])],
    "user": [on_main(lambda r: r["identity"].update(uid=0, gid=0)),
             on_main(lambda r: r["identity"].update(uid=10001, gid=10001)),
             status("Uid", "10001\t0\t10001\t10001"),
             on_main(lambda r: r.__setitem__("setuid root", "ok"))],
    "capabilities": [status("CapBnd", "00000000a80425fb"), status("CapEff", "0000000000000400")],
    "no-new-privileges": [on_main(lambda r: r.__setitem__("no_new_privs", 0))],
    "seccomp-filter": [status("Seccomp", "0")],
    "seccomp-io-uring": [call("io_uring_setup")],
    "seccomp-ptrace": [call("ptrace child"), call("ptrace init")],
    "seccomp-keyring": [call("add_key"), call("keyctl")],
    "seccomp-namespaces": [call("unshare user"), call("unshare mount")],
    "seccomp-mount": [call("mount"), call("mount in a user namespace")],
    "seccomp-kernel-interfaces": [call("bpf"), call("perf_event_open"), call("userfaultfd")],
    "runtime": [on_expected(user_kernel=True)],
    "read-only-root": [mount_options("/", "rw,relatime"),
                       on_main(lambda r: r["writable"].append("/"))],
    "writable-paths": [on_main(lambda r: r["writable"].append("/opt")),
                       mount_options("/tmp", "rw,nosuid,nodev,relatime"),
                       mount_options("/dev/shm", "rw,nosuid,nodev")],
    "host-paths": [on_main(lambda r: r["mounts"].append(["/home/me", "ro", "ext4", "/home/me"])),
                   on_main(lambda r: r["visible"].update({"/run/docker.sock": True}))],
    "proc-sys-masking": [on_main(lambda r: r["masked"].update({"/proc/timer_list": 4096})),
                         on_main(lambda r: r["proc writes"].update({"/proc/sysrq-trigger": "ok"}))],
    "environment": [on_main(lambda r: r["environment"].update(LEAKED="x")),
                    on_main(lambda r: r["environment"].pop("OMP_NUM_THREADS")),
                    on_main(lambda r: r["environment"].update(PATH="/host/bin"))],
    "pid-cap": [on_main(lambda r: r.__setitem__("threads", {"started": 528, "refused": None})),
                on_main(lambda r: r.__setitem__("nproc", [-1, -1]))],
    "memory-cap": [with_memory_survivor, on_run("memory", oom_killed=False),
                   on_run("memory", peak_memory_bytes=3 << 30)],
    "cpu-cap": [on_run("cpu", cpu_seconds=9.0, execution_time=5.0),
                lambda s, e: on_report("cpu", lambda r: r.update(cpu=4.0, wall=2.0))(
                    *on_run("cpu", cpu_seconds=None)(s, e))],
    "deadline-kill": [on_run("cpu", timed_out=False, exit_code=0),
                      on_run("cpu", execution_time=30.0)],
    "output-cap": [on_run("cpu", stdout_truncated=False),
                   on_run("cpu", stdout="x" * (2 << 20) + "\n{}\n")],
    "identity": [shared_uid, on_main(lambda r: r.__setitem__("nproc", [4096, 4096]))],
    "engine-verification": [on_seen(refused=None), on_seen(started=True),
                            on_seen(refused="would run the sandbox without: PID cap")],
    "image-lock": [on_seen(image_checks=[("python packages = lock", "numpy 2.0 instead of 2.4")]),
                   on_seen(image_checks=[])],
}  # fmt: skip


def finding(seen: Seen, expected: Expected, probe_id: str) -> tuple[str, str]:
    (found,) = [f for f in judge(seen, expected) if f.probe.id == probe_id]
    return found.status, found.detail


def test_every_probe_has_a_mutant() -> None:
    """No probe goes without a case that shows it failing; there are at least 15."""
    assert {p.id for p in PROBES} == set(MUTANTS)
    assert len(PROBES) >= 15


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_a_real_sandbox_with_every_control_passes_every_probe(runtime: str) -> None:
    """The recorded observations (runc and gVisor) pass each probe: exit 0."""
    seen, expected = recorded(runtime)
    findings = judge(seen, expected)
    assert [(f.probe.id, f.status, f.detail) for f in findings if f.status != "pass"] == []
    outcome = Conformance(findings, "engine", runtime, DEFAULT_IMAGE, "sha256:0", 1.0)
    assert outcome.exit_code == 0


@pytest.mark.parametrize(
    ("probe_id", "case"),
    [(probe_id, i) for probe_id, cases in MUTANTS.items() for i in range(len(cases))],
)
def test_each_probe_fails_without_its_control(probe_id: str, case: int) -> None:
    """A sandbox that lacks the probe's control makes it fail (exit 4), not pass or err."""
    seen, expected = recorded("runc")
    seen, expected = MUTANTS[probe_id][case](copy.deepcopy(seen), expected)
    status, detail = finding(seen, expected, probe_id)
    assert status == "fail", detail


@pytest.mark.parametrize(
    ("probe_id", "mutant"),
    [("seccomp-ptrace", call("ptrace init")), ("seccomp-keyring", call("add_key")),
     ("seccomp-mount", call("mount in a user namespace")),
     ("seccomp-kernel-interfaces", call("bpf")),
     ("runtime", on_expected(user_kernel=False)),
     ("seccomp-io-uring", on_main(lambda r: r.__setitem__("kernel", "Linux version 6.1.0"))),
     ("cpu-cap", on_run("cpu", cpu_seconds=None))],
)  # fmt: skip
def test_under_gvisor_the_probes_hold_gvisor_to_its_own_rules(
    probe_id: str, mutant: Mutation
) -> None:
    """Under runsc a call gVisor refuses must stay refused, and the kernel must be gVisor's."""
    seen, expected = recorded("runsc")
    seen, expected = mutant(copy.deepcopy(seen), expected)
    status, detail = finding(seen, expected, probe_id)
    assert status == "fail", detail


def test_a_sandbox_that_could_not_run_is_an_error_and_exit_2() -> None:
    """A sandbox that never ran leaves its probes not observed (error), and exit 2."""
    seen, expected = recorded("runc")
    seen.memory = None
    seen.errors["memory"] = "The runtime could not start the sandbox"
    findings = judge(seen, expected)
    errors = {f.probe.id for f in findings if f.status == "error"}
    assert errors == {"memory-cap", "identity"}
    assert Conformance(findings, "e", "runc", "i", "sha256:0", 1.0).exit_code == 2


def test_a_failure_outweighs_an_error_exit_4() -> None:
    """With one control failing and another not observed, the exit code is 4."""
    seen, expected = recorded("runc")
    seen.errors["image"] = "no image"
    seen, expected = call("io_uring_setup")(seen, expected)
    assert Conformance(judge(seen, expected), "e", "runc", "i", "s", 1.0).exit_code == 4
