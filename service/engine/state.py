"""The stream state store: which streams are open, the recurrent state rows each owns, and their ends.

Each stream starts from its model's shared zero rows and owns the rows the batcher hands back after each
chunk. A stream is freed exactly once (`close`), whatever ended it: the client's end, a cancel or
disconnect, a bad message, the idle timeout or shutdown. The server ends a stream itself (`interrupt`)
only while the stream's handler is waiting for the client, so a chunk in flight always completes first.
A stream that no handler reads for (a sequence, `sequences.py`) is idle between its requests; its owner
gives it an `evict` callback, which the store calls instead of cancelling a handler.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Gauge

from seqserve.service.engine.checkpoints import IssuedCheckpoint
from seqserve.service.engine.errors import AtCapacity, Draining
from seqserve.service.engine.kind import RowAnswer
from seqserve.service.engine.repository import ServedModel

log = logging.getLogger(__name__)

IDLE_TIMEOUT = "idle_timeout"
SHUTDOWN = "shutdown"
# The retry hint of a stream refused for want of room (gRPC's grpc-retry-pushback-ms): the accept delay is
# judged over windows of about this length (service/server/accept_delay.py), so a retry sooner meets the same
# verdict here; through a proxy it goes to the next replica after the same wait.
RETRY_AFTER_MS = 500


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What the client asked of its stream; a checkpoint carries them, so a resume keeps them."""

    include_scores: bool = False
    final_only: bool = False  # answer only at end
    idle_timeout_ms: int = 0  # 0: the server default
    checkpoint_every_chunks: int = 0  # 0: never


DEFAULT_OPTIONS = StreamOptions()


@dataclass(eq=False, slots=True)  # slots: thousands of idle streams each hold one
class StreamState:
    id: str
    model: ServedModel
    caller: str | None  # the bearer token's name (service/engine/caller.py), None without tokens
    idle_timeout_s: float
    task: asyncio.Task | None
    states: tuple[np.ndarray, ...]
    steps: int = 0
    chunks: int = 0
    # Non-streamable (bidirectional) models: chunks kept until end.
    buffered: list[np.ndarray] = field(default_factory=list)
    buffered_bytes: int = 0
    # The answer to the latest chunk: a many-to-one stream's final label at end.
    last: RowAnswer | None = None
    # Set while the handler awaits the client's next message; idle time counts from last_seen.
    reading: bool = False
    last_seen: float = 0.0
    # Why the server ended the stream (IDLE_TIMEOUT or SHUTDOWN), set by `interrupt`.
    interrupted: str | None = None
    closed: bool = False
    timer: asyncio.TimerHandle | None = None
    # Set by an owner that no task reads for: ends the idle stream (stream, reason) when interrupted.
    evict: Callable[[StreamState, str], None] | None = None
    options: StreamOptions = DEFAULT_OPTIONS
    # The checkpoint issued with the latest chunk's answer (None when none was due).
    checkpoint: IssuedCheckpoint | None = None
    # A declared graph's per-stream constants (Declaration.constant_key): calls never mix two keys.
    key: tuple = ()
    # Per stream input, the items carried into the next chunk (None: the graph takes no context).
    carry: list[np.ndarray | None] | None = None


class StateStore:
    def __init__(
        self,
        max_streams: int,
        id_prefix: str = "",
        max_streams_per_caller: int = 0,
        caller_streams: Gauge | None = None,
        max_accept_delay_s: float = 0.0,
    ) -> None:
        self.max_streams = max_streams
        # Past this accept delay new streams are refused (0: never). The server's wiring measures the delay
        # and keeps `accept_delay_s` current; the store only compares.
        self.max_accept_delay_s = max_accept_delay_s
        self.accept_delay_s = 0.0
        self.id_prefix = id_prefix  # tells the workers of `--workers N` apart in stream ids
        # A token's own bound, so one client cannot take every slot; 0: none. Counted per caller name.
        self.max_streams_per_caller = max_streams_per_caller
        self._caller_streams = caller_streams
        self._per_caller: collections.Counter[str] = collections.Counter()
        self._streams: dict[str, StreamState] = {}
        self._ids = itertools.count(1)
        self._draining = False
        self._empty = asyncio.Event()
        self._empty.set()
        self.state_bytes = 0

    @property
    def open_count(self) -> int:
        return len(self._streams)

    def open(self, model: ServedModel, idle_timeout_s: float, caller: str | None = None) -> StreamState:
        if self._draining:
            raise Draining("server is shutting down and opens no new streams; retry on another replica")
        self._admit(caller)
        loop = asyncio.get_running_loop()
        stream = StreamState(
            id=f"{self.id_prefix}s{next(self._ids)}",
            model=model,
            caller=caller,
            idle_timeout_s=idle_timeout_s,
            task=asyncio.current_task(),
            states=model.runtime.zero_state,
            last_seen=loop.time(),
        )
        if model.runtime.zero_carry is not None:
            stream.carry = list(model.runtime.zero_carry)
        stream.key = model.default_key
        stream.timer = loop.call_later(idle_timeout_s, self._check_idle, stream)
        self._streams[stream.id] = stream
        self._empty.clear()
        self._count_caller(caller, 1)
        nbytes = model.runtime.state_nbytes if model.streamable else 0
        self.state_bytes += nbytes
        model.open_streams += 1
        model.metrics.streams_active.inc()
        model.metrics.state_bytes.inc(nbytes)
        return stream

    def _admit(self, caller: str | None) -> None:
        """Refuse a new stream past a bound (AtCapacity, with the retry hint); return if it may open."""
        if len(self._streams) >= self.max_streams:
            raise AtCapacity(
                f"too many open streams: {len(self._streams)} open, the server's limit is "
                f"{self.max_streams} (--max-streams); retry on another replica, or here once streams end",
                RETRY_AFTER_MS,
            )
        if self.max_accept_delay_s and self.accept_delay_s > self.max_accept_delay_s:
            raise AtCapacity(
                f"server at capacity: new calls wait at least {self.accept_delay_s * 1000:.0f} ms to be "
                f"accepted, over the server's limit of {self.max_accept_delay_s * 1000:g} ms "
                f"(--max-accept-delay-ms); retry on another replica, or here in {RETRY_AFTER_MS} ms",
                RETRY_AFTER_MS,
            )
        limit = self.max_streams_per_caller
        if caller is not None and limit and self._per_caller[caller] >= limit:
            raise AtCapacity(
                f"too many open streams for token {caller!r}: {self._per_caller[caller]} open, the limit per "
                f"token is {limit} (--max-streams-per-token)",
                RETRY_AFTER_MS,
            )

    def close(self, stream: StreamState, reason: str) -> None:
        """Free the stream's state and count why it ended; a second call does nothing."""
        if stream.closed:
            return
        stream.closed = True
        if stream.timer is not None:
            stream.timer.cancel()
        del self._streams[stream.id]
        self._count_caller(stream.caller, -1)
        model = stream.model
        nbytes = model.runtime.state_nbytes if model.streamable else 0
        self.state_bytes -= nbytes
        model.open_streams -= 1
        model.metrics.streams_active.dec()
        model.metrics.state_bytes.dec(nbytes)
        model.metrics.streams_ended[reason].inc()
        if reason in model.metrics.evictions:
            model.metrics.evictions[reason].inc()
        model.batcher.forget(stream)
        stream.states = ()
        stream.buffered = []
        if not self._streams:
            self._empty.set()
        log.debug("stream %s on %s ended: %s after %d steps", stream.id, model.key, reason, stream.steps)

    def _count_caller(self, caller: str | None, change: int) -> None:
        if caller is None:
            return
        self._per_caller[caller] += change
        if self._caller_streams is not None:
            self._caller_streams.labels(caller).inc(change)

    def caller_count(self, caller: str) -> int:
        return self._per_caller[caller]

    def interrupt(self, stream: StreamState, reason: str) -> None:
        """End a stream from the server side: at once if it waits for the client, else at its next read."""
        stream.interrupted = reason
        if not stream.reading:
            return
        if stream.evict is not None:
            stream.evict(stream, reason)
        elif stream.task is not None:
            stream.task.cancel()

    def _check_idle(self, stream: StreamState) -> None:
        # One timer per stream, moved only when it fires: a chunk costs no timer work.
        if stream.closed:
            return
        loop = asyncio.get_running_loop()
        deadline = stream.last_seen + stream.idle_timeout_s
        if stream.reading and loop.time() >= deadline:
            log.debug(
                "stream %s on %s idle for %.3f s: ending it",
                stream.id,
                stream.model.key,
                stream.idle_timeout_s,
            )
            self.interrupt(stream, IDLE_TIMEOUT)
        elif stream.reading:
            stream.timer = loop.call_at(deadline, self._check_idle, stream)
        else:
            stream.timer = loop.call_later(stream.idle_timeout_s, self._check_idle, stream)

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        self._draining = True

    def interrupt_all(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            self.interrupt(stream, reason)

    async def wait_empty(self, timeout_s: float) -> bool:
        """True when every stream has ended within the timeout."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
