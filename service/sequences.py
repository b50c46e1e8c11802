"""Sequences: streams named by an id the client picks, sent as separate requests on any RPC.

Triton's sequence extension (`sequence_id`, `sequence_start`, `sequence_end`) drives a stateful model one
request at a time, with many sequences interleaved on one gRPC stream or spread over unary calls. The table
maps (model version, sequence id) to a stream of the one StateStore, so a sequence has the same limits,
idle timeout, metrics and drain as any other stream, and runs through the same batcher.

Order: `submit` is synchronous and chains each request behind the sequence's previous one, so requests
are answered in the order they were submitted whatever task awaits them, while requests of different
sequences run concurrently and share batcher calls. Each request runs as its own task: a caller that goes
away (a cancelled RPC) does not leave a chunk half applied. A caller that streams answers passes
`on_answer`, which that task calls with the outcome as it ends, so the caller needs no task or done
callback of its own per request (each costs the event loop another turn).

Ends: `sequence_end` frees the stream after its answer. No handler waits in a read for a sequence, so the
store's idle timer (and the drain) end an idle sequence through `StreamState.evict`, which frees it here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqserve.service.batcher import RowResult
from seqserve.service.caller import current_caller
from seqserve.service.errors import OutOfOrder
from seqserve.service.repository import ServedModel
from seqserve.service.state import IDLE_TIMEOUT, StateStore, StreamState

log = logging.getLogger(__name__)

SequenceId = int | str
# (model version, sequence id, caller): each bearer token has its own sequence ids, so one client can neither
# continue nor end another's sequence, and two clients that both pick id 1 do not collide.
SequenceKey = tuple[str, SequenceId, str | None]
# Called in the request's task as it ends: (its answer, None), or (None, the error it ended with).
OnAnswer = Callable[[Any, BaseException | None], None]
# How many ended sequences are remembered, so a late request learns why its sequence is gone.
_REMEMBERED_ENDS = 4096
_END_WORDS = {IDLE_TIMEOUT: "was ended by the idle timeout", "shutdown": "was ended by the server's shutdown"}


@dataclass(eq=False, slots=True)
class Sequence:
    key: SequenceKey
    stream: StreamState
    tail: asyncio.Future | None = None  # the latest submitted request; the next one waits for it
    pending: int = 0


class SequenceTable:
    def __init__(
        self,
        store: StateStore,
        open_stream: Callable[[ServedModel], StreamState],
        run_chunk: Callable[[StreamState, np.ndarray], Awaitable[RowResult | None]],
    ) -> None:
        self.store = store
        self._open_stream = open_stream
        self._run_chunk = run_chunk
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
        x: np.ndarray,
        on_answer: OnAnswer | None = None,
    ) -> asyncio.Future[RowResult]:
        """Queue one request of a sequence behind its previous one; refuse what is out of order at once.
        With `on_answer` the outcome goes there (the returned task then ends with None, never an error)."""
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
        elif sequence is None:
            raise OutOfOrder(self._not_open(model, sequence_id))
        if end:
            # The id is free for a new sequence at once; this one closes after its last answer.
            del self._open[key]
        sequence.pending += 1
        sequence.stream.reading = False
        task = asyncio.get_running_loop().create_task(self._run(sequence, sequence.tail, x, end, on_answer))
        if on_answer is None:
            task.add_done_callback(_retrieve)  # the caller may be gone; its error is logged, not lost
        sequence.tail = task
        return task

    def _start(self, model: ServedModel, key: SequenceKey) -> Sequence:
        stream = self._open_stream(model)
        stream.task = None  # no handler reads for it: the idle timer and the drain call evict instead
        sequence = Sequence(key, stream)
        stream.evict = lambda _stream, reason: self._evict(sequence, reason)
        stream.reading = True
        self._open[key] = sequence
        self._ended.pop(key, None)
        return sequence

    async def _run(
        self,
        sequence: Sequence,
        previous: asyncio.Future | None,
        x: np.ndarray,
        end: bool,
        on_answer: OnAnswer | None,
    ) -> RowResult | None:
        stream = sequence.stream
        try:
            if previous is not None and not previous.done():  # asyncio.wait costs a set and callbacks
                await asyncio.wait([previous])
            result = await self._run_chunk(stream, x)
        except asyncio.CancelledError as error:  # the caller still learns that the request is over
            if on_answer is not None:
                on_answer(None, error)
            raise
        except Exception as error:
            if on_answer is None:
                raise
            on_answer(None, error)
            return None
        else:
            if on_answer is not None:
                on_answer(result, None)
            return result
        finally:
            sequence.pending -= 1
            if end:
                self.store.close(stream, "completed")
            elif sequence.pending == 0 and not stream.closed:
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
        reason = self._ended.get((model.key, sequence_id, current_caller()))
        if reason is not None:
            return (
                f"sequence {sequence_id!r} of model {model.key} {_END_WORDS.get(reason, reason)}; "
                "start it again with sequence_start"
            )
        return (
            f"sequence {sequence_id!r} of model {model.key} is not open: it was never started or has "
            "ended; its first request must carry sequence_start"
        )


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("sequence request failed: %s", task.exception())
