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
    """Wall time of one onnxruntime call in milliseconds, one intra-op thread, best of several passes."""

    single_ms: float  # one whole test sequence per call, averaged over the first test sequences
    batch_ms: float  # `batch` test sequences padded into one call
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


def _best_ms(call: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` timed calls: other processes on a shared CPU only ever add time."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return min(timings) * 1e3


def measure_latency(
    session: OnnxClassifier,
    sequences: list[np.ndarray],
    batch: int = 32,
    singles: int = 20,
    repeats: int = 15,
) -> Latency:
    """Latency on the same test inputs for every model measured, after a warm-up pass."""
    single_inputs = [(s[None], np.array([len(s)], dtype=np.int32)) for s in sequences[:singles]]
    batched = pad_batch(sequences[:batch])

    def run_singles() -> None:
        for args in single_inputs:
            session.run(*args)

    run_singles()
    session.run(*batched)
    return Latency(
        single_ms=_best_ms(run_singles, repeats) / len(single_inputs),
        batch_ms=_best_ms(lambda: session.run(*batched), repeats),
        batch=len(batched[1]),
    )


def compare_latency(
    first: OnnxClassifier,
    second: OnnxClassifier,
    sequences: list[np.ndarray],
    batch: int = 32,
    singles: int = 20,
    repeats: int = 15,
) -> tuple[Latency, Latency]:
    """Both sessions timed in alternating passes on the same inputs, so a busy neighbour slows both alike
    and the ratio between them holds even when the absolute figures are inflated."""
    single_inputs = [(s[None], np.array([len(s)], dtype=np.int32)) for s in sequences[:singles]]
    batched = pad_batch(sequences[:batch])
    timings: list[dict[str, list[float]]] = [{"single": [], "batch": []}, {"single": [], "batch": []}]

    def run_singles(session: OnnxClassifier) -> None:
        for args in single_inputs:
            session.run(*args)

    for session in (first, second):  # warm-up
        run_singles(session)
        session.run(*batched)
    for _ in range(repeats):
        for index, session in enumerate((first, second)):
            single = _best_ms(lambda s=session: run_singles(s), 1) / len(single_inputs)
            timings[index]["single"].append(single)
            timings[index]["batch"].append(_best_ms(lambda s=session: s.run(*batched), 1))
    first_latency, second_latency = (
        Latency(single_ms=min(t["single"]), batch_ms=min(t["batch"]), batch=len(batched[1])) for t in timings
    )
    return first_latency, second_latency
