"""The one load client that drives every server, run inside each load-generator process. Modes stream,
resend and idle use seqserve's own Python client (`AsyncClient`), the one users get; mode `v2` drives
seqserve's KServe V2 endpoint the way perf_analyzer does (one sequence per ModelStreamInfer stream, Triton's
sequence parameters, on the raw channel: another protocol), so the two protocols can be compared.

Each stream keeps one chunk in flight (send, wait for its answer, send the next), so a chunk's latency is
the time from its send to its answer. Only answers to chunks sent inside the measuring window count. What
the client costs per message beside the stubs is bench/client_cost.py's figure.
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

from seqserve.service.client.client import AsyncClient
from seqserve.service.client.streams import AsyncStream

V2_STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
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
    return _array(steps, features, seed).tobytes()


def _array(steps: int, features: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, features)).astype("<f4")


def _stream(client: AsyncClient, spec: LoadSpec) -> AsyncStream:
    return client.stream(
        spec.model,
        checkpoint_every=spec.checkpoint_every_chunks,
        probabilities=spec.include_scores,
        idle_timeout_s=spec.idle_timeout_ms / 1000 if spec.idle_timeout_ms else None,
    )


async def _streamed(client: AsyncClient, spec: LoadSpec, window: _Window) -> tuple[int, int]:
    """Send chunks back to back until the window closes; returns (steps sent, steps the server counted)."""
    x = _array(spec.chunk, spec.features, seed=1)
    stream = _stream(client, spec)
    sent = 0
    while (sent_at := time.monotonic()) < window.end:
        await stream.send(x)
        sent += spec.chunk
        window.record(sent_at)
    return sent, (await stream.end()).steps


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


async def _resend(client: AsyncClient, spec: LoadSpec, offset: int, window: _Window) -> int:
    """Walk a sequence one step at a time, sending the whole prefix each time; returns steps sent."""
    values = _array(spec.resend_steps, spec.features, seed=1)
    sent = 0
    index = offset
    while (sent_at := time.monotonic()) < window.end:
        found = await client.classify(spec.model, [values[: index + 1]])
        if len(found) != 1:
            raise RuntimeError(f"Classify answered {len(found)} results for 1 sequence")
        sent += index + 1
        index = (index + 1) % spec.resend_steps
        window.record(sent_at)
    return sent


async def _idle(spec: LoadSpec, client: AsyncClient, streams: int, conn: Connection) -> ClientTally:
    x = _array(spec.chunk, spec.features, seed=1)
    gate = asyncio.Semaphore(_OPENING_AT_ONCE)

    async def open_one() -> AsyncStream:
        async with gate:
            stream = _stream(client, spec)
            await stream.send(x)
            return stream

    started = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(streams)))
    open_s = time.monotonic() - started
    conn.send(("ready", len(opened)))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # the parent says when to close
    ended = await asyncio.gather(*(stream.end() for stream in opened))
    server_steps = sum(end.steps for end in ended)
    return ClientTally(np.empty(0), streams * spec.chunk, server_steps, streams, open_s=open_s)


async def run_share(spec: LoadSpec, streams: int, start_at: float, conn: Connection) -> ClientTally:
    """Run `streams` of the scenario in this process; the window opens at start_at + warm-up (monotonic)."""
    connections = math.ceil(streams / spec.streams_per_channel)
    async with AsyncClient(spec.target, connections=connections) as client:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if spec.mode == "idle":
            return await _idle(spec, client, streams, conn)
        window = _Window(start_at + spec.warmup_s, start_at + spec.warmup_s + spec.duration_s)
        cpu = asyncio.create_task(window.measure_cpu())
        if spec.mode == "stream":
            totals = await asyncio.gather(*(_streamed(client, spec, window) for _ in range(streams)))
            sent, counted = (sum(column) for column in zip(*totals, strict=True))
        elif spec.mode == "v2":
            channels = [
                grpc.aio.insecure_channel(spec.target, options=_CHANNEL_OPTIONS) for _ in range(connections)
            ]
            try:
                methods = [channel.stream_stream(V2_STREAM_METHOD) for channel in channels]
                first_id = os.getpid() << 20  # sequence ids unique across the load processes
                runs = [
                    _sequence(methods[i % len(methods)], spec, first_id + i, window) for i in range(streams)
                ]
                sent = sum(await asyncio.gather(*runs))
                counted = sent
            finally:
                await asyncio.gather(*(channel.close() for channel in channels))
        elif spec.mode == "resend":
            # Staggered starts, so the clients' prefixes cover every length at any moment.
            offsets = [i * spec.resend_steps // streams for i in range(streams)]
            sent = sum(await asyncio.gather(*(_resend(client, spec, offset, window) for offset in offsets)))
            counted = 0
        else:
            raise ValueError(f"load mode {spec.mode!r} is not one of stream, v2, resend, idle")
        await cpu
        return ClientTally(np.asarray(window.latencies), sent, counted, streams, window.cpu_s)
