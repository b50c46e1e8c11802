"""Run a server beside the caller: on a background event loop (tests, the demo), or as a
`seqserve serve` subprocess whose listening line is parsed (benchmarks, ops tests, SIGTERM tests).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from seqserve.service.config import ServerConfig
from seqserve.service.server.grpc_server import RunningServer, start_server

T = TypeVar("T")
LISTENING = re.compile(r"^seqserve listening grpc=(?P<grpc>\S+) metrics=(?P<metrics>\S+)$")


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """One event loop on a daemon thread for the whole process: grpc.aio keeps process-wide state bound
    to the loop it first ran on, so servers and clients started from synchronous code all share this one."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="seqserve-loop", daemon=True).start()
    return _loop


def run_on_loop(coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run a coroutine on the background loop from synchronous code and return its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, background_loop()).result(timeout_s)


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


@dataclass
class ServerProcess:
    process: subprocess.Popen
    target: str
    metrics_target: str | None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for the drain, return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def start_server_process(repository: Path, *flags: str, timeout_s: float = 60.0) -> ServerProcess:
    """`seqserve serve --repository REPO --port 0 --metrics-port 0 FLAGS...`, once it prints its line."""
    command = [sys.executable, "-m", "seqserve.cli", "serve", "--repository", str(repository), "--port", "0"]
    if "--metrics-port" not in flags:
        command += ["--metrics-port", "0"]
    process = subprocess.Popen(
        [*command, *flags], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    try:
        line = process.stdout.readline().strip()
    finally:
        timer.cancel()
    match = LISTENING.match(line)
    if match is None:
        process.kill()
        raise RuntimeError(f"seqserve serve exited with {process.wait()} before serving; first line {line!r}")
    metrics = match["metrics"]
    return ServerProcess(process, match["grpc"], None if metrics == "off" else metrics)
