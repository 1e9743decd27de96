#!/usr/bin/env bash
# Installs what tests/engines.py needs to start the engines other than the local
# one: debootstrap (it builds the Docker-in-Docker image from Debian packages),
# podman and catatonit (Podman's Docker-compatible service, and the init it runs
# for `init=True`), unshare (util-linux; the service runs with no network).
# Installs only what is missing; run it as root on Debian or Ubuntu.
#
#   bash scripts/engines.sh
set -euo pipefail

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v podman >/dev/null || missing+=(podman)
command -v catatonit >/dev/null || missing+=(catatonit)
command -v unshare >/dev/null || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
    echo "==> debootstrap, podman, catatonit and unshare are installed"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: need ${missing[*]}: run as root on Debian/Ubuntu, or install them yourself" >&2
    exit 1
fi
echo "==> installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get update -qq
# No recommends: Podman's pull in buildah, slirp4netns and fuse-overlayfs, none needed here.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
