"""What a server process costs, read from /proc by its pid: CPU time (of its whole tree, or by thread
group) and resident memory. Each server runs as its own process (seqserve.service.server.launch), so the
bench reads its costs without touching it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

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


def cpu_clock(pid: int) -> Callable[[], float]:
    """process_tree_cpu_seconds of `pid` as a clock, for the measurements that read one before and after."""
    return partial(process_tree_cpu_seconds, pid)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """A process's CPU time so far by thread group: the main thread (the event loop), then threads by their
    name (`python` for Python's own threads: the inference executor and grpc's poller; grpc's C threads)."""
    groups: dict[str, float] = {}
    for task in _live_tasks(pid):
        if (stat := _read_live(task / "stat")) is None:
            continue
        name = "main" if task.name == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
        groups[name] = groups.get(name, 0.0) + _stat_cpu_seconds(stat)
    return groups


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")
