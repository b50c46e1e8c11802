#!/usr/bin/env bash
# Installs Triton Inference Server under .tools/ (ignored by git) from the nvidia-pytriton==0.7.0 wheel, for
# the optional Triton rows of `make bench` (bench/triton_peer.py); `make test` does not need it.
#   - pytriton/tritonserver/: bin/tritonserver, backends/python (+ the Python 3.11 backend stub copied in
#     where the Python backend looks for it), caches/;
#   - nvidia_pytriton.libs/: the shared libraries tritonserver links (libtritonserver, libcudart, ...);
#   - .tools/bin/tritonserver: a wrapper that puts those libraries on LD_LIBRARY_PATH.
#   - .tools/triton-py/: numpy<2 for the backend's stub, which reads numpy 1's array layout: with numpy 2
#     every output tensor arrives empty (0 bytes) at the client. onnxruntime comes from the venv.
# Idempotent: a second run finds everything in place and only prints the result.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${SEQSERVE_TOOLS:-$ROOT/.tools}"
PYTRITON_VERSION=0.7.0
HOME_DIR="$TOOLS/pytriton"
SERVER="$HOME_DIR/pytriton/tritonserver"
WHEELS="$TOOLS/wheels"
WRAPPER="$TOOLS/bin/tritonserver"
STUB_PY="$TOOLS/triton-py"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}"

mkdir -p "$HOME_DIR" "$WHEELS" "$TOOLS/bin"

wheel=$(ls "$WHEELS"/nvidia_pytriton-"$PYTRITON_VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_35_x86_64 \
        --python-version 3.11 "nvidia-pytriton==$PYTRITON_VERSION" -d "$WHEELS" >&2
    wheel=$(ls "$WHEELS"/nvidia_pytriton-"$PYTRITON_VERSION"-*.whl | head -1)
fi
if [ ! -x "$SERVER/bin/tritonserver" ] || [ ! -d "$HOME_DIR/nvidia_pytriton.libs" ]; then
    unzip -o -q "$wheel" 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*' -d "$HOME_DIR"
    chmod +x "$SERVER/bin/tritonserver" "$SERVER"/python_backend_stubs/*/triton_python_backend_stub
fi
# pytriton copies the stub for the running Python into backends/python at start; do it once here.
cp -p "$SERVER/python_backend_stubs/3.11/triton_python_backend_stub" "$SERVER/backends/python/"

if [ ! -d "$STUB_PY/numpy" ]; then
    "$PYTHON" -m pip install --quiet --no-deps --target "$STUB_PY" "numpy<2" >&2
fi

cat >"$WRAPPER" <<WRAP
#!/usr/bin/env bash
# Written by scripts/install_triton.sh: tritonserver with the libraries of its wheel on the path.
export LD_LIBRARY_PATH="$HOME_DIR/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$SERVER/bin/tritonserver" --backend-directory "$SERVER/backends" --cache-directory "$SERVER/caches" "\$@"
WRAP
chmod +x "$WRAPPER"

usage=$("$WRAPPER" --help 2>&1 || true)  # --help exits 1
if [[ "$usage" != *--model-repository* ]]; then
    missing=$(LD_LIBRARY_PATH="$HOME_DIR/nvidia_pytriton.libs" ldd "$SERVER/bin/tritonserver" | grep 'not found' || true)
    echo "install_triton: tritonserver does not run: ${usage:0:300}; missing libraries: ${missing:-none}" >&2
    exit 1
fi
echo "tritonserver: $WRAPPER"
