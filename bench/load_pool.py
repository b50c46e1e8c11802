"""The load generator: a few client processes (started once, reused by every scenario) and their sum.

One Python process cannot outrun a Python server, so the streams of a scenario are split across
`processes` spawned workers, each running `load_client.run_share` on its own event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bench.load_client import ClientTally, LoadSpec, run_share

# Time for every worker to receive its share before the scenario starts.
_START_LEAD_S = 0.3


@dataclass
class LoadResult:
    """What the clients measured in one scenario; rates are over the measuring window."""

    mode: str
    streams: int
    chunk: int
    processes: int
    seconds: float
    messages: int  # answered chunks (or Classify calls) sent inside the window
    steps: int  # new time steps those messages carried: messages * chunk (resend: one per call)
    msgs_per_s: float
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    sent_steps: int  # over the whole run, warm-up included (resend: every resent step)
    server_steps: int  # steps the server reported in its StreamEnded messages (0 for resend)
    client_cpu_us_per_msg: float  # the load generator's own cost, all its processes


def _worker(conn: Connection) -> None:
    while (job := conn.recv()) is not None:
        spec, streams, start_at = job
        try:
            conn.send(asyncio.run(run_share(spec, streams, start_at, conn)))
        except Exception:  # the parent re-raises it with the worker's traceback
            conn.send(("error", traceback.format_exc()))


def _shares(streams: int, processes: int) -> list[int]:
    base, extra = divmod(streams, processes)
    return [share for share in (base + (i < extra) for i in range(processes)) if share]


def _receive(conn: Connection) -> Any:
    message = conn.recv()
    if isinstance(message, tuple) and message[0] == "error":
        raise RuntimeError(f"load worker failed:\n{message[1]}")
    return message


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


class LoadPool:
    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")  # grpc does not survive fork
        self.processes = processes
        self._conns: list[Connection] = []
        self._workers = []
        for _ in range(processes):
            parent, child = context.Pipe()
            worker = context.Process(target=_worker, args=(child,), daemon=True)
            worker.start()
            self._conns.append(parent)
            self._workers.append(worker)
        self._busy: list[Connection] = []

    def _start(self, spec: LoadSpec) -> float:
        start_at = time.monotonic() + _START_LEAD_S
        shares = _shares(spec.streams, self.processes)
        self._busy = self._conns[: len(shares)]
        for conn, share in zip(self._busy, shares, strict=True):
            conn.send((spec, share, start_at))
        return start_at

    def _collect(self) -> list[ClientTally]:
        return [_receive(conn) for conn in self._busy]

    def run(self, spec: LoadSpec, probe: Callable[[], Any] | None = None) -> tuple[LoadResult, Any, Any]:
        """Run a stream or resend scenario; `probe` is called as the window opens and as it closes."""
        start_at = self._start(spec)
        before = after = None
        if probe is not None:
            _sleep_until(start_at + spec.warmup_s)
            before = probe()
            _sleep_until(start_at + spec.warmup_s + spec.duration_s)
            after = probe()
        return _combine(spec, self._collect(), len(self._busy)), before, after

    def open_idle(self, spec: LoadSpec) -> int:
        """Open the idle scenario's streams and return how many are open; `close_idle` ends them."""
        self._start(spec)
        return sum(_receive(conn)[1] for conn in self._busy)

    def close_idle(self) -> list[ClientTally]:
        for conn in self._busy:
            conn.send("close")
        return self._collect()

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for worker in self._workers:
            worker.join(timeout=10)


def _combine(spec: LoadSpec, tallies: list[ClientTally], processes: int) -> LoadResult:
    latencies = np.concatenate([tally.latencies for tally in tallies])
    messages = len(latencies)
    steps = messages * (1 if spec.mode == "resend" else spec.chunk)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3 if messages else (0.0, 0.0)
    return LoadResult(
        mode=spec.mode,
        streams=spec.streams,
        chunk=1 if spec.mode == "resend" else spec.chunk,
        processes=processes,
        seconds=spec.duration_s,
        messages=messages,
        steps=steps,
        msgs_per_s=messages / spec.duration_s,
        steps_per_s=steps / spec.duration_s,
        p50_ms=float(p50),
        p99_ms=float(p99),
        sent_steps=sum(tally.sent_steps for tally in tallies),
        server_steps=sum(tally.server_steps for tally in tallies),
        client_cpu_us_per_msg=sum(tally.cpu_s for tally in tallies) / messages * 1e6 if messages else 0.0,
    )
