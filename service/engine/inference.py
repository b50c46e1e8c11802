"""Stream and Classify on domain types: open a stream, run its chunks in order carrying its state, end it.

Checkpoints live here too, so every protocol has them: a stream asked for them gets a signed token
(`checkpoints.py`) with every Nth chunk's answer and one when the server ends it (drain, idle timeout);
`open(resume_token=...)` continues a stream from a verified token, on any replica holding the key.

Knows nothing of gRPC: the front doors (`service/frontends/`) translate messages to these calls and the
results back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from seqserve.declaration import hashable
from seqserve.service.config import ServerConfig
from seqserve.service.engine import checkpoints
from seqserve.service.engine.caller import current_caller
from seqserve.service.engine.checkpoints import IssuedCheckpoint, StateKeys, StreamSnapshot
from seqserve.service.engine.errors import (
    BadResumeToken,
    Draining,
    InvalidChunk,
    LimitExceeded,
    ModelNotFound,
    NoStateKey,
    WrongTask,
)
from seqserve.service.engine.kind import RowAnswer
from seqserve.service.engine.layout import Chunk, chunk_steps
from seqserve.service.engine.metrics import ServiceMetrics
from seqserve.service.engine.repository import ModelRepository, ServedModel
from seqserve.service.engine.sequences import SequenceTable
from seqserve.service.engine.state import DEFAULT_OPTIONS, StateStore, StreamOptions, StreamState

_HOW_TO_KEY = (
    f"start the server with --state-key-file FILE or ${checkpoints.KEYS_ENV} (one key per line: current, "
    "then previous; make one with `openssl rand -hex 32`)"
)


class InferenceEngine:
    def __init__(
        self,
        repository: ModelRepository,
        store: StateStore,
        config: ServerConfig,
        keys: StateKeys | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.store = store
        self.config = config
        # Triton-style sequences: streams of the same store, named by the client's id, one request each.
        self.sequences = SequenceTable(
            store,
            lambda model: store.open(model, self.idle_timeout_s(0), current_caller()),
            self.start_chunk,
            self.finish_chunk,
        )
        self.keys = keys
        self.metrics = metrics
        # Streams the server ended (SHUTDOWN, IDLE_TIMEOUT) with a checkpoint, by reason.
        self.final_checkpoints: Counter[str] = Counter()

    def idle_timeout_s(self, requested_ms: int) -> float:
        """0 asks for the server default; more than the server's maximum is clamped to it."""
        if requested_ms == 0:
            return self.config.idle_timeout_s
        return min(requested_ms / 1000.0, self.config.max_idle_timeout_s)

    def open(
        self,
        model: str,
        version: int,
        idle_timeout_ms: int,
        options: StreamOptions = DEFAULT_OPTIONS,
        resume_token: bytes = b"",
        constants: dict[str, Any] | None = None,
    ) -> StreamState:
        """A new stream for the RPC's caller (its token's name: per-token limits hold for every protocol),
        or with `resume_token` the stream the token holds, continued (model and version
        may then be empty/0; given, they must be the token's). A resumed stream keeps the token's options
        except an idle timeout or checkpoint interval the open sets. `constants` picks a declared graph's
        per-stream constants from their choices (the rest take their default)."""
        options = replace(options, idle_timeout_ms=idle_timeout_ms)
        if resume_token:
            return self._resume(model, version, options, resume_token)
        served = self.repository.resolve(model, version)
        self.check_client_rows(served, "a stream")
        if options.checkpoint_every_chunks:
            self._check_checkpointable(served, f"checkpoint_every_chunks={options.checkpoint_every_chunks}")
        key = _constant_key(served, constants or {})
        stream = self.store.open(served, self.idle_timeout_s(idle_timeout_ms), current_caller())
        stream.options = options
        stream.key = key
        return stream

    @staticmethod
    def check_client_rows(model: ServedModel, what: str) -> None:
        """A model of two graphs (seq2seq) runs only the rows its kind makes: a client's chunks or
        sequences (`what`) have no graph to go to."""
        if model.encoder is not None:
            raise WrongTask(
                f"model {model.key} is a sequence-to-sequence model: it answers whole inputs with Translate "
                f"(seqserve.v1) or its `text` input (KServe V2), not {what}"
            )

    def _check_checkpointable(self, served: ServedModel, asked: str) -> None:
        if self.keys is None:
            raise NoStateKey(f"{asked} needs a state key, and this server has none: {_HOW_TO_KEY}")
        if not served.streamable:
            raise InvalidChunk(
                f"{asked} asked of model {served.key}, which is not streamable (bidirectional): its "
                "streams hold no state to checkpoint; expected checkpoint_every_chunks=0"
            )

    def _resume(self, model: str, version: int, asked: StreamOptions, token: bytes) -> StreamState:
        try:
            if self.keys is None:
                raise NoStateKey(f"resume_token needs a state key, and this server has none: {_HOW_TO_KEY}")
            snapshot = checkpoints.decode(token, self.keys)
            served = self._model_of(snapshot, model, version)
        except (BadResumeToken, NoStateKey) as error:
            if self.metrics is not None:
                self.metrics.resume_refused(getattr(error, "reason", checkpoints.NO_KEY))
            raise
        options = StreamOptions(
            include_scores=snapshot.include_scores,
            final_only=snapshot.final_only,
            idle_timeout_ms=asked.idle_timeout_ms or snapshot.idle_timeout_ms,
            checkpoint_every_chunks=asked.checkpoint_every_chunks or snapshot.checkpoint_every_chunks,
        )
        stream = self.store.open(served, self.idle_timeout_s(options.idle_timeout_ms), current_caller())
        stream.options = options
        stream.states, stream.steps, stream.chunks = snapshot.states, snapshot.steps, snapshot.chunks
        stream.key = snapshot.constants
        if stream.carry is not None:
            carried = iter(snapshot.carry)
            stream.carry = [None if zero is None else next(carried) for zero in stream.carry]
        if snapshot.answer is not None:
            stream.last = served.kind.restored_answer(snapshot.answer, snapshot.states)
        served.metrics.resumes.inc()
        return stream

    def _model_of(self, snapshot: StreamSnapshot, model: str, version: int) -> ServedModel:
        """The served version the token was made on: same name, version, weights (sha256) and shapes."""
        held = snapshot.model
        if (model and model != held.name) or (version and version != held.version):
            raise BadResumeToken(
                checkpoints.OTHER_MODEL,
                f"resume token is for model {held.name}:{held.version}, the open asks for "
                f"{model or held.name}:{version or held.version}",
            )
        try:
            served = self.repository.resolve(held.name, held.version)
        except ModelNotFound as error:
            raise BadResumeToken(
                checkpoints.OTHER_MODEL,
                f"resume token is for model {held.name}:{held.version}, which this server does not serve "
                f"({error})",
            ) from error
        info = served.runtime.info
        held_state = [(s.dtype.name, s.shape) for s in (*snapshot.states, *snapshot.carry)]
        zero_carry = [c for c in served.runtime.zero_carry or () if c is not None]
        served_state = [(s.dtype.name, s.shape) for s in (*served.runtime.zero_state, *zero_carry)]
        kept = None if snapshot.answer is None else snapshot.answer[1].shape[-1]
        if (
            info.sha256 != held.sha256
            or held_state != served_state
            or len(snapshot.constants) != len(served.runtime.declaration.constants)
            or kept not in (None, served.kind.kept_size)
            or not served.streamable
        ):
            raise BadResumeToken(
                checkpoints.OTHER_MODEL,
                f"resume token is for model {served.key} with sha256 {held.sha256[:12]}... and state "
                f"{_shapes(held_state)}; this server's {served.key} has sha256 {info.sha256[:12]}... and "
                f"state {_shapes(served_state)}",
            )
        return served

    def checkpoint(self, stream: StreamState) -> IssuedCheckpoint | None:
        """A token for the stream as it stands (after its last answered chunk); None without a key or for
        a non-streamable model."""
        model = stream.model
        if self.keys is None or not model.streamable:
            return None
        info = model.runtime.info
        last = stream.last if model.kind.keeps_answer else None
        expires_at = int(time.time() + self.config.checkpoint_ttl_s)
        snapshot = StreamSnapshot(
            model=checkpoints.ModelIdentity(info.name, info.version, info.sha256),
            steps=stream.steps,
            chunks=stream.chunks,
            states=stream.states,
            answer=None if last is None else model.kind.kept_answer(last),
            include_scores=stream.options.include_scores,
            final_only=stream.options.final_only,
            idle_timeout_ms=stream.options.idle_timeout_ms,
            checkpoint_every_chunks=stream.options.checkpoint_every_chunks,
            expires_at=expires_at,
            carry=tuple(c for c in stream.carry or () if c is not None),
            constants=stream.key,
        )
        token = checkpoints.encode(snapshot, self.keys.current)
        model.metrics.checkpoints.inc()
        return IssuedCheckpoint(token, stream.steps, stream.chunks, expires_at)

    def final_checkpoint(self, stream: StreamState, reason: str) -> IssuedCheckpoint | None:
        """The checkpoint a stream the server ends (`reason`: drain or idle timeout) ends with, taken
        after its last answered chunk, so the client resumes instead of starting over."""
        issued = self.checkpoint(stream)
        if issued is not None:
            self.final_checkpoints[reason] += 1
        return issued

    async def chunk(self, stream: StreamState, x: Chunk) -> RowAnswer | None:
        """The chunk's answer, or None for a non-streamable model, which buffers until end. When the
        stream's checkpoint interval is due, `stream.checkpoint` holds a token covering this chunk. `x` is
        [steps, ...] for the graph's one stream input, or a tuple of them (one per stream input)."""
        row = self.start_chunk(stream, x)
        return None if row is None else self.finish_chunk(stream, chunk_steps(x), await row)

    def start_chunk(self, stream: StreamState, x: Chunk) -> asyncio.Future[RowAnswer] | None:
        """`chunk`'s first half, synchronous: count the chunk and queue its row in the batcher (None: a
        non-streamable model buffered it). The caller hands the row's answer to `finish_chunk`, awaited or
        in a done callback (a sequence request, which no task waits for: sequences.py)."""
        stream.checkpoint = None
        stream.chunks += 1
        model = stream.model
        model.metrics.chunks.inc(1)
        model.metrics.steps.inc(chunk_steps(x))
        if not model.streamable:
            self._buffer(stream, x)
            return None
        if model.frames:
            return _run_frames(stream, x if isinstance(x, tuple) else (x,))
        if stream.carry is not None:
            x = _carried(stream, x if isinstance(x, tuple) else (x,))
        return model.batcher.submit(x, stream.states, stream, stream.key)

    def finish_chunk(self, stream: StreamState, steps: int, result: RowAnswer) -> RowAnswer:
        """`chunk`'s second half: the answer of the row (of `steps` steps) becomes the stream's state and
        latest answer."""
        stream.states = result.states
        stream.steps += steps
        stream.last = result
        every = stream.options.checkpoint_every_chunks
        if every and stream.chunks % every == 0:
            stream.checkpoint = self.checkpoint(stream)
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

    async def end(self, stream: StreamState) -> RowAnswer | None:
        """The final answer (None when the stream sent no chunk); the caller closes the stream after."""
        if stream.model.streamable:
            # Many-to-many streams already had every step's answer with its chunk.
            return None if stream.model.kind.answers_every_step else stream.last
        if not stream.buffered:
            return None
        whole = np.concatenate(stream.buffered)
        stream.buffered = []
        return await stream.model.batcher.infer(whole, stream.model.runtime.zero_state)

    async def classify(self, model: ServedModel, sequences: list[Chunk]) -> list[RowAnswer]:
        if self.store.draining:
            raise Draining("server is shutting down and takes no new requests; retry on another replica")
        self.check_client_rows(model, "Classify")
        model.metrics.steps.inc(sum(chunk_steps(x) for x in sequences))
        if model.frames or model.runtime.zero_carry is not None:  # a whole sequence runs as a stream would
            return list(
                await asyncio.gather(*(_whole(model, x if isinstance(x, tuple) else (x,)) for x in sequences))
            )
        zero, key = model.runtime.zero_state, model.runtime.declaration.constant_key({})
        return list(await asyncio.gather(*(model.batcher.infer(x, zero, None, key) for x in sequences)))


def _shapes(arrays: list[tuple[str, tuple]]) -> str:
    return ", ".join(f"{dtype} {list(shape)}" for dtype, shape in arrays)


def _constant_key(model: ServedModel, chosen: dict[str, Any]) -> tuple:
    """The stream's constants, each checked against its declared choices."""
    constants = model.runtime.declaration.constants
    known = {c.name: c for c in constants}
    for name, value in chosen.items():
        if name not in known:
            raise InvalidChunk(
                f"constant {name!r} is not one of model {model.key}'s constants "
                f"({', '.join(known) or 'it has none'})"
            )
        if hashable(value) not in known[name].choices:
            raise InvalidChunk(
                f"constant {name} is {value!r}; model {model.key} takes one of "
                f"{', '.join(map(repr, known[name].choices))}"
            )
    return tuple(hashable(chosen.get(c.name, c.choices[0])) for c in constants)


def _carried(stream: StreamState, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The rows with the previous chunk's last items before them, where the graph takes context; the
    stream keeps this chunk's last items for the next."""
    out = []
    for k, (context, x) in enumerate(zip(stream.model.contexts, inputs, strict=True)):
        if context is None:
            out.append(x)
            continue
        axis, last = context
        whole = np.concatenate([stream.carry[k], x], axis=axis)
        stream.carry[k] = whole[last]  # a view: the next chunk's concatenate copies it
        out.append(whole)
    return tuple(out)


def _run_frames(stream: StreamState, frames: tuple[np.ndarray, ...]) -> asyncio.Future:
    """A frame model's chunk of n frames: n calls, each frame from the state the one before left; the
    chunk's answer is the kind's stack of the frames' answers. A stream that goes away stops the chain."""
    model = stream.model
    count = frames[0].shape[0]
    if count == 1:  # the common chunk: its one call's answer is the chunk's, with no chain of callbacks
        frame = tuple(x[0] for x in frames)
        if stream.carry is not None:
            frame = _carried(stream, frame)
        return model.batcher.submit(frame, stream.states, stream, stream.key)
    done = asyncio.get_running_loop().create_future()
    answers: list = []

    def submit(index: int, states: tuple) -> None:
        frame = tuple(x[index] for x in frames)
        if stream.carry is not None:
            frame = _carried(stream, frame)
        row = model.batcher.submit(frame, states, stream, stream.key)
        row.add_done_callback(lambda finished: step(index, finished))

    def step(index: int, finished: asyncio.Future) -> None:
        if done.done():
            return
        if finished.cancelled():
            done.cancel()
            return
        if (error := finished.exception()) is not None:
            done.set_exception(error)
            return
        answers.append(finished.result())
        if index + 1 < count:
            submit(index + 1, answers[-1].states)
        else:
            done.set_result(model.kind.frames(answers))

    submit(0, stream.states)
    return done


def _whole(model: ServedModel, x: tuple[np.ndarray, ...]) -> asyncio.Future:
    """A whole sequence of a frame model or one that carries context, from the zero state: a stream no
    store holds, run through the same chunk path."""
    stream = StreamState(
        id="whole", model=model, caller=None, idle_timeout_s=0.0, task=None, states=model.runtime.zero_state,
        key=model.runtime.declaration.constant_key({}),
        carry=None if model.runtime.zero_carry is None else list(model.runtime.zero_carry),
    )  # fmt: skip
    if model.frames:
        return _run_frames(stream, x)
    return model.batcher.submit(_carried(stream, x), stream.states, None, stream.key)
