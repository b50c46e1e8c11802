#!/usr/bin/env bash
# HAProxy from Debian's package (2.6 on bookworm), for tests/ops/test_proxy.py and `python -m bench.proxy`:
# seqserve replicas behind a real HTTP/2 load balancer, configured by docker/haproxy.cfg. The package's own
# service is stopped and disabled where systemd runs: the tests start their own haproxy on loopback.
# Idempotent; exits non-zero (and says why) where it cannot install, so callers can skip instead of fail.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1; then
    haproxy -v | head -n 1
    exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if ! sudo -n true 2>/dev/null; then
        echo "install_haproxy: not root and no passwordless sudo: cannot apt-get install haproxy" >&2
        exit 1
    fi
    sudo_cmd=(sudo -n)
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_haproxy: haproxy missing and no apt-get to install it" >&2
    exit 1
fi
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends haproxy >/dev/null
if command -v systemctl >/dev/null 2>&1; then
    "${sudo_cmd[@]}" systemctl disable --now haproxy >/dev/null 2>&1 || true
fi
haproxy -v | head -n 1
