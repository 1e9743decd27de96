#!/usr/bin/env bash
# Sets this project up on a fresh machine, then does one thing:
#
#   bash scripts/setup.sh demo   # set up, then run demo experiments in the sandbox
#   bash scripts/setup.sh test   # set up, then lint, type-check, build the docs, run every test
#
# Set-up: a .venv in the repository root with the package; a running Docker
# engine (installed and started when missing and we are root on Debian or
# Ubuntu); for the tests, gVisor (runsc) registered with it; the pinned sandbox
# image, built offline from Debian packages and the locked wheels. Every step is
# skipped when already done. The tests also start a Docker-in-Docker engine and a
# Podman service of their own (tests/engines.py; scripts/engines.sh installs
# debootstrap, podman and catatonit).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        || die "need $* but cannot install it: run as root on Debian/Ubuntu, or install it yourself"
    if [ -z "${APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        step "creating .venv"
        python3 -m venv .venv
    fi
    step "installing the package and its test tools into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
}

engine_up() { docker info >/dev/null 2>&1; }

ensure_docker() {
    if command -v docker >/dev/null && engine_up; then
        return
    fi
    if ! command -v dockerd >/dev/null; then
        step "installing the Docker engine (docker.io)"
        apt_install docker.io iptables
    fi
    step "starting dockerd (log: /var/log/dockerd.log)"
    [ "$(id -u)" = 0 ] || die "no Docker engine answers and only root can start one here"
    # A system service: it outlives this script and must not inherit its HOME or TMPDIR
    # (CI's are private and removed afterwards; under them gVisor's sandbox cannot start).
    nohup env -i PATH="$PATH" dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 1 120); do
        engine_up && return
        sleep 0.5
    done
    tail -20 /var/log/dockerd.log >&2 || true
    die "dockerd did not answer within 60 s"
}

runsc_registered() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

# gVisor (runsc): the tests run every integration and adversarial case under it too.
ensure_runsc() {
    runsc_registered && return
    if ! command -v runsc >/dev/null; then
        step "installing gVisor (runsc)"
        apt_install runsc
    fi
    step "registering runsc with the Docker engine (/etc/docker/daemon.json)"
    mkdir -p /etc/docker
    # Merge into any existing configuration; runsc must run with its network off.
    python3 - <<'PY'
import json, pathlib
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["runsc"] = {
    "path": "/usr/bin/runsc",
    "runtimeArgs": ["--network=none"],
}
path.write_text(json.dumps(config, indent=2) + "\n")
PY
    pkill -HUP -x dockerd || die "could not signal dockerd to reload; restart it to pick up runsc"
    for _ in $(seq 1 40); do
        runsc_registered && return
        sleep 0.25
    done
    die "runsc did not appear in the engine's runtimes after a reload"
}

ensure_image() {
    if ! command -v debootstrap >/dev/null && [ -z "${RUNNER_BASE_IMAGE_DIGEST:-}" ] \
        && ! docker image inspect experiment-runner/base:bookworm >/dev/null 2>&1; then
        step "installing debootstrap (to build the base image from Debian packages)"
        apt_install debootstrap
    fi
    step "building the pinned sandbox image (skipped when up to date)"
    .venv/bin/runner image build
}

case "${1:-}" in
    demo)
        ensure_venv
        ensure_docker
        ensure_image
        step "running the demo"
        .venv/bin/runner demo
        ;;
    test)
        ensure_venv
        ensure_docker
        ensure_runsc
        ensure_image
        step "ruff (lint and format)"
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        step "mypy"
        .venv/bin/mypy
        # The docs site, API reference included: any warning (a broken link, a docstring
        # mkdocstrings cannot read) fails. Built where nothing of it stays. (Material's
        # banner about its end of life, May 2027, is silenced: it is not about this build.)
        step "mkdocs build --strict"
        site=$(mktemp -d)
        NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site" \
            || { rm -rf "$site"; exit 1; }
        rm -rf "$site"
        # The first pass starts a Docker-in-Docker engine of its own too (an engine restart).
        command -v debootstrap >/dev/null || apt_install debootstrap
        step "pytest: everything, containers under runc"
        .venv/bin/pytest
        step "pytest: integration and adversarial suites again under gVisor (runsc)"
        RUNNER_RUNTIME=runsc .venv/bin/pytest tests/integration tests/adversarial
        # An engine that cannot see this machine's files: every run's files are copied.
        step "pytest: integration and adversarial suites against Docker-in-Docker"
        RUNNER_TEST_ENGINE=dind .venv/bin/pytest tests/integration tests/adversarial
        # Podman's Docker-compatible service, started by the tests in a network namespace.
        step "pytest: integration and adversarial suites against Podman"
        bash scripts/engines.sh
        RUNNER_TEST_ENGINE=podman .venv/bin/pytest tests/integration tests/adversarial
        ;;
    *)
        echo "usage: bash scripts/setup.sh demo|test" >&2
        exit 64
        ;;
esac
