"""Stream and Classify on domain types: open a stream, run its chunks in order carrying its state, end it.

Knows nothing of gRPC: the front doors (`service/frontends/`) translate messages to these calls and the
results back.
"""

from __future__ import annotations

import asyncio

import numpy as np

from seqserve.service.batcher import RowResult
from seqserve.service.caller import current_caller
from seqserve.service.config import ServerConfig
from seqserve.service.errors import Draining, LimitExceeded
from seqserve.service.repository import ModelRepository, ServedModel
from seqserve.service.sequences import SequenceTable
from seqserve.service.state import StateStore, StreamState


class InferenceEngine:
    def __init__(self, repository: ModelRepository, store: StateStore, config: ServerConfig) -> None:
        self.repository = repository
        self.store = store
        self.config = config
        # Triton-style sequences: streams of the same store, named by the client's id, one request each.
        self.sequences = SequenceTable(
            store, lambda model: store.open(model, self.idle_timeout_s(0), current_caller()), self.chunk
        )

    def idle_timeout_s(self, requested_ms: int) -> float:
        """0 asks for the server default; more than the server's maximum is clamped to it."""
        if requested_ms == 0:
            return self.config.idle_timeout_s
        return min(requested_ms / 1000.0, self.config.max_idle_timeout_s)

    def open(self, model: str, version: int, idle_timeout_ms: int) -> StreamState:
        """Open a stream for the RPC's caller (its token's name): per-token limits hold for every protocol."""
        served = self.repository.resolve(model, version)
        return self.store.open(served, self.idle_timeout_s(idle_timeout_ms), current_caller())

    async def chunk(self, stream: StreamState, x: np.ndarray) -> RowResult | None:
        """The chunk's answer, or None for a non-streamable model, which buffers until end."""
        stream.chunks += 1
        model = stream.model
        model.metrics.chunks.inc()
        model.metrics.steps.inc(x.shape[0])
        if not model.streamable:
            self._buffer(stream, x)
            return None
        result = await model.batcher.infer(x, stream.states, stream)
        stream.states = result.states
        stream.steps += x.shape[0]
        stream.last = result
        return result

    def _buffer(self, stream: StreamState, x: np.ndarray) -> None:
        # A buffered stream may hold what one Classify message could carry, no more.
        if stream.buffered_bytes + x.nbytes > self.config.max_message_bytes:
            raise LimitExceeded(
                f"model {stream.model.key} is not streamable and buffers the stream until end: "
                f"{stream.buffered_bytes + x.nbytes} bytes buffered, the limit is "
                f"{self.config.max_message_bytes}"
            )
        stream.buffered.append(x)
        stream.buffered_bytes += x.nbytes
        stream.steps += x.shape[0]

    async def end(self, stream: StreamState) -> RowResult | None:
        """The final answer (None when the stream sent no chunk); the caller closes the stream after."""
        if stream.model.streamable:
            # Many-to-many streams already had every step's answer with its chunk.
            return stream.last if stream.model.runtime.info.task == "many_to_one" else None
        if not stream.buffered:
            return None
        whole = np.concatenate(stream.buffered)
        stream.buffered = []
        return await stream.model.batcher.infer(whole, stream.model.runtime.zero_state)

    async def classify(self, model: ServedModel, sequences: list[np.ndarray]) -> list[RowResult]:
        if self.store.draining:
            raise Draining("server is shutting down and takes no new requests; retry on another replica")
        model.metrics.steps.inc(sum(x.shape[0] for x in sequences))
        zero = model.runtime.zero_state
        return list(await asyncio.gather(*(model.batcher.infer(x, zero) for x in sequences)))
