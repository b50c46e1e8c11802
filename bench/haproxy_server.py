"""seqserve replicas behind a real HAProxy (Debian's `haproxy`, configured by docker/haproxy.cfg) on loopback.

Shared by tests/ops/test_proxy.py and `python -m bench.proxy`, so the tests and the bench run the shipped
config, with only its listening and server addresses replaced. HAProxy needs fixed ports, so each port is
picked free at run time (bound on port 0 first, then released) and kept across a replica's restarts.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import urlopen

from bench.prometheus_server import free_port
from seqserve.service.server.launch import ServerProcess, start_server_process

CONFIG = Path(__file__).resolve().parents[1] / "docker" / "haproxy.cfg"
INSTALL_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_haproxy.sh"
READY_TIMEOUT_S = 30.0
_BIND = re.compile(r"^(\s*bind\s+):(\d+)", re.M)
_SERVER = re.compile(r"^(\s*server\s+)(\S+)\s+\S+", re.M)
_SOCKET = re.compile(r"^(\s*stats socket\s+)(\S+)", re.M)
_MAXCONN = re.compile(r"^(\s*default-server\s.*\bmaxconn\s+)(\d+)", re.M)


class HAProxyStartError(RuntimeError):
    """HAProxy refused its config, exited, or saw no replica up in time; the message holds its output."""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (str(p) for p in (Path("/usr/sbin/haproxy"), Path("/usr/local/sbin/haproxy")) if p.exists()), None
    )


def render_config(
    replicas: list[str],
    grpc_port: int,
    stats_port: int,
    max_streams: int | None = None,
    admin_socket: Path | None = None,
    text: str | None = None,
) -> str:
    """docker/haproxy.cfg with its frontends on 127.0.0.1 (gRPC, then stats), each backend's servers at
    `replicas` (host:port), in order, the runtime API at `admin_socket`, and, given `max_streams` (the
    replicas' --max-streams), that as each server's maxconn; every other line as shipped."""
    text = CONFIG.read_text() if text is None else text
    if admin_socket is not None:
        text = _SOCKET.sub(lambda m: f"{m[1]}{admin_socket}", text)
    if max_streams is not None:
        text = _MAXCONN.sub(lambda m: f"{m[1]}{max_streams}", text)
    ports = iter((grpc_port, stats_port))
    text = _BIND.sub(lambda m: f"{m[1]}127.0.0.1:{next(ports)}", text)
    counter = iter(range(1 << 30))

    def server(match: re.Match) -> str:
        index = next(counter) % len(replicas)
        return f"{match[1]}{match[2]} {replicas[index]}"

    servers = len(_SERVER.findall(text))
    if servers % len(replicas):
        raise ValueError(f"{CONFIG} has {servers} server lines, not a multiple of {len(replicas)} replicas")
    return _SERVER.sub(server, text)


def health_check_bytes(service: str = "") -> bytes:
    """What docker/haproxy.cfg's tcp-check sends: a gRPC health check (grpc.health.v1.Health/Check for
    `service`) as raw HTTP/2, since HAProxy's HTTP checks cannot send a body that starts with NUL bytes:
    the client preface, an empty SETTINGS frame, HEADERS (HPACK, no Huffman, nothing indexed) and DATA."""

    def frame(kind: int, flags: int, payload: bytes) -> bytes:
        stream = 0 if kind == 4 else 1
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def literal(name_index: bytes, value: str) -> bytes:  # literal without indexing, short strings only
        return name_index + bytes([len(value)]) + value.encode()

    headers = (
        b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
        + literal(b"\x04", "/grpc.health.v1.Health/Check")  # :path (static name 4)
        + literal(b"\x01", "seqserve")  # :authority (static name 1): grpc refuses a request without one
        + literal(b"\x0f\x10", "application/grpc")  # content-type (static name 31)
        + literal(b"\x00\x02te", "trailers")
    )
    request = service.encode()
    message = (b"\x0a" + bytes([len(request)]) + request) if request else b""
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    return preface + frame(4, 0, b"") + frame(1, 4, headers) + frame(0, 1, body)


@dataclass
class HAProxy:
    """A running haproxy: `target` is its gRPC address, `stats()` each backend server's status."""

    process: subprocess.Popen
    target: str
    stats_url: str
    config_path: Path
    log: Path
    admin_socket: Path

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API and its answer."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(self.admin_socket))
            connection.sendall(line.encode() + b"\n")
            connection.shutdown(socket.SHUT_WR)
            return b"".join(iter(lambda: connection.recv(65536), b"")).decode()

    def set_state(self, server: str, state: str) -> None:
        """`ready`, `drain` (no new calls; open ones go on) or `maint` for `server` in every backend."""
        for backend in ("streams", "sequences"):
            answer = self.command(f"set server {backend}/{server} state {state}")
            if answer.strip():
                raise RuntimeError(f"haproxy refused 'set server {backend}/{server} state {state}': {answer}")

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's CSV stats: a row per frontend, backend and server (pxname, svname, status, scur...)."""
        with urlopen(f"{self.stats_url};csv", timeout=5) as reply:
            text = reply.read().decode().lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def server_status(self, backend: str = "streams") -> dict[str, str]:
        """{server name: UP | DOWN | MAINT | ...} for one backend."""
        return {
            row["svname"]: row["status"].split()[0]
            for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, wanted: dict[str, str], timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until each named server's status is `wanted` in every backend (health checks run every second)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = {backend: self.server_status(backend) for backend in ("streams", "sequences")}
            if all(status.get(name) == want for status in seen.values() for name, want in wanted.items()):
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise HAProxyStartError(f"wanted {wanted}, HAProxy sees {seen}:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_haproxy(replicas: list[str], workdir: Path, max_streams: int | None = None) -> HAProxy:
    """HAProxy on the shipped config in front of `replicas` (maxconn `max_streams`), once every one is UP."""
    binary = haproxy_binary()
    if binary is None:
        raise HAProxyStartError(f"haproxy is not installed: run {INSTALL_SCRIPT}")
    grpc_port, stats_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "haproxy.cfg"
    admin = workdir / "admin.sock"
    config_path.write_text(render_config(replicas, grpc_port, stats_port, max_streams, admin))
    check = subprocess.run([binary, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise HAProxyStartError(f"haproxy -c refused {config_path}:\n{check.stdout}{check.stderr}")
    log = workdir / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config_path)], stdout=out, stderr=subprocess.STDOUT
        )
    stats = f"http://127.0.0.1:{stats_port}/stats"
    proxy = HAProxy(process, f"127.0.0.1:{grpc_port}", stats, config_path, log, admin)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            names = proxy.server_status()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                proxy.stop()
                raise HAProxyStartError(f"haproxy did not serve its stats:\n{proxy.output()}") from None
            time.sleep(0.05)
    try:
        proxy.wait_status(dict.fromkeys(names, "UP"))
    except HAProxyStartError:
        proxy.stop()
        raise
    return proxy


@dataclass
class Replicas:
    """`seqserve serve` processes on fixed loopback ports (so HAProxy's config names them), restartable
    on the same port; each process's log under `workdir`."""

    repository: Path
    flags: tuple[str, ...]
    workdir: Path
    ports: list[int] = field(default_factory=list)
    processes: list[ServerProcess | None] = field(default_factory=list)
    starts: int = 0

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def start_all(self, count: int) -> Replicas:
        self.ports = [free_port() for _ in range(count)]
        self.processes = [None] * count
        for index in range(count):
            self.start(index)
        return self

    def start(self, index: int) -> ServerProcess:
        self.starts += 1
        log = self.workdir / f"replica-{index}-{self.starts}.log"
        # serve_command's own `--port 0` comes first: the last --port given wins.
        server = start_server_process(
            self.repository, "--port", str(self.ports[index]), *self.flags, log_path=log
        )
        self.processes[index] = server
        return server

    def stop_all(self) -> None:
        for server in self.processes:
            if server is not None and server.process.poll() is None:
                server.kill()
