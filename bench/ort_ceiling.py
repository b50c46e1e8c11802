"""Ceiling (a): onnxruntime in-process, no network; the recurrent state is carried from call to call."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from seqserve.contract import INPUT_LENGTHS, INPUT_X, OUTPUT_LOGITS, ModelInfo, state_inputs, state_outputs


@dataclass
class OrtResult:
    batch: int
    chunk: int
    calls: int
    steps: int  # batch * chunk * calls
    seconds: float
    steps_per_s: float
    cpu_us_per_step: float = 0.0  # thread CPU: with 1 intra-op thread onnxruntime computes on the caller


def measure_ort(
    session, info: ModelInfo, batch: int, chunk: int, duration_s: float, seed: int = 0
) -> OrtResult:
    """Call the session back to back for `duration_s` on [batch, chunk, features] inputs."""
    x = np.random.default_rng(seed).standard_normal((batch, chunk, info.features)).astype(np.float32)
    feeds = {INPUT_X: x, INPUT_LENGTHS: np.full(batch, chunk, np.int32)}
    names_in, names_out = state_inputs(info.cell), [OUTPUT_LOGITS, *state_outputs(info.cell)]
    state = [np.zeros(info.state_shape(batch), np.float32) for _ in names_in]
    feeds.update(zip(names_in, state, strict=True))
    session.run(names_out, feeds)  # first call allocates; keep it out of the figure
    calls = 0
    cpu_start = time.thread_time()
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration_s:
        _, *state = session.run(names_out, feeds)
        feeds.update(zip(names_in, state, strict=True))
        calls += 1
    steps = batch * chunk * calls
    cpu_us = (time.thread_time() - cpu_start) / steps * 1e6
    return OrtResult(batch, chunk, calls, steps, elapsed, steps / elapsed, cpu_us)
