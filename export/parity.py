"""Parity: the exported graph against PyTorch on real test sequences, whole, chunked and mixed-length.

PyTorch runs each sequence alone, whole; that is the reference. The ONNX model then runs each sequence
(a) alone and whole, (b) in uneven random chunks with hn/cn carried between calls (unidirectional models
only: a bidirectional one cannot stream), (c) as a row of a mixed-length padded batch. Every logit and
every state value must agree within `contract.PARITY_TOLERANCE`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from seqserve import contract
from seqserve.export.errors import ExportError
from seqserve.export.inference import OnnxClassifier, State, pad_batch
from seqserve.training.language_model import CharLanguageModel
from seqserve.training.model import SequenceClassifier

log = logging.getLogger(__name__)

# Padding filled with a large value, not zero, so a graph that let padding reach the cell would be caught.
PAD_PROBE = 1.0e3


@dataclass
class ParityReport:
    """Largest absolute difference from PyTorch per way of running; `chunked` is None if not streamable."""

    sequences: int
    whole: float
    batch: float
    chunked: float | None
    tolerance: float = contract.PARITY_TOLERANCE

    @property
    def max_abs_diff(self) -> float:
        return max(d for d in (self.whole, self.batch, self.chunked) if d is not None)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        chunked = "n/a (not streamable)" if self.chunked is None else f"{self.chunked:.2e}"
        return (
            f"whole {self.whole:.2e}, batch {self.batch:.2e}, chunked {chunked}, {self.sequences} sequences"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "max_abs_diff": self.max_abs_diff, "passed": self.passed}


@dataclass
class _Output:
    """One sequence's logits ([C], or [T, C] for many_to_many) and final state (each [L*D, H])."""

    logits: np.ndarray
    state: State


def _max_diff(got: _Output, want: _Output, relative: bool = False) -> float:
    """Largest absolute difference; `relative`: each difference over max(1, |reference|), so values above
    1 are held to 1e-5 of their size (float32 keeps about 7 digits of a logit of 20 after 500 steps)."""
    pairs = [(got.logits, want.logits), *zip(got.state, want.state, strict=True)]
    if relative:
        return max(float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max()) for a, b in pairs)
    return max(float(np.abs(a - b).max()) for a, b in pairs)


def _torch_reference(model: SequenceClassifier | CharLanguageModel, sequence: np.ndarray) -> _Output:
    with torch.no_grad():
        logits, state = model(torch.from_numpy(sequence)[None], torch.tensor([len(sequence)]))
    return _Output(logits[0].numpy(), tuple(s[:, 0].numpy() for s in state))


def _onnx_whole(session: OnnxClassifier, sequence: np.ndarray) -> _Output:
    logits, state = session.run(sequence[None], np.array([len(sequence)], dtype=np.int32))
    return _Output(logits[0], tuple(s[:, 0] for s in state))


def chunk_bounds(steps: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Uneven random chunks covering [0, steps): between 1 and 6 chunks, sizes drawn by random cut points."""
    chunks = int(rng.integers(1, min(steps, 6) + 1))
    cuts = np.sort(rng.choice(np.arange(1, steps), size=chunks - 1, replace=False)) if chunks > 1 else []
    edges = [0, *map(int, cuts), steps]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _onnx_chunked(session: OnnxClassifier, sequence: np.ndarray, rng: np.random.Generator) -> _Output:
    state = session.initial_state(1)
    outputs = []
    for start, end in chunk_bounds(len(sequence), rng):
        logits, state = session.run(sequence[None, start:end], np.array([end - start], dtype=np.int32), state)
        outputs.append(logits[0])
    # many_to_many emits every step, so chunks join along time; many_to_one's answer is the last chunk's.
    logits = np.concatenate(outputs) if contract.per_step(session.info.task) else outputs[-1]
    return _Output(logits, tuple(s[:, 0] for s in state))


def _onnx_batched(
    session: OnnxClassifier, sequences: list[np.ndarray], batch_size: int, pad_value: float
) -> list[_Output]:
    results = []
    for first in range(0, len(sequences), batch_size):
        group = sequences[first : first + batch_size]
        x, lengths = pad_batch(group, pad_value=pad_value)
        logits, state = session.run(x, lengths)
        for row, steps in enumerate(lengths):
            row_logits = logits[row, :steps] if contract.per_step(session.info.task) else logits[row]
            results.append(_Output(row_logits, tuple(s[:, row] for s in state)))
    return results


def check_parity(
    model: SequenceClassifier | CharLanguageModel,
    session: OnnxClassifier,
    sequences: list[np.ndarray],
    seed: int = 0,
    batch_size: int = 16,
    pad_value: float = PAD_PROBE,
) -> ParityReport:
    """Measure parity on `sequences` (float32 [T_i, F], or a language model's int64 [T_i] token ids); the
    caller decides what a miss means."""
    if not sequences:
        raise ExportError(f"{session.info.name}: parity needs test sequences, got none")
    relative = session.info.is_language_model
    if relative:
        # Padding must be a real token id; the last one, so padding that leaked would still change results.
        # A language model's logits grow with training (|logit| ~ 20) over sequences of hundreds of steps,
        # where 1e-5 absolute is float32's last digit: differences count relative to max(1, |reference|).
        pad_value = session.info.classes - 1
    rng = np.random.default_rng(seed)
    reference = [_torch_reference(model, s) for s in sequences]
    whole = max(
        _max_diff(_onnx_whole(session, s), ref, relative) for s, ref in zip(sequences, reference, strict=True)
    )
    batched = _onnx_batched(session, sequences, batch_size, pad_value)
    batch = max(_max_diff(got, ref, relative) for got, ref in zip(batched, reference, strict=True))
    chunked = None
    if session.info.streamable:
        chunked = max(
            _max_diff(_onnx_chunked(session, s, rng), ref, relative)
            for s, ref in zip(sequences, reference, strict=True)
        )
    report = ParityReport(sequences=len(sequences), whole=whole, batch=batch, chunked=chunked)
    log.debug("parity %s: %s", session.info.name, report.describe())
    return report


def select_sequences(sequences: list[np.ndarray], limit: int) -> list[np.ndarray]:
    """At most `limit` sequences spread evenly over the split, so short and long ones both get checked."""
    if len(sequences) <= limit:
        return list(sequences)
    picks = np.linspace(0, len(sequences) - 1, num=limit).round().astype(int)
    return [sequences[i] for i in picks]


def check_batch_invariance(
    session: OnnxClassifier,
    sequences: list[np.ndarray],
    seed: int = 0,
    batch_size: int = 16,
) -> ParityReport:
    """A model against itself: each sequence alone and whole is the reference; as a row of mixed-length
    batches (padded with PAD_PROBE) and in chunks it must give the same outputs. This is what makes an
    int8 answer independent of what else is in its batch."""
    if not sequences:
        raise ExportError(f"{session.info.name}: batch invariance needs test sequences, got none")
    rng = np.random.default_rng(seed)
    reference = [_onnx_whole(session, s) for s in sequences]
    batched = _onnx_batched(session, sequences, batch_size, PAD_PROBE)
    batch = max(_max_diff(got, ref) for got, ref in zip(batched, reference, strict=True))
    chunked = None
    if session.info.streamable:
        chunked = max(
            _max_diff(_onnx_chunked(session, s, rng), ref)
            for s, ref in zip(sequences, reference, strict=True)
        )
    return ParityReport(sequences=len(sequences), whole=0.0, batch=batch, chunked=chunked)
