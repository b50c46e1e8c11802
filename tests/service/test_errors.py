"""Every row of docs/design.md's status-code table: its status code, a message naming the wrong value, and
only its own stream ended; bystander streams opened before it and finished after it are still exact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
import pytest

from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .reference import Offline
from .streams import END, Outcome, chunk_request, drive, end_ok, open_request

MODEL = "jv-gru"
FEATURES = 12
BYSTANDERS = 3
rng = np.random.default_rng(0)


def _x(steps: int, features: int = FEATURES) -> np.ndarray:
    return rng.standard_normal((steps, features)).astype(np.float32)


async def _bystander(stub: pb_grpc.InferenceServiceStub, x: np.ndarray, halfway: asyncio.Barrier,
                     resume: asyncio.Event) -> np.ndarray:  # fmt: skip
    """Half the chunks, wait while the bad stream runs, the other half: the final scores."""
    call = stub.Stream()
    await call.write(open_request(MODEL, include_scores=True))
    await call.read()
    parts = np.array_split(x, 4)
    for index, part in enumerate(parts):
        if index == 2:
            await halfway.wait()
            await resume.wait()
        await call.write(chunk_request(part))
        await call.read()
    ended = await end_ok(call)
    return np.array([ended.final_results[0].scores])


def with_bystanders(
    server: ServerThread, offline: Offline, bad: Callable[[pb_grpc.InferenceServiceStub], Awaitable[Outcome]]
) -> Outcome:
    """Run `bad` while BYSTANDERS streams are half way; check they finish exact and every state is freed."""
    xs = [_x(16) for _ in range(BYSTANDERS)]

    async def run() -> tuple[Outcome, list[np.ndarray], int]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            halfway, resume = asyncio.Barrier(BYSTANDERS + 1), asyncio.Event()
            tasks = [asyncio.create_task(_bystander(stub, x, halfway, resume)) for x in xs]
            await halfway.wait()
            outcome = await bad(stub)
            open_during = server.running.store.open_count
            resume.set()
            return outcome, await asyncio.gather(*tasks), open_during

    outcome, finals, open_during = server.call(run())
    assert open_during == BYSTANDERS, "the bad stream's state was not freed, or a bystander's was"
    for x, final in zip(xs, finals, strict=True):
        np.testing.assert_allclose(final, offline.scores(MODEL, x), atol=1e-5)
    assert server.running.store.open_count == 0 and server.running.store.state_bytes == 0
    return outcome


Code = grpc.StatusCode
OPEN = open_request(MODEL)
OVERSIZED = chunk_request(_x(4000, FEATURES * 30), steps=4000)
CASES = {
    "unknown model": ([open_request("nope")], Code.NOT_FOUND, "model 'nope' is not served"),
    "unknown version": ([open_request(MODEL, version=7)], Code.NOT_FOUND, "has no version 7"),
    "wrong feature count": (
        [OPEN, chunk_request(_x(3, 13))],
        Code.INVALID_ARGUMENT,
        "chunk 0 has 156 bytes for steps=3, that is 13 features per step; "
        "model jv-gru:1 expects 12 features: 3 x 12 x 4 = 144 bytes",
    ),
    "empty chunk": (
        [OPEN, pb.StreamRequest(chunk=pb.StreamChunk())],
        Code.INVALID_ARGUMENT,
        "chunk 0 is empty (steps=0, 0 bytes of values)",
    ),
    "NaN": (
        [OPEN, chunk_request(_x(2)), chunk_request(np.where(np.eye(3, FEATURES) > 0, np.nan, 0.0))],
        Code.INVALID_ARGUMENT,
        "chunk 1 has nan at step 0, feature 0",
    ),
    "Inf": (
        [OPEN, chunk_request(np.full((2, FEATURES), -np.inf))],
        Code.INVALID_ARGUMENT,
        "chunk 0 has -inf at step 0, feature 0",
    ),
    "bytes not a multiple of 4": (
        [OPEN, pb.StreamRequest(chunk=pb.StreamChunk(steps=1, values=b"\0" * 49))],
        Code.INVALID_ARGUMENT,
        "chunk 0 has 49 bytes of values, not a multiple of 4",
    ),
    "steps disagree with values": (
        [OPEN, chunk_request(_x(3), steps=5)],
        Code.INVALID_ARGUMENT,
        "chunk 0 has 144 bytes of values for steps=5; "
        "model jv-gru:1 expects steps x 12 features x 4 bytes = 240 bytes",
    ),
    "chunk before open": (
        [chunk_request(_x(2))],
        Code.FAILED_PRECONDITION,
        "first message of a stream must be open, got chunk",
    ),
    "open twice": ([OPEN, OPEN], Code.FAILED_PRECONDITION, "open sent twice"),
    "chunk after end": (
        [OPEN, chunk_request(_x(2)), END, chunk_request(_x(2))],
        Code.FAILED_PRECONDITION,
        "chunk sent after end",
    ),
    "chunk over max steps": (
        [OPEN, chunk_request(_x(4097))],
        Code.RESOURCE_EXHAUSTED,
        "chunk 0 has steps=4097, the server's limit per chunk is 4096",
    ),
    "message over max size": (
        [OPEN, OVERSIZED],
        Code.RESOURCE_EXHAUSTED,
        f"Stream: message 2 of the stream is {OVERSIZED.ByteSize()} bytes, over the server's limit of "
        f"{4 << 20} bytes per message",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_its_code_and_ends_only_its_stream(
    server: ServerThread, offline: Offline, case: str
) -> None:
    requests, code, message = CASES[case]
    outcome = with_bystanders(server, offline, lambda stub: drive(stub, requests))
    assert outcome.code == code, outcome.details
    assert message in outcome.details


def test_too_many_open_streams(make_server, offline: Offline) -> None:
    server = make_server(max_streams=BYSTANDERS)
    outcome = with_bystanders(server, offline, lambda stub: drive(stub, [open_request(MODEL)]))
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"too many open streams: {BYSTANDERS} open, the server's limit is {BYSTANDERS}" in outcome.details


def test_idle_timeout_tells_the_client_then_deadline_exceeded(server: ServerThread, offline: Offline) -> None:
    async def idle(stub: pb_grpc.InferenceServiceStub) -> Outcome:
        call = stub.Stream()
        await call.write(open_request(MODEL, idle_timeout_ms=150))
        await call.write(chunk_request(_x(3)))
        outcome = Outcome()
        with pytest.raises(grpc.aio.AioRpcError):
            async for response in call:  # no more messages, no half-close: the server must end it
                outcome.responses.append(response)
        outcome.code, outcome.details = await call.code(), await call.details()
        return outcome

    outcome = with_bystanders(server, offline, idle)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle timeout" in outcome.details
    assert outcome.responses[0].opened.idle_timeout_ms == 150
    assert outcome.ended.reason == pb.END_REASON_IDLE_TIMEOUT and outcome.ended.steps == 3


def test_classify_rejects_a_bad_sequence_with_its_index(server: ServerThread) -> None:
    async def run() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            sequences = [
                pb.Sequence(steps=2, values=_x(2).tobytes()),
                pb.Sequence(steps=2, values=_x(2, 5).tobytes()),
            ]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Classify(pb.ClassifyRequest(model=MODEL, sequences=sequences))
            return caught.value

    error = server.call(run())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    expected = "sequence 1 has 40 bytes for steps=2, that is 5 features per step; model jv-gru:1 expects 12"
    assert expected in error.details()
