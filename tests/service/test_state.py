"""Every way a stream ends frees its state: the open-stream count and state bytes go back to 0, and the
end is counted under its reason."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .streams import chunk_request, open_request

MODEL = "jv-lstm"


async def _until_freed(server: ServerThread, timeout_s: float = 5.0) -> None:
    store = server.running.store
    deadline = asyncio.get_running_loop().time() + timeout_s
    while store.open_count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def _open_with_a_chunk(channel: grpc.aio.Channel, **options: object) -> grpc.aio.StreamStreamCall:
    call = pb_grpc.InferenceServiceStub(channel).Stream()
    await call.write(open_request(MODEL, **options))
    await call.read()
    await call.write(chunk_request(np.ones((4, 12), dtype=np.float32)))
    await call.read()
    return call


def _ended(server: ServerThread, reason: str) -> float:
    labels = {"model": MODEL, "version": "1", "reason": reason}
    return server.running.metrics.registry.get_sample_value("seqserve_streams_total", labels) or 0.0


def test_open_streams_hold_state_and_every_end_frees_it(server: ServerThread) -> None:
    store = server.running.store
    before = {reason: _ended(server, reason) for reason in ("cancelled", "idle_timeout")}

    async def run() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            cancelled = await _open_with_a_chunk(channel)
            await _open_with_a_chunk(channel, idle_timeout_ms=100)
            held = (store.open_count, store.state_bytes)
            cancelled.cancel()
            await asyncio.sleep(0.3)  # past the idle timeout
        await _until_freed(server)
        return held

    open_count, state_bytes = server.call(run())
    lstm = server.running.engine.repository.resolve(MODEL).runtime
    assert (open_count, state_bytes) == (2, 2 * lstm.state_nbytes)  # h and c rows per stream
    assert lstm.state_nbytes == 2 * lstm.info.layers * lstm.info.hidden * 4
    assert (store.open_count, store.state_bytes) == (0, 0)
    assert _ended(server, "cancelled") == before["cancelled"] + 1
    assert _ended(server, "idle_timeout") == before["idle_timeout"] + 1


def test_client_disconnect_frees_the_state(server: ServerThread) -> None:
    before = _ended(server, "cancelled")

    async def run() -> None:
        channel = grpc.aio.insecure_channel(server.target)
        await _open_with_a_chunk(channel)
        await _open_with_a_chunk(channel)
        assert server.running.store.open_count == 2
        await channel.close()  # the connection goes away with both streams open
        await _until_freed(server)

    server.call(run())
    assert server.running.store.open_count == 0 and server.running.store.state_bytes == 0
    assert _ended(server, "cancelled") == before + 2
