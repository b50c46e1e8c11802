"""A server past its accept delay (--max-accept-delay-ms) refuses a new stream at once: RESOURCE_EXHAUSTED
naming the limit and its value, the retry hint in grpc-retry-pushback-ms, counted in seqserve_requests_total,
while the streams it serves go on and answer as offline. The refusal goes out as trailers only, so a client
whose retry policy lists RESOURCE_EXHAUSTED sends the open again after the hint.

The delay is made real by a callback that holds the server's event loop for HOG_S at every turn, as a
saturated server's completion queue does: the server's own probe has to see it.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from seqserve.service.client.channels import STREAM_RETRY_POLICY
from seqserve.service.server.accept_delay import WINDOW_S, AcceptDelay
from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .reference import Offline
from .streams import chunk_request, end_ok, open_request

MODEL = "jv-gru"
BOUND_MS = 20
HOG_S = 0.05
SERVED = 3
REFUSED = 4
PUSHBACK = "grpc-retry-pushback-ms"


class Hog:
    """Holds the running loop for HOG_S at every turn until stopped."""

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True
        asyncio.get_running_loop().call_soon(self._hold)

    def _hold(self) -> None:
        if self.running:
            time.sleep(HOG_S)
            asyncio.get_running_loop().call_soon(self._hold)


def refused_count(server: ServerThread) -> float:
    return (
        server.running.metrics.registry.get_sample_value(
            "seqserve_requests_total", {"rpc": "Stream", "code": "RESOURCE_EXHAUSTED"}
        )
        or 0.0
    )


async def _open(stub: pb_grpc.InferenceServiceStub) -> tuple[grpc.aio.StreamStreamCall, float]:
    """A stream opened on jv-gru with scores; the seconds until the open was answered or refused."""
    call = stub.Stream()
    sent = time.perf_counter()
    await call.write(open_request(MODEL, include_scores=True))
    try:
        await call.read()
    except grpc.aio.AioRpcError:
        pass
    return call, time.perf_counter() - sent


async def _stream(call: grpc.aio.StreamStreamCall, parts: list[np.ndarray]) -> np.ndarray:
    for part in parts:
        await call.write(chunk_request(part))
        await call.read()
    return np.array([(await end_ok(call)).final_results[0].scores])


def test_past_the_accept_delay_new_streams_are_refused_at_once_and_open_ones_go_on(
    make_server, offline: Offline
) -> None:
    server = make_server(max_accept_delay_ms=BOUND_MS)
    xs = [np.random.default_rng(i).standard_normal((12, 12)).astype(np.float32) for i in range(SERVED)]
    hog = Hog()

    async def run() -> tuple[list[np.ndarray], list, float, np.ndarray]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            served = [(await _open(stub))[0] for _ in xs]
            halves = [np.array_split(x, 2) for x in xs]
            for call, parts in zip(served, halves, strict=True):  # the first half before the hog
                await call.write(chunk_request(parts[0]))
                await call.read()
            await hog.start()
            delay = await _past_bound(server)
            refusals = [await _open(stub) for _ in range(REFUSED)]
            rest = [asyncio.create_task(_stream(c, [p[1]])) for c, p in zip(served, halves, strict=True)]
            finals = await asyncio.gather(*rest)  # the open streams went on under the hog
            hog.running = False
            await asyncio.sleep(2 * WINDOW_S)  # the probes see a free loop again
            after = await _stream((await _open(stub))[0], [xs[0]])  # below the bound again: served
            return finals, [(await _refusal(c), s) for c, s in refusals], delay, after

    try:
        finals, refusals, delay, after = server.call(run(), timeout_s=60)
    finally:
        hog.running = False
    assert delay > BOUND_MS / 1000
    for x, final in zip(xs, finals, strict=True):
        np.testing.assert_allclose(final, offline.scores(MODEL, x), atol=1e-5)
    for (code, details, trailers), seconds in refusals:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "server at capacity: new calls wait at least" in details, details
        assert f"over the server's limit of {BOUND_MS} ms (--max-accept-delay-ms)" in details, details
        assert trailers.get(PUSHBACK) == "500", trailers
        assert seconds < 1.0, f"a refusal took {seconds:.2f} s"
    assert refused_count(server) == REFUSED
    assert server.running.metrics.registry.get_sample_value("seqserve_accept_delay_seconds") is not None
    np.testing.assert_allclose(after, offline.scores(MODEL, xs[0]), atol=1e-5)
    assert server.running.store.open_count == 0


async def _past_bound(server: ServerThread) -> float:
    """Wait until the server's probe reads the delay past its bound; that delay."""
    store = server.running.store
    deadline = time.monotonic() + 10
    while store.accept_delay_s <= store.max_accept_delay_s:
        assert time.monotonic() < deadline, f"accept delay stayed at {store.accept_delay_s * 1000:.1f} ms"
        await asyncio.sleep(0.05)
    return store.accept_delay_s


async def _refusal(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    return await call.code(), await call.details(), dict(await call.trailing_metadata() or ())


def test_a_client_retry_policy_sends_a_refused_open_again_after_the_hint(make_server) -> None:
    server = make_server(max_streams=1)

    async def run() -> tuple[grpc.StatusCode, float, dict[str, str]]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            held, _ = await _open(pb_grpc.InferenceServiceStub(channel))
            options = [("grpc.service_config", STREAM_RETRY_POLICY)]
            async with grpc.aio.insecure_channel(server.target, options=options) as retrying:
                call, seconds = await _open(pb_grpc.InferenceServiceStub(retrying))
                code, _, trailers = await _refusal(call)
            await end_ok(held)
            return code, seconds, trailers

    code, seconds, trailers = server.call(run(), timeout_s=30)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and trailers.get(PUSHBACK) == "500"
    # Three attempts (the policy's most), the second and third each after the server's 500 ms: the refusal
    # went out as trailers only, so the call was not committed.
    assert refused_count(server) == 3
    assert 1.0 <= seconds < 5.0, seconds


def test_the_delay_is_the_least_over_the_window() -> None:
    class Store:
        accept_delay_s = 0.0

    probe = AcceptDelay(Store())  # type: ignore[arg-type]
    assert probe.record(10.0, 0.002) == 0.002
    assert probe.record(11.0, 0.900) == 0.002  # one probe that waited through a stall does not count
    assert probe.record(11.1, 0.080) == 0.080  # two in a row do: the fast one is older than the window
    assert probe.record(11.2, 0.090) == 0.080
    assert probe.record(11.3, 0.001) == 0.001
