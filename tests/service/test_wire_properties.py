"""Property test at the wire: random bytes, valid messages with random field values and truncated messages,
on every RPC of every service, against a live server while good streams run beside them. The server never
answers UNKNOWN, never logs an error or a traceback for a client's bytes, and the good streams stay exact."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqserve.service.server.launch import ServerThread, background_loop, run_on_loop
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .reference import Offline
from .streams import END, chunk_request, end_ok, open_request
from .wire import METHODS, call_raw

# Watch answers a valid request by watching forever: it is covered by the bad-bytes test instead.
TARGETS = sorted(name for name in METHODS if not name.endswith("Health.Watch"))
MODELS = ["jv-gru", "jv-lstm", "jv-bigru", "bms-gru", "nope", ""]

names = st.sampled_from(MODELS) | st.text(max_size=40) | st.just("m" * 20000)
values = st.binary(max_size=600) | st.integers(0, 60).map(lambda n: np.ones(n, "<f4").tobytes())
opens = st.builds(
    lambda model, version, emit, idle, scores: pb.StreamRequest(
        open=pb.StreamOpen(
            model=model, version=version, emit=emit, idle_timeout_ms=idle, include_scores=scores
        )
    ),
    names,
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 3),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
chunks = st.builds(
    lambda steps, data: pb.StreamRequest(chunk=pb.StreamChunk(steps=steps, values=data)),
    st.integers(0, 2**32 - 1) | st.integers(0, 8),
    values,
)
stream_requests = st.one_of(opens, chunks, st.just(END), st.just(pb.StreamRequest()))
classify_requests = st.builds(
    lambda model, version, sequences, scores: pb.ClassifyRequest(
        model=model, version=version, sequences=sequences, include_scores=scores
    ),
    names,
    st.integers(-(2**63), 2**63 - 1),
    st.lists(st.builds(lambda s, v: pb.Sequence(steps=s, values=v), st.integers(0, 8), values), max_size=4),
    st.booleans(),
)


@st.composite
def wire_messages(draw: st.DrawFn, name: str) -> list[bytes]:
    """Bytes for one call: garbage, a valid message with random fields, or one of those cut short."""
    if name.endswith("InferenceService.Stream"):
        messages = [m.SerializeToString() for m in draw(st.lists(stream_requests, min_size=1, max_size=5))]
    elif name.endswith("InferenceService.Classify"):
        messages = [draw(classify_requests).SerializeToString()]
    else:
        messages = [draw(st.binary(max_size=200))]
    if draw(st.booleans()):  # garbage or a truncation in place of one of them
        index = draw(st.integers(0, len(messages) - 1))
        original = messages[index]
        messages[index] = draw(
            st.binary(max_size=100) | st.just(original[: draw(st.integers(0, len(original)))])
        )
    return messages if METHODS[name].client_streaming else messages[:1]


calls = st.sampled_from(TARGETS).flatmap(lambda name: st.tuples(st.just(name), wire_messages(name)))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(record)


async def _good_streams(target: str, offline: Offline, stop: asyncio.Event) -> int:
    """Stream real-shaped sequences until stopped, each checked against the offline reference."""
    rng = np.random.default_rng(11)
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        while not stop.is_set():
            x = rng.standard_normal((int(rng.integers(2, 20)), 12)).astype(np.float32)
            call = stub.Stream()
            await call.write(open_request("jv-gru", include_scores=True))
            await call.read()
            for part in np.array_split(x, min(3, len(x))):
                await call.write(chunk_request(part))
                await call.read()
            ended = await end_ok(call)
            np.testing.assert_allclose(
                [ended.final_results[0].scores], offline.scores("jv-gru", x), atol=1e-5
            )
            done += 1
    return done


def test_no_request_bytes_make_the_server_answer_unknown_or_log_a_traceback(
    server: ServerThread, offline: Offline
) -> None:
    records = _Records()
    logging.getLogger().addHandler(records)
    stop = asyncio.Event()
    good = asyncio.run_coroutine_threadsafe(_good_streams(server.target, offline, stop), background_loop())
    codes: set[grpc.StatusCode] = set()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(calls)
    def one_call(call: tuple[str, list[bytes]]) -> None:
        name, messages = call

        async def send() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(server.target) as channel:
                return (await call_raw(channel, METHODS[name], messages, timeout=20.0))[0]

        code = server.call(send())
        codes.add(code)
        assert code != grpc.StatusCode.UNKNOWN, (name, messages)
        assert not records.bad, [r.getMessage() for r in records.bad]

    try:
        one_call()
    finally:
        run_on_loop(_set(stop))
        logging.getLogger().removeHandler(records)
    assert good.result(60) > 0
    assert grpc.StatusCode.INVALID_ARGUMENT in codes and grpc.StatusCode.OK in codes
    assert server.running.store.open_count == 0


async def _set(event: asyncio.Event) -> None:
    event.set()
