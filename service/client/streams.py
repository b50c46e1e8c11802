"""One Stream RPC as the caller sees it: `send` a chunk, get its answer; `end`, get the final answer; or
`answers(chunks)`, writing ahead while answers come back in order. Resume is built in.

A stream is resumable when it asks for checkpoints or its client has several targets. It keeps every chunk
the latest checkpoint does not cover; when its server drains or drops, it reopens on the next target with
that checkpoint's token, writes the chunks after it again and reads past the answers the caller already
has, so the caller sees the same answers in the same order. `resumes` and `resent_chunks` say it happened.
A stream that is not resumable keeps only the chunks still unanswered, and a dropped server is an error.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Self

import grpc
import numpy as np

from seqserve.errors import ClientClosed, InvalidArgument, SeqserveError, error_for
from seqserve.service.client.answers import Answer, Ended, Forecast, ModelInfo
from seqserve.service.client.messages import END, chunk_request, forecast_ask, open_request
from seqserve.v1 import seqserve_pb2 as pb

StreamMethod = grpc.aio.StreamStreamMultiCallable[bytes, pb.StreamResponse]
StreamCall = grpc.aio.StreamStreamCall[bytes, pb.StreamResponse]
Chunk = np.ndarray | Sequence[int]
# Writes ahead of the answers in `answers()`: enough to keep a server's batches full, bounded memory.
AHEAD = 16


class _Failed(Exception):
    """The current call ended without the answer asked for; `moves`: another target may go on."""

    def __init__(self, code: grpc.StatusCode, details: str, moves: bool) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.moves = code, details, moves

    def error(self) -> SeqserveError:
        return error_for(self.code.name, self.details)


def _moves(code: grpc.StatusCode, write_failed: bool) -> bool:
    """Whether a call that ended with `code` may go on elsewhere: the server went away or is draining. A
    proxy resets a stream whose replica died (CANCELLED: never this side's own, whose calls are dropped
    before they are cancelled); a dropped connection under a write is a local INTERNAL error."""
    gone = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    return gone or (write_failed and code == grpc.StatusCode.INTERNAL)


async def _failure(call: StreamCall, write_failed: bool) -> _Failed:
    """Why a call ended: the server went away or is draining (moves), or refused the stream (does not)."""
    code = await call.code()
    details = await call.details() or ""
    if code == grpc.StatusCode.OK:  # closed with no StreamEnded: the connection went
        return _Failed(grpc.StatusCode.UNAVAILABLE, f"the server closed the stream early {details}", True)
    return _Failed(code, details, _moves(code, write_failed))


class AsyncStream:
    """A stream of chunks to one model; open it with `AsyncClient.stream`, use it in `async with`."""

    def __init__(
        self,
        methods: Sequence[StreamMethod],
        opening: pb.StreamOpen,
        timeout: float | None,
        client_open: Callable[[], None],
    ) -> None:
        self._methods = methods  # one per target, in failover order
        self._opening = opening
        self._resumable = opening.checkpoint_every_chunks > 0 or len(methods) > 1
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._client_open = client_open  # raises ClientClosed once the client is closed
        self._target = 0
        self._call: StreamCall | None = None
        self._write_failed = False  # a write on the current call failed: it ended under this side
        self._writing = asyncio.Lock()  # a reconnect and a write-ahead never interleave their writes
        self._kept: deque[bytes] = deque()  # serialised chunks from index _kept_from on
        self._kept_from = 0
        self._sent = 0  # chunks handed to the stream
        self._written = 0  # the highest chunk index written to any server, + 1
        self._delivered = 0  # answers handed to the caller
        self._checkpoint: pb.Checkpoint | None = None
        self._opened: pb.StreamOpened | None = None
        self._ended: Ended | None = None
        self._cancelled = False
        self._broken: SeqserveError | None = None  # the error that ended the stream for good
        self._failures = 0
        self._progress = 0  # answers and checkpoints read, to tell a server that works from one that fails
        self._progress_mark = 0
        self.resumes = 0  # times the stream moved to another target (or reopened) and went on
        self.resent_chunks = 0  # chunks written again after a resume, none that a checkpoint covered

    @property
    def model(self) -> ModelInfo | None:
        """The model version the stream is bound to, once open (after the first send)."""
        return None if self._opened is None else ModelInfo.from_message(self._opened.model)

    @property
    def checkpoint(self) -> pb.Checkpoint | None:
        """The latest checkpoint the server gave this stream (its token resumes it anywhere)."""
        return self._checkpoint

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None and self._ended is None and not self._cancelled and not self._broken and self._sent:
            await self.end()
        else:
            self.cancel()

    async def send(self, chunk: Chunk) -> Answer:
        """Send one chunk (float32 [steps, features], or token ids [steps]) and return its answer."""
        self._usable()
        request = chunk_request(chunk)
        self._kept.append(request)
        self._sent += 1
        call = self._call
        if call is None:  # the first chunk, or after a failure: (re)connect writes it
            return await self._answer()
        try:
            await call.write(request)
            self._written = self._sent
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self._write_failed = True
            return await self._answer()  # its read says why the call ended
        try:
            response = await call.read()
        except grpc.aio.AioRpcError:
            return await self._answer()  # a read of an ended call raises its status again
        if isinstance(response, pb.StreamResponse) and response.HasField("chunk"):
            return self._take(response.chunk)
        return await self._answered(call, response)

    async def answers(self, chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[Answer]:
        """Every chunk's answer, in order, with up to AHEAD chunks written before their answers are read."""
        self._usable()
        state = _Pipeline()

        async def write_all() -> None:
            try:
                async for chunk in _each(chunks):
                    request = chunk_request(chunk)
                    while self._sent - self._delivered >= AHEAD:
                        state.room.clear()
                        await state.room.wait()
                    async with self._writing:
                        await self._push(request)
                    state.more.set()
            finally:
                state.done = True
                state.more.set()

        writer = asyncio.create_task(write_all())
        try:
            while True:
                state.more.clear()
                if self._delivered == self._sent:
                    if state.done:
                        await writer  # raises what stopped the writer (a bad chunk)
                        return
                    await state.more.wait()
                    continue
                answer = await self._answer()
                state.room.set()
                yield answer
        finally:
            writer.cancel()

    async def forecast(self, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """A forecaster's next `horizon` values from the stream's state as it stands (which the forecast
        leaves untouched). Read every chunk's answer first."""
        self._usable()
        if self._delivered < self._sent:
            raise ValueError(
                f"{self._sent - self._delivered} chunk answer(s) not read yet; read them before a forecast"
            )
        request = pb.StreamRequest(forecast=forecast_ask(horizon, quantiles)).SerializeToString()
        while True:
            try:
                call = self._call or await self._connect()
                async with self._writing:
                    await self._write(call, request)
                response = await self._read(call)
                if not response.HasField("forecast"):
                    raise self._ended_early(response)
                self._progress += 1
                return Forecast.from_message(response.forecast)
            except _Failed as failed:
                await self._move(failed)

    async def end(self) -> Ended:
        """End the stream; the final answer (many-to-one: the label after the last step)."""
        if self._ended is not None:
            return self._ended
        self._usable()
        while self._delivered < self._sent:  # answers the caller never asked for (an abandoned answers())
            await self._answer()
        while True:
            try:
                call = self._call or await self._connect()
                ended = await self._finish(call)
                break
            except _Failed as failed:
                await self._move(failed)
        self._ended = Ended(ended, self.resumes, self.resent_chunks)
        self._call = None
        return self._ended

    def cancel(self) -> None:
        """Abandon the stream: the server frees its state at once; no final answer."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _usable(self) -> None:
        self._client_open()
        if self._broken is not None:
            raise self._broken
        if self._ended is not None or self._cancelled:
            raise ClientClosed("this stream")

    async def _push(self, request: bytes) -> None:
        """Hand a chunk to the stream and write it, under `_writing`. A failed write is found by the read
        that follows: it says why the call ended."""
        self._kept.append(request)
        self._sent += 1
        if self._call is not None:
            try:
                await self._call.write(request)
                self._written = self._sent
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                self._write_failed = True

    async def _answer(self) -> Answer:
        """The next answer the caller has not had, across as many moves as it takes."""
        while True:
            try:
                call = self._call or await self._connect()
                return self._take(await self._read_chunk(call))
            except _Failed as failed:
                await self._move(failed)

    async def _answered(self, call: StreamCall, response: object) -> Answer:
        """send()'s read found no chunk answer (the end of the call, or a StreamEnded): why, then on."""
        try:
            if response is grpc.aio.EOF:
                raise await _failure(call, self._write_failed)
            assert isinstance(response, pb.StreamResponse)
            raise self._ended_early(response)
        except _Failed as failed:
            await self._move(failed)
        return await self._answer()

    def _take(self, chunk: pb.ChunkResult) -> Answer:
        """The next answer from a chunk's result: its checkpoint kept, the chunks it frees dropped."""
        self._progress += 1
        if chunk.HasField("checkpoint"):
            self._checkpointed(chunk.checkpoint)
        index = self._delivered
        self._delivered += 1
        if not self._resumable:  # answered, and nothing will ever be sent again
            self._kept.popleft()
            self._kept_from += 1
        return Answer(index, chunk.results)

    async def _read_chunk(self, call: StreamCall) -> pb.ChunkResult:
        response = await self._read(call)
        if response.HasField("chunk"):
            return response.chunk
        raise self._ended_early(response)

    async def _read(self, call: StreamCall) -> pb.StreamResponse:
        try:
            response = await call.read()
        except grpc.aio.AioRpcError as error:
            moves = _moves(error.code(), self._write_failed)
            raise _Failed(error.code(), error.details() or "", moves) from None
        if response is grpc.aio.EOF:
            raise await _failure(call, self._write_failed)
        assert isinstance(response, pb.StreamResponse)
        return response

    def _ended_early(self, response: pb.StreamResponse) -> _Failed:
        """A StreamEnded in place of a chunk's answer: the server drained (moves) or the stream sat idle."""
        if not response.HasField("ended"):
            kind = response.WhichOneof("kind")
            return _Failed(grpc.StatusCode.INTERNAL, f"expected a chunk's answer, got {kind!r}", False)
        ended = response.ended
        if ended.HasField("checkpoint"):
            self._checkpointed(ended.checkpoint)
        shutdown = ended.reason == pb.END_REASON_SERVER_SHUTDOWN
        code = grpc.StatusCode.UNAVAILABLE if shutdown else grpc.StatusCode.DEADLINE_EXCEEDED
        return _Failed(code, ended.message or pb.EndReason.Name(ended.reason), shutdown)

    def _checkpointed(self, checkpoint: pb.Checkpoint) -> None:
        """Keep the latest checkpoint; the chunks it covers are never sent again."""
        self._checkpoint = checkpoint
        self._progress += 1
        while self._kept_from < checkpoint.chunks and self._kept:
            self._kept.popleft()
            self._kept_from += 1

    async def _connect(self) -> StreamCall:
        """Open on the current target (from the latest checkpoint when there is one), write every chunk
        after it again, and read past the answers the caller already has."""
        async with self._writing:
            self._write_failed = False
            call = await self._open()
            start = self._checkpoint.chunks if self._checkpoint is not None else 0
            if start < self._kept_from:
                raise _Failed(grpc.StatusCode.UNAVAILABLE, "chunks to resend were not kept", False)
            self.resent_chunks += max(0, self._written - start)
            for index in range(start, self._sent):
                await self._write(call, self._kept[index - self._kept_from])
            self._written = max(self._written, self._sent)
            for _ in range(start, self._delivered):  # answers the caller has: only their checkpoints count
                chunk = await self._read_chunk(call)
                self._progress += 1
                if chunk.HasField("checkpoint"):
                    self._checkpointed(chunk.checkpoint)
            self._call = call
            return call

    async def _open(self) -> StreamCall:
        opening = self._opening
        if self._checkpoint is not None:
            opening = pb.StreamOpen()
            opening.CopyFrom(self._opening)
            opening.resume_token = self._checkpoint.token
        call = self._methods[self._target](timeout=self._remaining())
        await self._write(call, open_request(opening))
        response = await self._read(call)
        if not response.HasField("opened"):
            call.cancel()
            kind = response.WhichOneof("kind")
            raise _Failed(grpc.StatusCode.INTERNAL, f"expected the stream's opening, got {kind!r}", False)
        self._opened = response.opened
        return call

    async def _write(self, call: StreamCall, request: bytes) -> None:
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            raise await _failure(call, write_failed=True) from None

    async def _finish(self, call: StreamCall) -> pb.StreamEnded:
        await self._write(call, END)
        await call.done_writing()
        response = await self._read(call)
        if not response.HasField("ended") or response.ended.reason != pb.END_REASON_COMPLETED:
            raise self._ended_early(response)
        if await call.code() != grpc.StatusCode.OK:
            raise await _failure(call, self._write_failed)
        return response.ended

    async def _move(self, failed: _Failed) -> None:
        """Go on at the next target, or raise: the failure is the stream's own, the stream cannot resume,
        or every target failed twice running with nothing answered."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._client_open()  # a client closed under the stream: say so, do not fail over
        self._failures = 0 if self._progress > self._progress_mark else self._failures + 1
        self._progress_mark = self._progress
        if not (failed.moves and self._resumable) or self._failures >= 2 * len(self._methods):
            self._broken = failed.error()
            raise self._broken from None
        self.resumes += 1
        self._target = (self._target + 1) % len(self._methods)
        if self._failures and self._failures % len(self._methods) == 0:
            await asyncio.sleep(0.05 * self._failures)  # every target refused: give them a moment

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise error_for("DEADLINE_EXCEEDED", "the stream's timeout passed")
        return remaining


class _Pipeline:
    """What `answers()`' writer and reader tell each other."""

    def __init__(self) -> None:
        self.room = asyncio.Event()  # an answer was read: the writer may be under AHEAD again
        self.more = asyncio.Event()  # a chunk was written, or the writer stopped
        self.done = False


async def _each(chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


def check_options(checkpoint_every: int, idle_timeout_s: float | None) -> None:
    if checkpoint_every < 0:
        raise InvalidArgument("INVALID_ARGUMENT", f"checkpoint_every is {checkpoint_every}: expected >= 0")
    if idle_timeout_s is not None and idle_timeout_s <= 0:
        raise InvalidArgument("INVALID_ARGUMENT", f"idle_timeout_s is {idle_timeout_s}: expected > 0")
