"""`seqserve serve --workers 2`: exact streams from both workers, one /metrics summing them, one drain."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from seqserve.service.server.launch import ServerProcess, run_on_loop, start_server_process
from seqserve.service.server.workers import stream_share
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .reference import Offline
from .streams import END, chunk_request, open_request

# SO_REUSEPORT hashes each connection to a worker: with this many, missing one of 2 workers is 2^-31.
_MAX_CONNECTIONS = 32


@pytest.fixture(scope="module")
def workers(service_repository: Path):  # noqa: ANN201
    server = start_server_process(service_repository, "--workers", "2", "--grace-s", "0.5")
    yield server
    server.process.kill()  # the drain test has stopped it already, unless it failed


def _metric(server: ServerProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M))


async def _stream_on_new_connection(target: str, x: np.ndarray) -> tuple[str, list[pb.StreamResponse]]:
    async with grpc.aio.insecure_channel(target) as channel:
        requests = [open_request("jv-gru"), *(chunk_request(x[i : i + 4]) for i in range(0, len(x), 4)), END]
        responses = [r async for r in pb_grpc.InferenceServiceStub(channel).Stream(iter(requests))]
    return responses[0].opened.stream_id, responses


def test_limits_split_across_workers_add_up() -> None:
    assert [stream_share(20_001, 2, i) for i in range(2)] == [10_001, 10_000]
    assert sum(stream_share(7, 3, i) for i in range(3)) == 7


def test_two_workers_serve_streams_exactly_and_metrics_sum_across_them(
    workers: ServerProcess, offline: Offline, sequences: dict
) -> None:
    vowels = sequences["japanese_vowels"]
    chunks_before = _metric(workers, "seqserve_chunks_total")
    seen: set[str] = set()
    chunks = 0
    for index in range(_MAX_CONNECTIONS):
        x = vowels[index % len(vowels)]
        stream_id, responses = run_on_loop(_stream_on_new_connection(workers.target, x), timeout_s=30)
        seen.add(stream_id.split("-")[0])
        chunks += len(responses) - 2
        final = responses[-1].ended.final_results[-1]
        assert final.label_index == int(offline.scores("jv-gru", x)[-1].argmax())
        assert final.step == len(x) - 1
        if seen == {"w0", "w1"} and index >= 3:
            break
    assert seen == {"w0", "w1"}  # both workers served streams
    assert _metric(workers, "seqserve_chunks_total") - chunks_before == chunks
    assert _metric(workers, "seqserve_streams_active") == 0
    assert _metric(workers, "seqserve_model_info") == 5  # one per served version, not per worker


async def _open_on_every_worker(target: str) -> list:
    """Streams left open mid-sequence until one is open on each worker."""
    calls, channels, seen = [], [], set()
    for _ in range(_MAX_CONNECTIONS):
        channel = grpc.aio.insecure_channel(target)
        call = pb_grpc.InferenceServiceStub(channel).Stream()
        await call.write(open_request("jv-gru"))
        opened = await call.read()
        await call.write(chunk_request(np.zeros((3, 12), dtype=np.float32)))
        await call.read()
        calls.append(call)
        channels.append(channel)
        seen.add(opened.opened.stream_id.split("-")[0])
        if len(seen) == 2:
            break
    return calls, channels


def test_sigterm_drains_every_worker_then_exits_zero(workers: ServerProcess) -> None:
    """Last in the module: it stops the module's server (one start of two workers costs seconds)."""

    async def scenario() -> list:
        calls, channels = await _open_on_every_worker(workers.target)
        workers.process.send_signal(15)
        ended = [(await call.read()).ended.reason for call in calls]
        for channel in channels:
            await channel.close()
        return ended

    ended = run_on_loop(scenario(), timeout_s=60)
    exit_code = workers.process.wait(timeout=60)
    assert len(ended) >= 2 and set(ended) == {pb.END_REASON_SERVER_SHUTDOWN}
    assert exit_code == 0
