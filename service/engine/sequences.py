"""Sequences: streams named by an id the client picks, sent as separate requests on any RPC.

Triton's sequence extension (`sequence_id`, `sequence_start`, `sequence_end`) drives a stateful model one
request at a time, with many sequences interleaved on one gRPC stream or spread over unary calls. The table
maps (model version, sequence id) to a stream of the one StateStore, so a sequence has the same limits,
idle timeout, metrics and drain as any other stream, and runs through the same batcher.

Order: `submit` is synchronous. A sequence with no request in the batcher queues the new one's row at once;
otherwise the request waits in the sequence's own queue and goes to the batcher when the one before it is
answered. So requests are answered in the order they were submitted, while requests of different sequences
run concurrently and share batcher calls.

No task per request: the row's answer is taken in a done callback of its batcher future, which applies it
to the stream and hands the outcome to the caller's `on_answer` (a task, and the coroutine layers it
resumes, cost the event loop two more turns per request). A request runs to its end whatever its caller
does, so a caller that goes away (a cancelled RPC) never leaves a chunk half applied.

Ends: `sequence_end` frees the stream after its answer. No handler waits in a read for a sequence, so the
store's idle timer (and the drain) end an idle sequence through `StreamState.evict`, which frees it here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seqserve.service.engine.caller import current_caller
from seqserve.service.engine.errors import OutOfOrder
from seqserve.service.engine.kind import RowAnswer
from seqserve.service.engine.layout import Chunk, chunk_steps
from seqserve.service.engine.repository import ServedModel
from seqserve.service.engine.state import IDLE_TIMEOUT, StateStore, StreamState

log = logging.getLogger(__name__)

SequenceId = int | str
# (model version, sequence id, caller): each bearer token has its own sequence ids, so one client can neither
# continue nor end another's sequence, and two clients that both pick id 1 do not collide.
SequenceKey = tuple[str, SequenceId, str | None]
# Called on the event loop as the request ends: (its answer, None), or (None, the error it ended with).
OnAnswer = Callable[[Any, BaseException | None], None]
# How many ended sequences are remembered, so a late request learns why its sequence is gone.
_REMEMBERED_ENDS = 4096
_END_WORDS = {IDLE_TIMEOUT: "was ended by the idle timeout", "shutdown": "was ended by the server's shutdown"}


@dataclass(eq=False, slots=True)
class _Request:
    x: Chunk
    end: bool
    on_answer: OnAnswer


@dataclass(eq=False, slots=True)
class Sequence:
    key: SequenceKey
    stream: StreamState
    running: bool = False  # one of its requests is in the batcher
    waiting: deque[_Request] | None = None  # the requests behind it, in order (made when first needed)


class SequenceTable:
    def __init__(
        self,
        store: StateStore,
        open_stream: Callable[[ServedModel], StreamState],
        start_chunk: Callable[[StreamState, Chunk], asyncio.Future[RowAnswer] | None],
        finish_chunk: Callable[[StreamState, int, RowAnswer], RowAnswer],
    ) -> None:
        self.store = store
        self._open_stream = open_stream
        self._start_chunk = start_chunk
        self._finish_chunk = finish_chunk
        self._open: dict[SequenceKey, Sequence] = {}
        self._ended: OrderedDict[SequenceKey, str] = OrderedDict()

    @property
    def open_count(self) -> int:
        return len(self._open)

    def submit(
        self,
        model: ServedModel,
        sequence_id: SequenceId,
        start: bool,
        end: bool,
        x: Chunk,
        on_answer: OnAnswer,
        on_open: Callable[[StreamState], None] | None = None,
    ) -> None:
        """Queue one request of a sequence behind its previous one, its outcome to `on_answer`; refuse what
        is out of order at once (raises). `on_open` prepares a new sequence's stream before its first row
        (a forecaster's calendar phase); it must not raise: check what it takes before calling."""
        if not model.streamable:
            raise OutOfOrder(
                f"model {model.key} is bidirectional and cannot run a sequence chunk by chunk; send the "
                "whole sequence in one request without sequence_id"
            )
        key = (model.key, sequence_id, current_caller())
        sequence = self._open.get(key)
        if start:
            if sequence is not None:
                raise OutOfOrder(
                    f"sequence_start for sequence {sequence_id!r} of model {model.key}, which is already "
                    f"open ({sequence.stream.steps} steps so far); end it with sequence_end first"
                )
            sequence = self._start(model, key)
            if on_open is not None:
                on_open(sequence.stream)
        elif sequence is None:
            raise OutOfOrder(self._not_open(model, sequence_id))
        if end:
            # The id is free for a new sequence at once; this one closes after its last answer.
            del self._open[key]
        request = _Request(x, end, on_answer)
        if sequence.running:
            if sequence.waiting is None:
                sequence.waiting = deque()
            sequence.waiting.append(request)
            return
        sequence.stream.reading = False
        self._run(sequence, request)

    def _start(self, model: ServedModel, key: SequenceKey) -> Sequence:
        stream = self._open_stream(model)
        stream.task = None  # no handler reads for it: the idle timer and the drain call evict instead
        sequence = Sequence(key, stream)
        stream.evict = lambda _stream, reason: self._evict(sequence, reason)
        stream.reading = True
        self._open[key] = sequence
        self._ended.pop(key, None)
        return sequence

    def _run(self, sequence: Sequence, request: _Request) -> None:
        sequence.running = True
        try:
            row = self._start_chunk(sequence.stream, request.x)
        except Exception as error:  # noqa: BLE001 - the request's own outcome, as from the batcher
            self._answered(sequence, request, None, error)
            return
        row.add_done_callback(functools.partial(self._row_done, sequence, request))

    def _row_done(self, sequence: Sequence, request: _Request, row: asyncio.Future[RowAnswer]) -> None:
        result, error = outcome(row)
        if error is None:
            try:
                result = self._finish_chunk(sequence.stream, chunk_steps(request.x), result)
            except Exception as failed:  # noqa: BLE001 - this request's outcome, the sequence goes on
                result, error = None, failed
        self._answered(sequence, request, result, error)

    def _answered(
        self, sequence: Sequence, request: _Request, result: RowAnswer | None, error: BaseException | None
    ) -> None:
        """Tell the caller, then run the sequence's next request or mark it idle; the bookkeeping runs
        whatever the caller's callback does, so a sequence is never left stuck."""
        stream = sequence.stream
        try:
            request.on_answer(result, error)
        finally:
            if request.end:
                self.store.close(stream, "completed")
            elif sequence.waiting:
                self._run(sequence, sequence.waiting.popleft())
            else:
                sequence.running = False
                if not stream.closed:
                    stream.last_seen = asyncio.get_running_loop().time()
                    stream.reading = True
                    if stream.interrupted is not None:  # the drain asked while a request ran
                        self._evict(sequence, stream.interrupted)

    def _evict(self, sequence: Sequence, reason: str) -> None:
        if self._open.get(sequence.key) is sequence:
            del self._open[sequence.key]
            self._ended[sequence.key] = reason
            while len(self._ended) > _REMEMBERED_ENDS:
                self._ended.popitem(last=False)
        log.debug("sequence %r on %s ended: %s", sequence.key[1], sequence.key[0], reason)
        self.store.close(sequence.stream, reason)

    def _not_open(self, model: ServedModel, sequence_id: SequenceId) -> str:
        """Why a request of a sequence this replica does not hold is refused, naming the replica: behind a
        load balancer the usual cause is a request sent to another replica than its sequence's start."""
        reason = self._ended.get((model.key, sequence_id, current_caller()))
        if reason is not None:
            return (
                f"sequence {sequence_id!r} of model {model.key} {_END_WORDS.get(reason, reason)} on "
                f"replica {self.replica()}; start it again with sequence_start"
            )
        return (
            f"sequence {sequence_id!r} of model {model.key} is not open on replica {self.replica()}: it "
            "was never started here or has ended; its first request must carry sequence_start, and behind "
            "a load balancer every request of a sequence must reach the same replica (the "
            "seqserve-sequence header, docs/operations.md)"
        )

    def replica(self) -> str:
        """This server process as a replica: host name (a Kubernetes pod's name), process id, and the
        worker's stream id prefix under --workers."""
        worker = f" worker {self.store.id_prefix.rstrip('-')}" if self.store.id_prefix else ""
        return f"{socket.gethostname()} pid {os.getpid()}{worker}"


def outcome(done: asyncio.Future) -> tuple[Any, BaseException | None]:
    """A finished future as (its result, None) or (None, the error it ended with, CancelledError too)."""
    if done.cancelled():
        return None, asyncio.CancelledError()
    error = done.exception()
    return (None, error) if error is not None else (done.result(), None)
