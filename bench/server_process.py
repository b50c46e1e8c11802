"""A server under test as a subprocess: start it, find its address, read its CPU time and RSS, stop it.

Every server (seqserve and the baselines) prints `... listening grpc=HOST:PORT [metrics=HOST:PORT]` once it
serves. Running each as its own process lets the bench read its costs from /proc without touching it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"listening grpc=(\S+)(?: metrics=(\S+))?")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu_seconds(stat: str) -> float:
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the line.
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / _CLOCK_TICKS


def _read_live(path: Path) -> str | None:
    """A /proc file of a process or thread, or None when it has ended meanwhile: before the open
    (FileNotFoundError) or between the open and the read (ESRCH, ProcessLookupError)."""
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _live_tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return []


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (workers, a backend's stub)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        if (stat := _read_live(Path(f"/proc/{current}/stat"))) is None:
            continue
        total += _stat_cpu_seconds(stat)
        for task in _live_tasks(current):
            pending.extend(int(child) for child in (_read_live(task / "children") or "").split())
    return total


class ServerStartError(RuntimeError):
    """The server exited or stayed silent instead of printing its listening line."""


@dataclass
class ServerProcess:
    process: subprocess.Popen
    target: str
    metrics_url: str | None
    log_path: Path

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process (all its threads, and its workers) so far."""
        return process_tree_cpu_seconds(self.process.pid)

    def thread_cpu_seconds(self) -> dict[str, float]:
        """CPU time so far by thread group: the main thread (the event loop), then threads by their name
        (`python` for Python's own threads: the inference executor and grpc's poller; grpc's C threads)."""
        pid = self.process.pid
        groups: dict[str, float] = {}
        for task in _live_tasks(pid):
            if (stat := _read_live(task / "stat")) is None:
                continue
            name = "main" if task.name == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
            groups[name] = groups.get(name, 0.0) + _stat_cpu_seconds(stat)
        return groups

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"/proc/{self.process.pid}/status has no VmRSS line")


def _wait_for_address(process: subprocess.Popen, log_path: Path, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            raise ServerStartError(
                f"server exited with code {process.returncode} before listening; log {log_path}:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        time.sleep(0.05)
    raise ServerStartError(f"server printed no listening line within {timeout_s:.0f} s; see {log_path}")


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s + 5)
    except subprocess.TimeoutExpired:
        logger.warning("server pid %d ignored SIGTERM for %.0f s; killing it", process.pid, grace_s + 5)
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(
    command: list[str], log_path: Path, grace_s: float = 2.0, start_timeout_s: float = 120.0
) -> Iterator[ServerProcess]:
    """Start `command`, yield once it listens, SIGTERM it on exit. Its stdout and stderr go to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        match = _wait_for_address(process, log_path, start_timeout_s)
        metrics = match.group(2)
        yield ServerProcess(
            process, match.group(1), f"http://{metrics}/metrics" if metrics else None, log_path
        )
    finally:
        _stop(process, grace_s)
