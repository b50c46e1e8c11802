#!/usr/bin/env bash
# podman, buildah, runc and debootstrap from Debian's packages, set up to run as root on a machine without
# systemd or cgroup v2 (the CI machines): runc, cgroupfs, no default ulimits. Idempotent; exits non-zero
# (and says why) where it cannot install or podman cannot run, so callers can skip instead of fail.
set -euo pipefail

CONF=/etc/containers/containers.conf
MARKER="# written by seqserve scripts/install_podman.sh"
PACKAGES=(podman buildah runc debootstrap)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if ! sudo -n true 2>/dev/null; then
        echo "install_podman: not root and no passwordless sudo: images need root podman here" >&2
        exit 1
    fi
    sudo_cmd=(sudo -n)
fi

missing=()
for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_podman: ${missing[*]} missing and no apt-get to install them" >&2
        exit 1
    fi
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

# Only a file we wrote is replaced: an operator's own containers.conf is left alone.
if [ ! -e "$CONF" ] || head -n 1 "$CONF" | grep -qF "$MARKER"; then
    "${sudo_cmd[@]}" install -d /etc/containers
    "${sudo_cmd[@]}" tee "$CONF" >/dev/null <<CONF
$MARKER
# No systemd to manage cgroups here, and the container's own ulimits come from the host.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
else
    echo "install_podman: $CONF is not ours; kept as it is" >&2
fi

if ! "${sudo_cmd[@]}" podman info >/dev/null 2>&1; then
    echo "install_podman: podman is installed but 'podman info' fails:" >&2
    "${sudo_cmd[@]}" podman info 2>&1 | tail -5 >&2
    exit 1
fi
echo "podman $("${sudo_cmd[@]}" podman version --format '{{.Client.Version}}') ready (runc, cgroupfs)"
