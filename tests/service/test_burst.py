"""A burst of stream opens while the event loop is busy: grpc core holds the calls the loop has not
accepted yet, and by default sheds them at random beyond 1,000
(service/server/grpc_server.py `pending_call_limit`).
Every stream of the burst must open and end OK, or be refused RESOURCE_EXHAUSTED by the server's accept
delay bound while the burst keeps its loop behind (never shed by core: CANCELLED or INTERNAL), and each
must be counted."""

from __future__ import annotations

import asyncio
import collections
import time

import grpc

from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .streams import END, open_request

BURST = 2000  # past grpc's default 1,000, where it starts shedding; below its hard limit of 3,000
BUSY_S = 1.0  # the loop does nothing else meanwhile, as a loop busy with other streams would


async def _open_and_end(stub: pb_grpc.InferenceServiceStub, started: asyncio.Event) -> grpc.StatusCode:
    call = stub.Stream()
    started.set()
    try:
        await call.write(open_request("jv-gru"))
        await call.read()
        await call.write(END)
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        pass
    return await call.code()


async def _burst(target: str) -> collections.Counter:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        started = [asyncio.Event() for _ in range(BURST)]
        calls = [asyncio.create_task(_open_and_end(stub, event)) for event in started]
        for event in started:
            await event.wait()
        await asyncio.sleep(0.1)  # every call's headers are on their way
        time.sleep(BUSY_S)  # the server accepts none of them meanwhile
        return collections.Counter(code.name for code in await asyncio.gather(*calls))


def test_a_burst_of_opens_on_a_busy_loop_all_succeed(make_server) -> None:  # noqa: ANN001
    server: ServerThread = make_server(max_streams=BURST)  # core's queue, not the stream limit, is on test
    codes = server.call(_burst(server.target), timeout_s=120)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and codes["OK"] > BURST // 2, codes
    registry = server.running.metrics.registry
    for code in ("OK", "RESOURCE_EXHAUSTED"):
        counted = registry.get_sample_value("seqserve_requests_total", {"rpc": "Stream", "code": code})
        assert (counted or 0) == codes[code], code
