#!/usr/bin/env bash
# Where base images cannot be pulled: a local stand-in for python:3.11-slim-bookworm, built from Debian
# bookworm with debootstrap (its python3 is 3.11) and imported into podman. python, python3 and pip are on
# PATH as in the official image: they are a venv at /opt/python, so pip installs work despite Debian's
# externally-managed marker. The image is cached in podman's store: a second run takes a second.
# Prints the image name on its last line. Usage: scripts/build_local_base.sh [--rebuild]
set -euo pipefail

IMAGE="${SEQSERVE_BASE_IMAGE:-localhost/seqserve-python:3.11-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ "${1:-}" != "--rebuild" ] && podman image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi

rootfs="$(mktemp -d /var/tmp/seqserve-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >&2
chroot "$rootfs" python3 -m venv /opt/python
# pip trusts the system's CA bundle, as Debian's own pip does, not the copy it vendors: a build on a
# machine behind a TLS proxy mounts the host's bundle over this file (scripts/build_images.sh).
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
chroot "$rootfs" /opt/python/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

tar --numeric-owner -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >&2
echo "$IMAGE"
