import json
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox.cleanup import build_labels
from runner.sandbox.policy import Run, SandboxPolicy, container_config
from runner.sandbox.seccomp import profile

#: The engine's own default: moby v20.10.24, profiles/seccomp/default.json, unmodified.
UPSTREAM = json.loads((Path(__file__).parent / "data" / "docker-20.10.24-seccomp.json").read_text())
#: What SECURITY.md says the project's profile takes out of Docker's default.
REMOVED = [
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "splice",
    "tee",
    "vmsplice",
    "modify_ldt",
    "socketcall",
    "ipc",
]
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16


def ours() -> dict[str, Any]:
    return dict(json.loads(profile()))


def allow_rules(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for rule in spec["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"]


def allowed_names(spec: dict[str, Any]) -> set[str]:
    return {name for rule in allow_rules(spec) for name in rule["names"]}


def conditions(rule: dict[str, Any]) -> tuple[str, str]:
    """A rule's arch, capability and kernel conditions, comparable across both files."""
    return (
        json.dumps(rule.get("includes") or {}, sort_keys=True),
        json.dumps(rule.get("excludes") or {}, sort_keys=True),
    )


def test_profile_is_json_that_refuses_what_it_does_not_list() -> None:
    """The shipped profile parses, is minified, and refuses every unlisted call with an errno."""
    text = profile()
    assert "\n" not in text
    assert ours()["defaultAction"] == "SCMP_ACT_ERRNO"
    assert ours()["defaultAction"] == UPSTREAM["defaultAction"]


@pytest.mark.parametrize("name", REMOVED)
def test_removed_call_is_in_no_allow_rule(name: str) -> None:
    """A removed call is allowed by no rule: not for any arch, capability or kernel."""
    assert name not in allowed_names(ours())


@pytest.mark.parametrize("name", REMOVED)
def test_removed_call_was_allowed_by_the_engine_default(name: str) -> None:
    """Each removal takes away something Docker's default would allow under some condition."""
    assert name in allowed_names(UPSTREAM)


def test_allows_nothing_the_engine_default_refuses() -> None:
    """Every allow rule is one of the engine default's, with the same conditions and fewer calls."""
    assert allowed_names(ours()) <= allowed_names(UPSTREAM)
    for rule in allow_rules(ours()):
        covering = [
            theirs
            for theirs in allow_rules(UPSTREAM)
            if conditions(theirs) == conditions(rule)
            and set(rule["names"]) <= set(theirs["names"])
            # Argument checks only narrow a rule: ours may add them, never drop them.
            and (not theirs.get("args") or theirs["args"] == rule.get("args"))
        ]
        assert covering, f"no rule of the engine's default allows {rule}"


def test_only_the_native_abi_of_each_architecture() -> None:
    """32-bit and x32 system calls (the ways around argument checks) are off on every arch."""
    theirs = {entry["architecture"]: entry for entry in UPSTREAM["archMap"]}
    for entry in ours()["archMap"]:
        assert entry["architecture"] in theirs
        assert not entry["subArchitectures"], entry


def test_sockets_only_of_the_families_an_ml_script_uses() -> None:
    """socket() is allowed for AF_UNIX, AF_INET, AF_INET6, AF_NETLINK; socketpair() for AF_UNIX."""
    families: dict[str, set[int]] = {"socket": set(), "socketpair": set()}
    for rule in allow_rules(ours()):
        for name in set(rule["names"]) & set(families):
            assert rule["names"] == [name]
            [check] = rule["args"]
            assert (check["index"], check["op"]) == (0, "SCMP_CMP_EQ")
            families[name].add(check["value"])
    assert families == {"socket": {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK}, "socketpair": {AF_UNIX}}


def test_every_container_gets_the_profile() -> None:
    """container_config passes the profile's text to the engine, beside no-new-privileges."""
    run = Run(
        ["python", "x.py"], Path("/exp"), (), deadline=0, uid=2_000_000_001, labels=build_labels(0)
    )
    for policy in (SandboxPolicy(image="img"), SandboxPolicy(image="img", runtime="runsc")):
        options = container_config(policy, run)["security_opt"]
        assert options == ["no-new-privileges", f"seccomp={profile()}"]
