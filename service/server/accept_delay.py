"""How long a new call waits to be accepted, measured, so the state store can refuse new streams past a bound.

grpc.aio hands this process every event (a call to accept, a message read, a write done) through one
completion queue, and it takes in the next new call only once the previous one has come out of that queue.
Under load the queue fills with the open streams' messages, so each new call waits behind a round of all of
them: on the 2-core development machine 4 ms with 68 streams sending as fast as they are answered, 40 ms
with 500, 75 ms with 800, and a burst of opens waits that long once per call ahead of it
(docs/operations.md, "When the server cannot keep up"). No call that waits there reaches Python until it is
accepted, so the delay is measured beside the calls: a probe call on a channel that never connects, with
wait_for_ready and a deadline of PROBE_DEADLINE_S, ends DEADLINE_EXCEEDED as its deadline passes, and that
end reaches the server through the same queue. Its lateness is the delay.

One probe at a time, every PROBE_EVERY_S (a call object and a timer: about 0.1 ms of CPU each, 20 a
second). The store (and the gauge seqserve_accept_delay_seconds) gets the least lateness of the probes that
ended in the last WINDOW_S and at least the last two, so one slow turn of the loop (a probe that waited
through it is one sample) refuses nothing and a backlog that lasts does.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import grpc
from prometheus_client import Gauge

from seqserve.service.engine import StateStore

log = logging.getLogger(__name__)

PROBE_EVERY_S = 0.05
PROBE_DEADLINE_S = 0.001
WINDOW_S = 0.5
# A unix socket under a file: connecting fails at once (ENOTDIR) and never reaches anything.
_NOWHERE = "unix:/dev/null/seqserve-accept-delay"
_PROBE = "/seqserve.AcceptDelay/Probe"


class AcceptDelay:
    """Keeps `store.accept_delay_s` current while `run` runs (the server starts it, its drain cancels it)."""

    def __init__(self, store: StateStore, gauge: Gauge | None = None) -> None:
        self.store = store
        self.gauge = gauge
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (ended at, lateness)

    def record(self, ended_at: float, lateness_s: float) -> float:
        """Add one probe's lateness; the least over the last WINDOW_S, and at least the last two probes,
        becomes the store's accept delay."""
        recent = self._recent
        recent.append((ended_at, lateness_s))
        while len(recent) > 2 and recent[0][0] < ended_at - WINDOW_S:
            recent.popleft()
        delay = self.store.accept_delay_s = min(lateness for _, lateness in recent)
        if self.gauge is not None:
            self.gauge.set(delay)
        return delay

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(_NOWHERE) as channel:
            probe = channel.unary_unary(_PROBE)
            while True:
                started = loop.time()
                try:
                    await probe(b"", timeout=PROBE_DEADLINE_S, wait_for_ready=True)
                except grpc.aio.AioRpcError:
                    pass  # DEADLINE_EXCEEDED, as every probe ends
                ended = loop.time()
                self.record(ended, max(ended - started - PROBE_DEADLINE_S, 0.0))
                await asyncio.sleep(PROBE_EVERY_S)
