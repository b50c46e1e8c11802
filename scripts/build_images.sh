#!/usr/bin/env bash
# Build the serving image (localhost/seqserve:cpu) and the train image (localhost/seqserve:train) with podman
# on a machine that cannot pull base images: FROM the local Debian base of scripts/build_local_base.sh.
# The build reaches the package registry over the host's network, trusting the host's CA bundle, and takes
# torch 2.13.0's CPU wheel from this machine's pip find-links when one is there (never a CUDA build).
# Layers are cached by podman: a rebuild with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVE_IMAGE="${SEQSERVE_SERVE_IMAGE:-localhost/seqserve:cpu}"
TRAIN_IMAGE="${SEQSERVE_TRAIN_IMAGE:-localhost/seqserve:train}"
TORCH_WHEEL_GLOB="torch-2.13.0+cpu-cp311-cp311-*.whl"

base="$(scripts/build_local_base.sh | tail -n 1)"

# The local base's pip trusts /etc/ssl/certs/ca-certificates.crt: over it goes the bundle the host's pip
# trusts. Mounts go over paths the base already has, so nothing of them is left in the images.
ca_bundle="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
ca_bundle="${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}"
volumes=()
[ -f "$ca_bundle" ] && volumes+=(-v "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")

# The local torch CPU wheel: in a folder this machine's pip already uses as find-links.
torch_args=()
find_links="${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true)"
for folder in $find_links; do
    folder="${folder#file://}"
    if compgen -G "$folder/$TORCH_WHEEL_GLOB" >/dev/null; then
        volumes+=(-v "$folder:/mnt:ro")
        torch_args=(--build-arg TORCH_FIND_LINKS=/mnt)
        echo "torch: the CPU wheel in $folder" >&2
        break
    fi
done
[ "${#torch_args[@]}" -gt 0 ] || echo "torch: no local $TORCH_WHEEL_GLOB; from PyTorch's CPU index" >&2

common=(
    --network host --pull=never --layers
    --format docker  # OCI image configs have no HEALTHCHECK; Docker's do, and podman runs them
    -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore
    --build-arg "PYTHON_IMAGE=$base"
    "${volumes[@]}"
)
# The wheel stage first, alone: two builds running it at once would make two different wheels (pip's
# timestamps), and the next run would find only one of them in the cache.
podman build "${common[@]}" --target wheel . >&2
# Then both at once: most of a cold build is waiting on downloads and unpacking, not CPU.
podman build "${common[@]}" -t "$SERVE_IMAGE" . >&2 &
serve_build=$!
podman build "${common[@]}" "${torch_args[@]}" --target train -t "$TRAIN_IMAGE" . >&2
wait "$serve_build"
for image in "$SERVE_IMAGE" "$TRAIN_IMAGE"; do
    podman image inspect --format "$image {{.Size}}" "$image"
done
