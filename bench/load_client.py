"""The one load client that drives every server: grpc.aio, run inside each load-generator process.
Mode `v2` drives seqserve's KServe V2 endpoint the way perf_analyzer does (one sequence per
ModelStreamInfer stream, Triton's sequence parameters), so the two protocols can be compared with one client.

It is deliberately lean so it can outrun the servers: requests are serialised once and sent as bytes, and
each stream keeps one chunk in flight (send, wait for its answer, send the next), so a chunk's latency is
the time from its send to its answer. Only answers to chunks sent inside the measuring window count.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb

STREAM_METHOD = "/seqserve.v1.InferenceService/Stream"
V2_STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
CLASSIFY_METHOD = "/seqserve.v1.InferenceService/Classify"
# Several connections per process, as many clients would open; each channel gets its own connection.
STREAMS_PER_CHANNEL = 100
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
# Opening thousands of idle streams at once would only queue in the transport; open them in waves.
_OPENING_AT_ONCE = 200


@dataclass(frozen=True)
class LoadSpec:
    """What a scenario asks of the clients. `mode`: stream (chunks on Stream), v2 (a sequence's requests on
    ModelStreamInfer), resend (the whole sequence so far on Classify at every step, `resend_steps` long) or
    idle (open, one chunk, then wait)."""

    target: str
    model: str
    features: int
    mode: str
    streams: int
    chunk: int = 1
    resend_steps: int = 256
    warmup_s: float = 1.0
    duration_s: float = 3.0
    idle_timeout_ms: int = 0
    # Fewer streams per connection spread them over `--workers` (the kernel balances connections).
    streams_per_channel: int = STREAMS_PER_CHANNEL
    # A signed state checkpoint with every Nth chunk's answer (0: none); the server needs a state key.
    checkpoint_every_chunks: int = 0
    # Ask for every class's score with each answer, not only the label (what perf_analyzer's V2 rows get).
    include_scores: bool = False


@dataclass
class ClientTally:
    """One process's share of a scenario."""

    latencies: np.ndarray  # seconds, one per answered message sent inside the window
    sent_steps: int = 0  # steps sent over the whole run, warm-up included (resend: every resent step)
    server_steps: int = 0  # steps the server reported in StreamEnded (stream and idle modes)
    streams: int = 0
    cpu_s: float = 0.0  # this process's CPU time (all its threads) inside the window
    open_s: float = 0.0  # idle mode: time to open every stream and get its first chunk answered


@dataclass
class _Window:
    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def record(self, sent_at: float) -> None:
        if sent_at >= self.start:
            self.latencies.append(time.monotonic() - sent_at)

    async def measure_cpu(self) -> None:
        await asyncio.sleep(max(0.0, self.start - time.monotonic()))
        before = time.process_time()
        await asyncio.sleep(max(0.0, self.end - time.monotonic()))
        self.cpu_s = time.process_time() - before


def _values(steps: int, features: int, seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal((steps, features)).astype("<f4").tobytes()


def _expect(raw: bytes | object, kind: str) -> pb.StreamResponse:
    if raw is grpc.aio.EOF:
        raise RuntimeError(f"stream closed by the server while waiting for {kind!r}")
    response = pb.StreamResponse.FromString(raw)
    if response.WhichOneof("kind") != kind:
        raise RuntimeError(f"expected a {kind!r} message, got {response}")
    return response


class _Requests:
    """The scenario's Stream requests, serialised once."""

    def __init__(self, spec: LoadSpec) -> None:
        stream_open = pb.StreamOpen(
            model=spec.model,
            idle_timeout_ms=spec.idle_timeout_ms,
            checkpoint_every_chunks=spec.checkpoint_every_chunks,
            include_scores=spec.include_scores,
        )
        self.open = pb.StreamRequest(open=stream_open).SerializeToString()
        chunk = pb.StreamChunk(steps=spec.chunk, values=_values(spec.chunk, spec.features, seed=1))
        self.chunk = pb.StreamRequest(chunk=chunk).SerializeToString()
        self.end = pb.StreamRequest(end=pb.StreamEnd()).SerializeToString()


async def _open(method, requests: _Requests):
    call = method()
    await call.write(requests.open)
    _expect(await call.read(), "opened")
    return call


async def _end(call, requests: _Requests) -> int:
    await call.write(requests.end)
    await call.done_writing()
    return _expect(await call.read(), "ended").ended.steps


async def _stream(method, requests: _Requests, chunk: int, window: _Window) -> tuple[int, int]:
    """Send chunks back to back until the window closes; returns (steps sent, steps the server counted)."""
    call = await _open(method, requests)
    sent = 0
    while (sent_at := time.monotonic()) < window.end:
        await call.write(requests.chunk)
        _expect(await call.read(), "chunk")
        sent += chunk
        window.record(sent_at)
    return sent, await _end(call, requests)


def _v2_requests(spec: LoadSpec, sequence_id: int) -> tuple[bytes, bytes, bytes]:
    """One sequence's ModelInferRequests as perf_analyzer sends them: start, middle, end, serialised."""
    from tritonclient.grpc import service_pb2 as v2  # the bench's V2 rows only

    def request(start: bool, end: bool) -> bytes:
        message = v2.ModelInferRequest(model_name=spec.model, id=str(sequence_id))
        message.parameters["sequence_id"].int64_param = sequence_id
        message.parameters["sequence_start"].bool_param = start
        message.parameters["sequence_end"].bool_param = end
        message.inputs.add(name="x", datatype="FP32", shape=[1, spec.chunk, spec.features])
        for name in ("label", "logits", "scores"):
            message.outputs.add(name=name)
        message.raw_input_contents.append(_values(spec.chunk, spec.features, seed=1))
        return message.SerializeToString()

    return request(True, False), request(False, False), request(False, True)


def _v2_answer(raw: bytes | object) -> None:
    from tritonclient.grpc import service_pb2 as v2

    if raw is grpc.aio.EOF:
        raise RuntimeError("ModelStreamInfer closed by the server while waiting for an answer")
    response = v2.ModelStreamInferResponse.FromString(raw)
    if response.error_message:
        raise RuntimeError(f"ModelStreamInfer answered an error: {response.error_message}")


async def _sequence(method, spec: LoadSpec, sequence_id: int, window: _Window) -> int:
    """One V2 sequence on its own ModelStreamInfer call until the window closes; returns steps sent."""
    start, middle, end = _v2_requests(spec, sequence_id)
    call = method()
    request, sent = start, 0
    while (sent_at := time.monotonic()) < window.end:
        await call.write(request)
        _v2_answer(await call.read())
        request, sent = middle, sent + spec.chunk
        window.record(sent_at)
    await call.write(end)
    _v2_answer(await call.read())
    await call.done_writing()
    return sent + spec.chunk


async def _resend(method, requests: list[bytes], offset: int, window: _Window) -> int:
    """Walk a sequence one step at a time, sending the whole prefix each time; returns steps sent."""
    sent = 0
    index = offset
    while (sent_at := time.monotonic()) < window.end:
        response = pb.ClassifyResponse.FromString(await method(requests[index]))
        if len(response.results) != 1:
            raise RuntimeError(f"Classify answered {len(response.results)} results for 1 sequence")
        sent += index + 1
        index = (index + 1) % len(requests)
        window.record(sent_at)
    return sent


def _resend_requests(spec: LoadSpec) -> list[bytes]:
    values = _values(spec.resend_steps, spec.features, seed=1)
    row = spec.features * 4
    return [
        pb.ClassifyRequest(
            model=spec.model, sequences=[pb.Sequence(steps=steps, values=values[: steps * row])]
        ).SerializeToString()
        for steps in range(1, spec.resend_steps + 1)
    ]


async def _idle(spec: LoadSpec, methods: list, streams: int, conn: Connection) -> ClientTally:
    requests = _Requests(spec)
    gate = asyncio.Semaphore(_OPENING_AT_ONCE)

    async def open_one(index: int):
        async with gate:
            call = await _open(methods[index % len(methods)], requests)
            await call.write(requests.chunk)
            _expect(await call.read(), "chunk")
            return call

    started = time.monotonic()
    calls = await asyncio.gather(*(open_one(index) for index in range(streams)))
    open_s = time.monotonic() - started
    conn.send(("ready", len(calls)))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # the parent says when to close
    server_steps = sum(await asyncio.gather(*(_end(call, requests) for call in calls)))
    return ClientTally(np.empty(0), streams * spec.chunk, server_steps, streams, open_s=open_s)


async def run_share(spec: LoadSpec, streams: int, start_at: float, conn: Connection) -> ClientTally:
    """Run `streams` of the scenario in this process; the window opens at start_at + warm-up (monotonic)."""
    channels = [
        grpc.aio.insecure_channel(spec.target, options=_CHANNEL_OPTIONS)
        for _ in range(math.ceil(streams / spec.streams_per_channel))
    ]
    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if spec.mode == "idle":
            return await _idle(
                spec, [channel.stream_stream(STREAM_METHOD) for channel in channels], streams, conn
            )
        window = _Window(start_at + spec.warmup_s, start_at + spec.warmup_s + spec.duration_s)
        cpu = asyncio.create_task(window.measure_cpu())
        if spec.mode == "stream":
            requests = _Requests(spec)
            methods = [channel.stream_stream(STREAM_METHOD) for channel in channels]
            runs = [_stream(methods[i % len(methods)], requests, spec.chunk, window) for i in range(streams)]
            totals = await asyncio.gather(*runs)
            sent, counted = (sum(column) for column in zip(*totals, strict=True))
        elif spec.mode == "v2":
            methods = [channel.stream_stream(V2_STREAM_METHOD) for channel in channels]
            first_id = os.getpid() << 20  # sequence ids unique across the load processes
            runs = [_sequence(methods[i % len(methods)], spec, first_id + i, window) for i in range(streams)]
            sent = sum(await asyncio.gather(*runs))
            counted = sent
        elif spec.mode == "resend":
            requests = _resend_requests(spec)
            methods = [channel.unary_unary(CLASSIFY_METHOD) for channel in channels]
            # Staggered starts, so the clients' prefixes cover every length at any moment.
            offsets = [i * spec.resend_steps // streams for i in range(streams)]
            runs = [_resend(methods[i % len(methods)], requests, offsets[i], window) for i in range(streams)]
            sent, counted = sum(await asyncio.gather(*runs)), 0
        else:
            raise ValueError(f"load mode {spec.mode!r} is not one of stream, v2, resend, idle")
        await cpu
        return ClientTally(np.asarray(window.latencies), sent, counted, streams, window.cpu_s)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
