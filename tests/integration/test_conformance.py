"""`runner doctor --conformance` on this host's engine, and each probe against a real
mutant container that lacks its control.

A mutant is made from the runner's own container configuration with one control
taken out, and created straight through docker-py: the runner's check after
create would refuse it. Mutants need the local Docker engine (the internal
network, docker-py's low-level API), so they run in the first pass only
(``run_once``); the conformance command itself runs in every pass (runc, runsc,
Docker-in-Docker, Podman).

No test here sends a packet off this machine: the network mutant sits on an
``internal`` Docker network the test creates (and removes), never the default
bridge, and the probe tries a connect or a lookup only in a sandbox with no
interface but ``lo`` and no route.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import docker
import pytest
import requests
import sarif_pydantic
from docker.models.containers import _create_container_args

from runner.conformance.probes import PROBES, Expected, Seen, judge
from runner.conformance.suite import ProbeFiles, expectations, observe
from runner.conformance.suite import requests as probe_requests
from runner.core.settings import ExperimentDefaults
from runner.sandbox.cleanup import build_labels, deadline_after
from runner.sandbox.engine import DockerEngine
from runner.sandbox.identity import lease_uid
from runner.sandbox.lifecycle import Execution
from runner.sandbox.policy import Run, SandboxPolicy, container_config
from runner.sandbox.probe import EngineFacts, probe
from runner.sandbox.request import RunRequest
from tests.conftest import TEST_ENGINE
from tests.integration.conftest import RUNTIME
from tests.integration.test_cli import runner_cli

#: Mutants are made through the local Docker engine's own API, under runc: the first pass.
run_once = pytest.mark.skipif(
    not (TEST_ENGINE == "local" and RUNTIME == "runc"),
    reason="mutant containers are made through the local Docker engine's API, under runc: "
    "they run in the first pass only",
)
#: Marks the networks the mutants use, so that a cleanup finds them.
MUTANT_LABEL = "io.experiment-runner.test-mutant"


def test_conformance_holds_on_this_engine(tmp_path: Path) -> None:
    """Every probe holds under the configured engine and runtime: exit 0, JUnit and SARIF."""
    junit, sarif = tmp_path / "conformance.xml", tmp_path / "conformance.sarif"
    started = time.monotonic()
    out = runner_cli("doctor", "--conformance", "--junit", str(junit), "--sarif", str(sarif))
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(PROBES) >= 15 and f"{len(PROBES)} of {len(PROBES)} controls hold" in out.stdout
    suite = ET.parse(junit).getroot()  # noqa: S314 - the report the command just wrote
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (
        str(len(PROBES)), "0", "0")  # fmt: skip
    log = sarif_pydantic.Sarif.model_validate_json(sarif.read_text())
    assert [rule.id for rule in log.runs[0].tool.driver.rules] == [p.id for p in PROBES]
    assert {result.kind for result in log.runs[0].results} == {"pass"}
    assert took < 60, f"conformance took {took:.0f} s"


# Mutants -----------------------------------------------------------------------

Change = Callable[[dict[str, Any], dict[str, Any]], None]


class Mutant:
    """Runs a probe request in a container of the runner's configuration with ``change``
    made to it (create arguments, host config), through docker-py, unchecked."""

    def __init__(self, client: docker.DockerClient, policy: SandboxPolicy, facts: EngineFacts,
                 change: Change) -> None:  # fmt: skip
        self.client, self.policy, self.facts, self.change = client, policy, facts, change

    def __call__(self, request: RunRequest) -> Execution:
        lease = lease_uid()
        run = Run(
            command=["python", str(request.script), *request.args],
            workdir=request.script.parent,
            read_only_paths=request.mounts,
            deadline=deadline_after(request.timeout),
            uid=lease.uid,
            labels=build_labels(deadline_after(request.timeout)),
            support=self.facts.support.files,
        )
        config = container_config(self.policy, run)
        kwargs = _create_container_args(
            {
                "image": self.facts.image_id,
                "command": run.command,
                **config,
                "version": self.client.api._version,
            }
        )
        self.change(kwargs, kwargs["host_config"])
        api = self.client.api
        container = api.create_container(**kwargs)["Id"]
        try:
            started = time.monotonic()
            api.start(container)
            timed_out = False
            try:
                code = api.wait(container, timeout=request.timeout)["StatusCode"]
            except requests.exceptions.ConnectionError:
                timed_out = True
                api.kill(container)
                code = api.wait(container, timeout=10)["StatusCode"]
            took = time.monotonic() - started
            state = api.inspect_container(container)["State"]
            stdout = api.logs(container, stdout=True, stderr=False).decode(errors="replace")
        finally:
            api.remove_container(container, force=True)
            lease.release()
        return Execution(
            exit_code=code,
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            execution_time=took,
            stdout=stdout,
            image_id=self.facts.image_id,
        )


@pytest.fixture
def client(engine: DockerEngine) -> Iterator[docker.DockerClient]:
    found = docker.from_env()
    yield found
    found.close()


Prepared = tuple[SandboxPolicy, EngineFacts, Expected, dict[str, RunRequest]]


@pytest.fixture
def prepare(engine: DockerEngine, tmp_path: Path) -> Callable[..., Prepared]:
    def make(**limits: Any) -> Prepared:
        policy = SandboxPolicy(image=ExperimentDefaults().image, **limits)
        facts = probe(engine, policy, "bind")
        files = ProbeFiles.make(tmp_path)
        expected = expectations(policy, ExperimentDefaults(), facts, files)
        return policy, facts, expected, dict(probe_requests(files, expected))

    return make


def statuses(seen: Seen, expected: Expected, sandbox: str) -> dict[str, str]:
    """The status of each probe that reads only ``sandbox``."""
    probes = [p for p in PROBES if p.needs == sandbox]
    return {f.probe.id: f.status for f in judge(seen, expected, probes)}


def host_config(key: str, value: Any) -> Change:
    return lambda create, host: host.__setitem__(key, value)


def security_opt(*options: str) -> Change:
    def change(create: dict[str, Any], host: dict[str, Any]) -> None:
        host["SecurityOpt"] = [o for o in host["SecurityOpt"] if o.startswith(options)]

    return change


def seccomp_unconfined(create: dict[str, Any], host: dict[str, Any]) -> None:
    host["SecurityOpt"] = ["no-new-privileges", "seccomp=unconfined"]


def extra_tmpfs(create: dict[str, Any], host: dict[str, Any]) -> None:
    host["Tmpfs"] = {**host["Tmpfs"], "/scratch": "rw,exec,size=1m,mode=1777"}


def tmp_with_exec(create: dict[str, Any], host: dict[str, Any]) -> None:
    host["Tmpfs"] = {**host["Tmpfs"], "/tmp": "rw,exec,nosuid,nodev,mode=1777,size=64m"}


def unmasked(create: dict[str, Any], host: dict[str, Any]) -> None:
    host["MaskedPaths"], host["ReadonlyPaths"] = [], []  # docker's systempaths=unconfined


def leaked_variable(create: dict[str, Any], host: dict[str, Any]) -> None:
    create["environment"] = {**create["environment"], "LEAKED_TOKEN": "from-the-caller"}


def no_user(create: dict[str, Any], host: dict[str, Any]) -> None:
    create.pop("user")  # the image's own user, the same for every run


def no_pid_cap(create: dict[str, Any], host: dict[str, Any]) -> None:
    host["PidsLimit"] = -1
    host["Ulimits"] = [u for u in host["Ulimits"] if u["Name"] != "nproc"]


def no_memory_cap(create: dict[str, Any], host: dict[str, Any]) -> None:
    host.pop("Memory")
    host.pop("MemorySwap")


def no_cpu_cap(create: dict[str, Any], host: dict[str, Any]) -> None:
    host.pop("NanoCpus")
    host["LogConfig"] = {"Type": "json-file", "Config": {}}  # and every byte kept


MAIN_MUTANTS = {
    "user": (no_user, {"user"}),
    "capabilities": (host_config("CapDrop", None), {"capabilities"}),
    "no-new-privileges": (security_opt("seccomp="), {"no-new-privileges"}),
    "seccomp": (seccomp_unconfined, {"seccomp-filter", "seccomp-io-uring", "seccomp-ptrace",
                                     "seccomp-keyring", "seccomp-namespaces", "seccomp-mount",
                                     "seccomp-kernel-interfaces"}),
    # A writable root also makes the image's world-writable /var/tmp writable.
    "read-only root": (host_config("ReadonlyRootfs", False), {"read-only-root", "writable-paths"}),
    "extra writable mount": (extra_tmpfs, {"writable-paths"}),
    "exec in /tmp": (tmp_with_exec, {"writable-paths"}),
    "proc masks": (unmasked, {"proc-sys-masking"}),
    "environment": (leaked_variable, {"environment"}),
}  # fmt: skip


@run_once
@pytest.mark.parametrize("mutant", sorted(MAIN_MUTANTS))
def test_each_main_probe_fails_on_a_mutant_container(
    mutant: str, client: docker.DockerClient, prepare: Callable[..., Prepared]
) -> None:
    """A real container lacking one control fails that control's probes, and only those."""
    change, failing = MAIN_MUTANTS[mutant]
    policy, facts, expected, runs = prepare()
    seen = observe(Mutant(client, policy, facts, change), {"main": runs["main"]})
    found = statuses(seen, expected, "main")
    assert {p for p, s in found.items() if s != "pass"} == failing, found


@run_once
def test_the_network_probes_fail_on_an_internal_network(
    client: docker.DockerClient, prepare: Callable[..., Prepared]
) -> None:
    """On a Docker network (internal: no way off this machine) the four network probes fail,
    and the probe never tries to connect or look a name up."""
    policy, facts, expected, runs = prepare()
    network = client.networks.create(
        f"conformance-mutant-{uuid.uuid4().hex[:12]}", internal=True,
        labels={MUTANT_LABEL: "1"},
    )  # fmt: skip
    try:
        assert network.attrs["Internal"] is True

        def on_network(create: dict[str, Any], host: dict[str, Any]) -> None:
            create.pop("network_disabled", None)
            host["NetworkMode"] = network.name

        seen = observe(Mutant(client, policy, facts, on_network), {"main": runs["main"]})
    finally:
        network.remove()
    report = json.loads(seen.main.stdout.splitlines()[-1])  # type: ignore[union-attr]
    assert report["network"]["connect"] is None and report["network"]["lookup"] is None
    found = statuses(seen, expected, "main")
    network_probes = {"network-interfaces", "network-routes", "network-connect", "network-dns"}
    assert {p for p, s in found.items() if s != "pass"} == network_probes, found


@run_once
def test_the_host_paths_probe_fails_on_a_mounted_host_directory(
    client: docker.DockerClient, prepare: Callable[..., Prepared], tmp_path: Path
) -> None:
    """A host directory bound into the sandbox (read-only, even) fails host-paths."""
    policy, facts, expected, runs = prepare()

    def bind_host(create: dict[str, Any], host: dict[str, Any]) -> None:
        host["Mounts"] = [*host["Mounts"], {"Target": "/host", "Source": str(tmp_path),
                                            "Type": "bind", "ReadOnly": True}]  # fmt: skip

    seen = observe(Mutant(client, policy, facts, bind_host), {"main": runs["main"]})
    found = statuses(seen, expected, "main")
    assert {p for p, s in found.items() if s != "pass"} == {"host-paths"}, found


@run_once
def test_the_pid_probe_fails_without_a_pid_cap(
    client: docker.DockerClient, prepare: Callable[..., Prepared]
) -> None:
    """Without the cgroup cap and RLIMIT_NPROC the (bounded) thread bomb passes the cap."""
    policy, facts, expected, runs = prepare(pids_limit=64)
    seen = observe(Mutant(client, policy, facts, no_pid_cap), {"main": runs["main"]})
    found = statuses(seen, expected, "main")
    assert {p for p, s in found.items() if s != "pass"} == {"pid-cap"}, found


@run_once
def test_the_memory_probe_fails_without_a_memory_cap(
    client: docker.DockerClient, prepare: Callable[..., Prepared]
) -> None:
    """Without a memory cap the (bounded) allocation survives: memory-cap fails."""
    policy, facts, expected, runs = prepare(memory_limit="128m")
    seen = observe(Mutant(client, policy, facts, no_memory_cap), {"memory": runs["memory"]})
    assert statuses(seen, expected, "memory") == {"memory-cap": "fail"}


@run_once
def test_the_cpu_and_output_probes_fail_without_their_caps(
    client: docker.DockerClient, prepare: Callable[..., Prepared]
) -> None:
    """Uncapped CPU spins past a tenth of a CPU; output kept whole fails the output cap."""
    # A tenth of a CPU: spinning on every core uncapped beats it even on a busy machine.
    policy, facts, expected, runs = prepare(cpu_limit=0.1)
    seen = observe(Mutant(client, policy, facts, no_cpu_cap), {"cpu": runs["cpu"]})
    found = statuses(seen, expected, "cpu")
    details = [f.detail for f in judge(seen, expected, PROBES) if f.probe.needs == "cpu"]
    assert (found["cpu-cap"], found["output-cap"]) == ("fail", "fail"), details


@run_once
def test_the_mutant_harness_passes_with_every_control(
    client: docker.DockerClient, prepare: Callable[..., Prepared]
) -> None:
    """The same harness with nothing taken out passes every main probe (the mutants' baseline)."""
    policy, facts, expected, runs = prepare()
    seen = observe(Mutant(client, policy, facts, lambda create, host: None), {"main": runs["main"]})
    found = statuses(seen, expected, "main")
    assert {p for p, s in found.items() if s != "pass"} == set(), found
