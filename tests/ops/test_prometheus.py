"""A real Prometheus (Debian's package) scrapes a real seqserve while a test set streams through it."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.request import urlopen

import grpc
import numpy as np
import pytest

from bench.prometheus_server import Prometheus, PrometheusStartError
from bench.prometheus_server import start_prometheus as start_prometheus_process
from seqserve.training.datasets import load_dataset
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

from .image_entrypoint import DOCKER_DIR

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="prometheus/promtool not installed: `apt-get install prometheus` (.ci/run does it where it can)",
)

MODEL = "jv-gru"
CHUNK_STEPS = 4
SEQUENCES_PER_PHASE = 40
CONCURRENCY = 8
SCRAPE_INTERVAL = "1s"
P99_CHUNK_LATENCY = (
    "histogram_quantile(0.99, sum by (le) (rate(seqserve_chunk_latency_seconds_bucket"
    f'{{model="{MODEL}"}}[1m])))'
)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """`start(metrics_address)`: Prometheus scraping that address every second with docker/'s rules."""
    started: list[Prometheus] = []

    def start(metrics_address: str) -> Prometheus:
        try:
            prometheus = start_prometheus_process(metrics_address, tmp_path / "prometheus", SCRAPE_INTERVAL)
        except PrometheusStartError as error:
            pytest.fail(str(error))
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


def stream_sequence(stub: InferenceServiceStub, sequence: np.ndarray) -> int:
    """One stream, CHUNK_STEPS steps a chunk; the steps the server says it received."""

    def requests() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(open=pb.StreamOpen(model=MODEL))
        for start in range(0, len(sequence), CHUNK_STEPS):
            chunk = np.ascontiguousarray(sequence[start : start + CHUNK_STEPS], dtype="<f4")
            yield pb.StreamRequest(chunk=pb.StreamChunk(steps=len(chunk), values=chunk.tobytes()))
        yield pb.StreamRequest(end=pb.StreamEnd())

    responses = list(stub.Stream(requests(), timeout=60))
    ended = responses[-1].ended
    assert ended.reason == pb.END_REASON_COMPLETED, ended
    return ended.steps


def stream_all(target: str, sequences: list[np.ndarray]) -> int:
    with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(CONCURRENCY) as pool:
        stub = InferenceServiceStub(channel)
        steps = sum(pool.map(lambda sequence: stream_sequence(stub, sequence), sequences))
    assert steps == sum(len(sequence) for sequence in sequences)
    return steps


def test_prometheus_scrapes_steps_and_latency(start_image_server, start_prometheus) -> None:
    server = start_image_server(DOCKER_DIR / "Dockerfile")
    prometheus = start_prometheus(server.metrics_target)
    prometheus.wait_for('up{job="seqserve"}', lambda up: up == 1)
    test_set = load_dataset("japanese_vowels").test.sequences

    # Two phases with a scrape between them, so rate() over the latency buckets sees an increase.
    sent = stream_all(server.target, test_set[:SEQUENCES_PER_PHASE])
    steps_query = f'sum(seqserve_steps_total{{model="{MODEL}"}})'
    prometheus.wait_for(steps_query, lambda steps: steps >= sent)
    sent += stream_all(server.target, test_set[SEQUENCES_PER_PHASE : 2 * SEQUENCES_PER_PHASE])
    scraped = prometheus.wait_for(steps_query, lambda steps: steps >= sent)
    assert scraped == sent

    p99 = prometheus.wait_for(P99_CHUNK_LATENCY, math.isfinite)
    assert 0 < p99 < 10
    assert prometheus.value(f'sum(seqserve_chunks_total{{model="{MODEL}"}})') == sum(
        math.ceil(len(sequence) / CHUNK_STEPS) for sequence in test_set[: 2 * SEQUENCES_PER_PHASE]
    )
    assert prometheus.wait_for(f'seqserve:chunk_latency_seconds:p99_1m{{model="{MODEL}"}}', math.isfinite) > 0
    assert (
        prometheus.wait_for(f'sum(seqserve_streams_active{{model="{MODEL}"}})', lambda active: active == 0)
        == 0
    )


def test_exposition_passes_promtool(start_image_server) -> None:
    server = start_image_server(DOCKER_DIR / "Dockerfile")
    stream_all(server.target, load_dataset("japanese_vowels").test.sequences[:4])
    exposition = urlopen(server.metrics_url, timeout=10).read()
    assert b"seqserve_chunk_latency_seconds_bucket" in exposition
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=30)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()


def test_shipped_prometheus_config_is_valid() -> None:
    check = subprocess.run(
        ["promtool", "check", "config", str(DOCKER_DIR / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout
