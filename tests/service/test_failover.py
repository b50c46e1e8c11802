"""Streams outlive their server: two `seqserve serve` processes share a key; one drains (SIGTERM) or dies
(SIGKILL) under load, and the client's own failover finishes every stream on the other, from its latest
checkpoint, with no answered step lost or duplicated."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqserve.service.client.load import LoadReport, stream_load
from seqserve.service.server.launch import ServerProcess, ServerThread, background_loop, start_server_process
from seqserve.training.datasets import load_dataset

from .reference import Offline

MODEL = "bms-gru"
CHUNK = 4


@pytest.fixture(scope="module")
def motion_streams() -> list[np.ndarray]:
    """32 basic-motions test streams, each played twice over (660 to 980 steps, ~200 chunks): long enough
    that most outlive the grace period even on a fast machine."""
    streams = load_dataset(dataset="basic_motions_stream").test.sequences
    return [np.concatenate([streams[i % len(streams)]] * 2) for i in range(32)]


@pytest.fixture
def pair(service_repository: Path, state_key_file: Path, request: pytest.FixtureRequest) -> Iterator:
    """`pair(*flags)`: servers A and B with the same key (and `flags`), killed at teardown if still up."""
    started: list[ServerProcess] = []

    def start(*flags: str) -> tuple[ServerProcess, ServerProcess]:
        for _ in range(2):
            started.append(
                start_server_process(service_repository, "--state-key-file", str(state_key_file), *flags)
            )
        return started[-2], started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.terminate()


def _metric(server: ServerProcess, name: str) -> float:
    """The sum of a family's samples named `name` on a server's /metrics."""
    with urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _load_then(
    servers: list[ServerProcess], xs: list[np.ndarray], after_chunks: int, act, **options
) -> LoadReport:  # noqa: ANN001
    """Run the load over [A, B]; once A answered `after_chunks` chunks, `act()`; the load's report."""
    a = servers[0]
    future = asyncio.run_coroutine_threadsafe(
        stream_load([s.target for s in servers], MODEL, xs, chunk=CHUNK, concurrency=len(xs), **options),
        background_loop(),
    )
    deadline = time.monotonic() + 120
    while _metric(a, "seqserve_chunks_total") < after_chunks and not future.done():
        assert time.monotonic() < deadline, "server A answered too few chunks"
        time.sleep(0.02)
    act()
    return future.result(timeout=180)


def _check_every_step_once(report: LoadReport, xs: list[np.ndarray]) -> int:
    """Every step answered exactly once; the number of streams that resumed on the other server."""
    for x, result in zip(xs, report.results, strict=True):
        assert result.step_indexes == list(range(len(x))), "an answered step was lost or duplicated"
        assert result.steps == len(x)
    return sum(result.resumes >= 1 for result in report.results)


def test_rolling_update_finishes_every_stream_on_the_other_server(
    pair, motion_streams: list[np.ndarray], offline: Offline
) -> None:
    a, b = pair("--grace-s", "0.3")
    report = _load_then(
        [a, b], motion_streams, 32 * 5, lambda: a.process.send_signal(15), checkpoint_every_chunks=1
    )
    exit_code = a.process.wait(timeout=30)
    stopped = a.output()
    resumed = _check_every_step_once(report, motion_streams)
    for x, result in zip(motion_streams, report.results, strict=True):
        assert result.labels.tolist() == offline.scores(MODEL, x).argmax(axis=-1).tolist()
        assert result.resent_chunks <= 1  # at most the chunk in flight when A ended the stream
    assert exit_code == 0
    # A stream that finished inside the grace period needs no resume; every other one resumed on B.
    ended = re.search(r"seqserve stopped open_streams=0 checkpointed_at_shutdown=(\d+)", stopped)
    assert ended, stopped
    assert 16 <= int(ended[1]) == resumed
    assert _metric(b, "seqserve_streams_active") == 0
    assert _metric(b, "seqserve_resumes_total") == resumed


def test_a_crashed_server_costs_at_most_the_chunks_since_the_last_checkpoint(
    pair, motion_streams: list[np.ndarray]
) -> None:
    xs = motion_streams[:8]
    a, b = pair("--max-batch", "1")  # one row per call: answers do not depend on the neighbours
    future = asyncio.run_coroutine_threadsafe(
        stream_load(b.target, MODEL, xs, chunk=CHUNK, concurrency=8, include_scores=True), background_loop()
    )
    uninterrupted = future.result(timeout=120)
    report = _load_then([a, b], xs, 8 * 10, a.process.kill, checkpoint_every_chunks=4, include_scores=True)
    assert _check_every_step_once(report, xs) == len(xs)
    for whole, resumed in zip(uninterrupted.results, report.results, strict=True):
        # 0 when the crash came right after a checkpoint's answer and before the next chunk went out
        assert 0 <= resumed.resent_chunks <= 4
        assert np.array_equal(resumed.scores, whole.scores)  # exact: max difference 0.0
    assert sum(result.resent_chunks for result in report.results) >= 1, "no stream resent a chunk"
    assert _metric(b, "seqserve_streams_active") == 0


def test_seqserve_stream_fails_over_from_a_dead_target_and_prints_resumes(server: ServerThread) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    done = subprocess.run(
        [sys.executable, "-m", "seqserve.cli", "stream", "--target", dead, "--target", server.target,
         "--model", "jv-gru", "--dataset", "japanese_vowels", "--limit", "6", "--concurrency", "3"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.search(r"resumes: 6 ", done.stdout), done.stdout
