"""Run a server beside the caller: in this process on a background event loop (`ServerThread`: service
tests), or as a subprocess found by the listening line it prints once serving (`ServerProcess`: the bench
and its baselines, the demo, the SIGTERM, worker and failover tests, the images' entrypoints).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self, TypeVar

# The client's background loop: servers started here and sync clients share it (grpc.aio binds to one loop).
from seqserve.service.client.loop import background_loop, run_on_loop  # noqa: F401 (re-exported)
from seqserve.service.config import ServerConfig
from seqserve.service.server.grpc_server import RunningServer, start_server

logger = logging.getLogger(__name__)
T = TypeVar("T")
# A whole line (its newline written too): `seqserve listening grpc=HOST:PORT metrics=HOST:PORT|off` from
# `seqserve serve` (grpc_server.listening_line), `bench-echo listening grpc=HOST:PORT` from a bench baseline.
LISTENING = re.compile(r"^(?P<server>\S+) listening grpc=(?P<grpc>\S+)(?: metrics=(?P<metrics>\S+))?\n", re.M)


class ServerThread:
    """A server on the background loop; `with ServerThread(config) as server:` drains it on exit."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.running: RunningServer | None = None

    def start(self) -> ServerThread:
        self.running = run_on_loop(start_server(self.config))
        return self

    @property
    def target(self) -> str:
        return self.running.grpc_address

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine (a client, a look at the server's state) on the server's loop."""
        return run_on_loop(coroutine, timeout_s)

    def stop(self) -> None:
        """Drain as SIGTERM would."""
        if self.running is not None:
            run_on_loop(self.running.drain())
            self.running = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerStartError(RuntimeError):
    """The server exited, or stayed silent past the timeout, instead of printing its listening line."""


@dataclass
class ServerProcess:
    """A server subprocess and the addresses of its listening line. Its stdout and stderr go to one file,
    `log_path` or an unnamed temporary one, that `output()` reads; `start` is the way to make one."""

    process: subprocess.Popen
    env: dict[str, str]
    log_path: Path | None
    log: IO[bytes] = field(repr=False)
    target: str = ""
    metrics_target: str | None = None  # None where the server has no metrics endpoint (`metrics=off`)
    _final_output: str = field(default="", repr=False)

    @classmethod
    def start(
        cls,
        command: list[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        timeout_s: float = 60.0,
    ) -> Self:
        """Run `command` with `env` (the whole environment; by default this process's, unbuffered) and
        return once it prints its listening line; kill it and raise ServerStartError if it exits first or
        stays silent for `timeout_s`."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"} if env is None else dict(env)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("w+b") if log_path is not None else tempfile.TemporaryFile()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = cls(process, env, log_path, log)
        try:
            server._wait_for_listening(timeout_s)
        except ServerStartError:
            server.kill()
            raise
        return server

    def _wait_for_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (match := LISTENING.search(self.output())) is None:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self._name()} exited with {self.process.returncode} before listening:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self._name()} printed no listening line within {timeout_s:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.05)
        self.target = match["grpc"]
        self.metrics_target = None if match["metrics"] in (None, "off") else match["metrics"]

    def _name(self) -> str:
        where = f" (log {self.log_path})" if self.log_path is not None else ""
        return f"`{shlex.join(self.process.args)}`{where}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.metrics_target}/metrics" if self.metrics_target is not None else None

    def output(self) -> str:
        """All the server has written to stdout and stderr so far."""
        if self.log.closed:
            return self._final_output
        # pread: the server writes at the file offset this descriptor shares with it, so leave it alone.
        size = os.fstat(self.log.fileno()).st_size
        return os.pread(self.log.fileno(), size, 0).decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "".join(self.output().splitlines(keepends=True)[-lines:])

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for the drain, return the exit code; past `timeout_s`, SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self._ended(self.process.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM for %.0f s; killing it", self._name(), timeout_s)
            return self.kill()

    def kill(self) -> int:
        """SIGKILL (where it still runs) and the exit code."""
        self.process.kill()
        return self._ended(self.process.wait())

    def _ended(self, code: int) -> int:
        if not self.log.closed:
            self._final_output = self.output()
            self.log.close()
        return code


def serve_command(repository: Path, *flags: str) -> list[str]:
    """`seqserve serve --repository REPO --port 0 --metrics-port 0 FLAGS...` (or FLAGS' metrics port)."""
    command = [sys.executable, "-m", "seqserve.cli", "serve", "--repository", str(repository), "--port", "0"]
    if "--metrics-port" not in flags:
        command += ["--metrics-port", "0"]
    return [*command, *flags]


def start_server_process(
    repository: Path, *flags: str, log_path: Path | None = None, timeout_s: float = 60.0
) -> ServerProcess:
    """`seqserve serve` on `repository` (see serve_command), once it listens."""
    return ServerProcess.start(serve_command(repository, *flags), log_path=log_path, timeout_s=timeout_s)


@contextlib.contextmanager
def running_server(
    command: list[str],
    log_path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    start_timeout_s: float = 120.0,
    stop_timeout_s: float = 7.0,
) -> Iterator[ServerProcess]:
    """`with running_server(command, log_path) as server:` started as ServerProcess.start, SIGTERMed on exit
    (and killed if still there `stop_timeout_s` later)."""
    server = ServerProcess.start(command, env=env, log_path=log_path, timeout_s=start_timeout_s)
    try:
        yield server
    finally:
        server.terminate(stop_timeout_s)
