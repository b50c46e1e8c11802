"""Bytes are the client's fault: every RPC of every service answers unparsable bytes with INVALID_ARGUMENT,
logged at WARNING without a traceback, and every outcome is counted once under the code the client got."""

from __future__ import annotations

import asyncio
import collections
import logging

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kserve_pb

from seqserve.service.frontends.kserve_v2 import STREAM_RESPONSE
from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .streams import END, chunk_request, drive, open_request
from .wire import METHODS, call_raw, request_tally, settled_tally

# Field 1 with wire type 7, which does not exist: no message type parses these bytes.
GARBAGE = b"\x0f\x01\x02"
MODEL = "jv-gru"
IN_BAND = "inference.GRPCInferenceService.ModelStreamInfer"
Code = grpc.StatusCode
rng = np.random.default_rng(1)


def _x(steps: int, features: int = 12) -> np.ndarray:
    return rng.standard_normal((steps, features)).astype(np.float32)


@pytest.mark.parametrize("name", METHODS)
def test_unparsable_bytes_are_invalid_argument_on_every_rpc(
    server: ServerThread, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    method = METHODS[name]
    before = request_tally(server.running.metrics)
    answers: list[bytes] = []

    async def run() -> tuple[Code, str]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            return await call_raw(channel, method, [GARBAGE], answers=answers)

    with caplog.at_level(logging.WARNING):
        code, details = server.call(run())
    expected_counts = {(method.name, "INVALID_ARGUMENT"): 1}
    if name == IN_BAND:  # Triton's stream answers errors in the stream, and the stream goes on
        assert code == Code.OK
        details = kserve_pb.ModelStreamInferResponse.FromString(answers[0]).error_message
        assert details.startswith("INVALID_ARGUMENT: ")
        details = details.removeprefix("INVALID_ARGUMENT: ")
        expected_counts = {(method.name, "OK"): 1, (STREAM_RESPONSE, "INVALID_ARGUMENT"): 1}
    assert code in (Code.INVALID_ARGUMENT, Code.OK), details
    assert code == Code.INVALID_ARGUMENT or name == IN_BAND
    expected = method.input_type.full_name
    assert details.startswith(f"{method.name}: ") and f"could not be parsed as {expected}" in details
    assert f"({len(GARBAGE)} bytes)" in details
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and method.name in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    after = server.call(settled_tally(server.running.metrics, before.total() + len(expected_counts)))
    assert after - before == collections.Counter(expected_counts)


async def _cancelled_stream(stub: pb_grpc.InferenceServiceStub) -> Code:
    call = stub.Stream()
    await call.write(open_request(MODEL))
    await call.read()
    call.cancel()
    return Code.CANCELLED


async def _deadline_stream(stub: pb_grpc.InferenceServiceStub) -> Code:
    call = stub.Stream(timeout=0.3)
    await call.write(open_request(MODEL))
    await call.read()
    try:
        await call.read()  # the server waits for a chunk; the deadline passes first
    except grpc.aio.AioRpcError as error:
        return error.code()
    return await call.code()


async def _unary(awaitable) -> Code:
    try:
        await awaitable
    except grpc.aio.AioRpcError as error:
        return error.code()
    return Code.OK


def test_every_outcome_is_counted_once_under_the_code_the_client_got(make_server) -> None:
    """A mixed run of good and bad calls, run concurrently; the client-side tally equals the metric."""
    server = make_server(max_message_bytes=64 << 10)
    big = pb.Sequence(steps=2000, values=_x(2000).tobytes())  # 96 kB: over this server's limit
    stream = METHODS["seqserve.v1.InferenceService.Stream"]
    classify = METHODS["seqserve.v1.InferenceService.Classify"]

    async def run() -> collections.Counter:
        tally: collections.Counter = collections.Counter()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def stream_case(requests: list[pb.StreamRequest]) -> None:
                tally["Stream", (await drive(stub, requests)).code.name] += 1

            async def case(rpc: str, outcome) -> None:
                code = await outcome
                tally[rpc, (code[0] if isinstance(code, tuple) else code).name] += 1  # call_raw: + details

            good = [open_request(MODEL), chunk_request(_x(5)), chunk_request(_x(3)), END]
            jobs = [stream_case(good) for _ in range(6)]
            jobs += [
                stream_case([open_request("nope")]),
                stream_case([open_request(MODEL), chunk_request(_x(3, 13))]),
                stream_case([open_request(MODEL), chunk_request(_x(3), steps=5000)]),
                stream_case([chunk_request(_x(2))]),
                stream_case([open_request(MODEL), pb.StreamRequest(chunk=pb.StreamChunk(values=big.values))]),
                case("Stream", call_raw(channel, stream, [open_request(MODEL).SerializeToString(), GARBAGE])),
                case("Stream", _cancelled_stream(stub)),
                case("Stream", _deadline_stream(stub)),
                case("Classify", call_raw(channel, classify, [GARBAGE])),
                case("Classify", _unary(stub.Classify(pb.ClassifyRequest(model=MODEL, sequences=[big])))),
                case("Classify", _unary(stub.Classify(pb.ClassifyRequest(model=MODEL)))),
                case(
                    "Classify",
                    _unary(
                        stub.Classify(
                            pb.ClassifyRequest(
                                model=MODEL, sequences=[pb.Sequence(steps=4, values=_x(4).tobytes())]
                            )
                        )
                    ),
                ),  # fmt: skip
                case("ListModels", _unary(stub.ListModels(pb.ListModelsRequest()))),
                case("GetModel", _unary(stub.GetModel(pb.GetModelRequest(model=MODEL, version=9)))),
                case("Check", _unary(health.Check(health_pb2.HealthCheckRequest(service=MODEL)))),
                case("Check", _unary(health.Check(health_pb2.HealthCheckRequest(service="nope")))),
                case("unknown", _unary(channel.unary_unary("/seqserve.v1.Nope/Nothing")(b""))),
            ]
            await asyncio.gather(*jobs)
        return tally

    tally = server.call(run())
    assert tally["Stream", "RESOURCE_EXHAUSTED"] == 2 and tally["Stream", "DEADLINE_EXCEEDED"] == 1
    assert tally["Stream", "CANCELLED"] == 1 and tally["unknown", "UNIMPLEMENTED"] == 1

    assert server.call(settled_tally(server.running.metrics, tally.total())) == tally
    assert server.running.store.open_count == 0
