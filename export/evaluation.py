"""Measure an exported model on the run's test split: accuracy and in-process onnxruntime latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from seqserve.export.inference import OnnxClassifier, pad_batch


@dataclass
class Predictions:
    """Predicted class per sequence ([] for many_to_one) or per valid step ([T_i]) for many_to_many."""

    labels: list[np.ndarray]

    def accuracy(self, targets: list[np.ndarray]) -> float:
        """Per sequence for many_to_one, per step for many_to_many (every valid step counts once)."""
        correct = sum(int((p == t).sum()) for p, t in zip(self.labels, targets, strict=True))
        return correct / sum(int(np.size(t)) for t in targets)

    def agreement(self, other: Predictions) -> float:
        """Share of predictions equal to `other`'s, counted like `accuracy`."""
        return self.accuracy(other.labels)


def predict(session: OnnxClassifier, sequences: list[np.ndarray], batch_size: int = 64) -> Predictions:
    # Sorting by length keeps padding small; the answers go back to the caller's order.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    labels: list[np.ndarray] = [np.empty(0)] * len(sequences)
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        x, lengths = pad_batch([sequences[i] for i in rows])
        logits, _ = session.run(x, lengths)
        predicted = logits.argmax(axis=-1)
        for row, index in enumerate(rows):
            labels[index] = predicted[row, : lengths[row]] if predicted.ndim == 2 else predicted[row]
    return Predictions(labels)


@dataclass
class Latency:
    """Median wall time of one onnxruntime call, in milliseconds, one intra-op thread."""

    single_ms: float  # one whole test sequence per call
    batch_ms: float  # `batch` test sequences padded into one call
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e3)


def measure_latency(
    session: OnnxClassifier, sequences: list[np.ndarray], batch: int = 32, repeats: int = 20
) -> Latency:
    """Median per-call latency over the same inputs for every model measured, after one warm-up call each."""
    singles = [(s[None], np.array([len(s)], dtype=np.int32)) for s in sequences[:repeats]]
    batched = pad_batch(sequences[:batch])
    session.run(*singles[0])
    session.run(*batched)
    single_times = [_median_ms(lambda args=args: session.run(*args), 3) for args in singles]
    return Latency(
        single_ms=float(np.median(single_times)),
        batch_ms=_median_ms(lambda: session.run(*batched), repeats),
        batch=len(batched[1]),
    )
