"""Streamed results equal one offline onnxruntime call over the whole sequence, for every chunk size."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from seqserve.service.client.client import AsyncClient
from seqserve.service.client.load import stream_load, stream_sequence
from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2 as pb

from .reference import MODEL_DATA, Offline

TOLERANCE = 1e-5  # contract.PARITY_TOLERANCE: batched rows may sum in another order than a lone one


async def _every_chunk_size(target: str, model: str, xs: list[np.ndarray]) -> list:
    async with AsyncClient(target) as client:
        jobs = [(x, chunk) for x in xs for chunk in range(1, len(x) + 1)]
        results = await asyncio.gather(
            *(stream_sequence(client, model, x, c, include_scores=True) for x, c in jobs)
        )
    return list(zip(jobs, results, strict=True))


@pytest.mark.parametrize("model", ["jv-gru", "jv-lstm", "bms-gru", "bms-lstm"])
def test_streamed_equals_offline_for_every_chunk_size(
    server: ServerThread, offline: Offline, sequences: dict, model: str
) -> None:
    xs = sequences[MODEL_DATA[model]][:2]
    for (x, chunk), result in server.call(_every_chunk_size(server.target, model, xs)):
        expected = offline.scores(model, x)
        np.testing.assert_allclose(result.scores, expected, atol=TOLERANCE, err_msg=f"chunk {chunk}")
        assert result.labels.tolist() == expected.argmax(axis=-1).tolist()
        assert result.steps == len(x) and result.end_reason == pb.END_REASON_COMPLETED
        if expected.shape[0] == 1:  # many-to-one: the running label after each chunk is the prefix's label
            prefixes = range(chunk, len(x) + chunk, chunk)
            assert result.running == [
                int(offline.scores(model, x[: min(n, len(x))]).argmax()) for n in prefixes
            ]


def test_bidirectional_model_buffers_and_answers_at_end(
    server: ServerThread, offline: Offline, sequences: dict
) -> None:
    xs = sequences["japanese_vowels"][:6]

    async def run() -> list:
        async with AsyncClient(server.target) as client:
            info = await client.model("jv-bigru")
            assert not info.streamable and info.bidirectional
            return await asyncio.gather(
                *(stream_sequence(client, "jv-bigru", x, 4, include_scores=True) for x in xs)
            )

    for x, result in zip(xs, server.call(run()), strict=True):
        assert result.running == []  # nothing before the end
        np.testing.assert_allclose(result.scores, offline.scores("jv-bigru", x), atol=TOLERANCE)


def test_32_concurrent_streams_with_different_chunk_sizes_are_correct_and_batched(
    make_server, offline: Offline, sequences: dict
) -> None:
    running = make_server(max_delay_ms=100.0)  # wide enough that a loaded machine still fills calls
    xs = sequences["japanese_vowels"][:32]
    chunks = [4 + i % 4 for i in range(32)]  # 4 to 7 steps: close enough in length to share calls
    report = running.call(
        stream_load(running.target, "jv-gru", xs, chunk=chunks, concurrency=32, include_scores=True)
    )
    for x, result in zip(xs, report.results, strict=True):
        np.testing.assert_allclose(result.scores, offline.scores("jv-gru", x), atol=TOLERANCE)
    registry = running.running.metrics.registry
    labels = {"model": "jv-gru", "version": "1"}
    calls = registry.get_sample_value("seqserve_batch_size_count", labels)
    rows = registry.get_sample_value("seqserve_batch_size_sum", labels)
    assert rows == sum(-(-len(x) // c) for x, c in zip(xs, chunks, strict=True))  # every chunk ran once
    over_8 = calls - registry.get_sample_value("seqserve_batch_size_bucket", {**labels, "le": "8.0"})
    assert rows / calls > 3 and over_8 > 0, f"{rows} rows in {calls} calls, {over_8} over 8 rows: not batched"
    assert registry.get_sample_value("seqserve_steps_total", labels) == sum(len(x) for x in xs)
    assert registry.get_sample_value("seqserve_streams_total", {**labels, "reason": "completed"}) == 32


def test_a_paced_stream_sends_no_faster_than_its_interval_and_stays_exact(
    server: ServerThread, offline: Offline, sequences: dict
) -> None:
    x = sequences["basic_motions_stream"][0][:40]

    async def run():  # noqa: ANN202
        async with AsyncClient(server.target) as client:
            started = time.perf_counter()
            paced = stream_sequence(client, "bms-gru", x, 4, include_scores=True, chunk_interval_s=0.05)
            result = await paced
            return result, time.perf_counter() - started

    result, elapsed_s = server.call(run())
    np.testing.assert_allclose(result.scores, offline.scores("bms-gru", x), atol=TOLERANCE)
    assert len(result.latencies_s) == 10
    assert elapsed_s >= 9 * 0.05, "the tenth chunk goes 9 intervals after the first, not sooner"
