#!/usr/bin/env bash
# Installs Triton's perf_analyzer under .tools/ (ignored by git), from package registries only:
#   - bin/perf_analyzer from the manylinux wheel of tritonclient==2.41.0 (newer wheels dropped it);
#   - libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel (perf_analyzer links it; it never uses a GPU);
#   - Debian's libb64-0d: apt-get install where we are root (or have sudo -n), else its .deb unpacked here.
# Idempotent: a second run finds everything in place and only prints the result.
# Prints the wrapper's path and the LD_LIBRARY_PATH the raw binary needs; tests and the bench use the
# wrapper `.tools/bin/perf_analyzer`, which sets LD_LIBRARY_PATH itself.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${SEQSERVE_TOOLS:-$ROOT/.tools}"
TRITONCLIENT_VERSION=2.41.0
CUDART_VERSION=12.4.127
HOME_DIR="$TOOLS/perf_analyzer"
LIB="$HOME_DIR/lib"
WHEELS="$TOOLS/wheels"
BINARY="$HOME_DIR/bin/perf_analyzer"
WRAPPER="$TOOLS/bin/perf_analyzer"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"

mkdir -p "$LIB" "$HOME_DIR/bin" "$WHEELS" "$TOOLS/bin"

download_wheel() {  # name==version platform
    local found
    found=$(ls "$WHEELS"/"$(echo "${1%%==*}" | tr - _)"-"${1##*==}"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$found" ]; then
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform "$2" \
            --python-version 3.11 "$1" -d "$WHEELS" >&2
        found=$(ls "$WHEELS"/"$(echo "${1%%==*}" | tr - _)"-"${1##*==}"-*.whl | head -1)
    fi
    echo "$found"
}

if [ ! -x "$BINARY" ]; then
    wheel=$(download_wheel "tritonclient==$TRITONCLIENT_VERSION" manylinux1_x86_64)
    unzip -o -q -j "$wheel" "tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer" -d "$HOME_DIR/bin"
    chmod +x "$BINARY"
fi

if [ ! -e "$LIB/libcudart.so.12" ]; then
    wheel=$(download_wheel "nvidia-cuda-runtime-cu12==$CUDART_VERSION" manylinux2014_x86_64)
    unzip -o -q -j "$wheel" "nvidia/cuda_runtime/lib/libcudart.so.12" -d "$LIB"
fi

have_libb64() {
    [ -e "$LIB/libb64.so.0d" ] || ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'
}

if ! have_libb64; then
    sudo=()
    if [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then sudo=(sudo -n); fi
    if [ "$(id -u)" -eq 0 ] || [ ${#sudo[@]} -gt 0 ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            libb64-0d >/dev/null 2>&1 \
            || { "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 \
                 && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
                    apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null 2>&1; } || true
    fi
fi
if ! have_libb64; then  # not root: unpack the .deb beside the binary instead
    scratch=$(mktemp -d)
    (cd "$scratch" && apt-get download libb64-0d >/dev/null 2>&1) || true
    deb=$(ls "$scratch"/libb64-0d_*.deb 2>/dev/null | head -1 || true)
    if [ -n "$deb" ]; then
        dpkg-deb -x "$deb" "$scratch/root"
        find "$scratch/root" -name 'libb64.so.0d*' -exec cp -P {} "$LIB/" \;
    fi
    rm -rf "$scratch"
fi
if ! have_libb64; then
    echo "install_perf_analyzer: libb64.so.0d not found and could not be installed (apt-get install libb64-0d)" >&2
    exit 1
fi

cat >"$WRAPPER" <<EOF
#!/usr/bin/env bash
# Written by scripts/install_perf_analyzer.sh: perf_analyzer with the libraries it links on its path.
export LD_LIBRARY_PATH="$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$BINARY" "\$@"
EOF
chmod +x "$WRAPPER"

if ! "$WRAPPER" --version >/dev/null 2>&1; then
    missing=$(LD_LIBRARY_PATH="$LIB" ldd "$BINARY" | grep 'not found' || true)
    echo "install_perf_analyzer: $BINARY does not run; missing libraries: ${missing:-none reported}" >&2
    exit 1
fi
echo "perf_analyzer: $WRAPPER"
echo "LD_LIBRARY_PATH=$LIB (for the raw binary $BINARY)"
