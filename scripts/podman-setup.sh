#!/usr/bin/env bash
# A container engine for `make image-check` on a Debian machine without Docker: podman from
# Debian, configured for hosts whose cgroups crun refuses and whose file-descriptor limit cannot
# be raised (default_ulimits = [], cgroupfs, runc). Needs root (or sudo). Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
for cmd in podman runc podman-compose debootstrap; do
    command -v "$cmd" > /dev/null || need+=("$cmd")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "podman-setup: installing podman runc podman-compose debootstrap (missing: ${need[*]})"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman runc podman-compose debootstrap > /dev/null
fi

CONF=/etc/containers/containers.conf
WANT='[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"'
if [ ! -f "$CONF" ] || ! grep -q 'runtime = "runc"' "$CONF"; then
    echo "podman-setup: writing $CONF (no default ulimits, cgroupfs, runc)"
    $SUDO mkdir -p /etc/containers
    printf '%s\n' "$WANT" | $SUDO tee "$CONF" > /dev/null
fi
podman --version
