"""Predictions a user can take away: one record per sequence (many-to-one) or per step (many-to-many),
written as JSON Lines (`.jsonl`) or CSV (`.csv`) by `seqserve predict`, `classify --output` and
`stream --output`. NumPy and the standard library only: the serving image writes these too.

A record holds the sequence's index in the input (file order, or the split's order), the step (per-step
records only), the predicted label, its probability, the true label when the input has one, and the
probability of every class (softmax, in the model's label order).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


class OutputError(ValueError):
    """`--output` names a file that cannot or should not be written; nothing has run yet."""


@dataclass
class SequencePrediction:
    """One sequence's answer: label indices [1] (many-to-one) or [T] (many-to-many), probabilities
    [len(labels), classes] when known, and the true label indices when the input has them."""

    index: int
    labels: np.ndarray
    scores: np.ndarray | None = None
    targets: np.ndarray | None = None


def check_output(path: Path | None, force: bool) -> Path | None:
    """Refuse, before any work, an output of unknown format, in a missing folder, a folder, or an existing
    file without `force`."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise OutputError(f"--output {path}: unknown format {path.suffix!r}; expected a .jsonl or .csv file")
    if path.is_dir():
        raise OutputError(f"--output {path} is a folder; expected a file name ending .jsonl or .csv")
    if not path.parent.is_dir():
        raise OutputError(f"--output {path}: folder {path.parent} does not exist")
    if path.exists() and not force:
        raise OutputError(f"--output {path} already exists; pass --force to replace it")
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def records(
    predictions: Sequence[SequencePrediction], model_labels: Sequence[str], per_step: bool
) -> Iterator[dict]:
    """Plain dicts, one per sequence or per step, in input order."""
    for prediction in predictions:
        labels = np.atleast_1d(prediction.labels)
        targets = None if prediction.targets is None else np.atleast_1d(prediction.targets)
        for position, label in enumerate(labels.tolist()):
            record: dict = {"sequence": prediction.index}
            if per_step:
                record["step"] = position
            record["label"] = model_labels[label]
            if prediction.scores is not None:
                record["probability"] = round(float(prediction.scores[position][label]), 6)
            if targets is not None and len(targets) == len(labels):
                record["true_label"] = model_labels[int(targets[position])]
            if prediction.scores is not None:
                record["probabilities"] = {
                    name: round(float(p), 6)
                    for name, p in zip(model_labels, prediction.scores[position], strict=True)
                }
            yield record


def _write_csv(handle: IO[str], rows: Iterator[dict]) -> int:
    writer = None
    count = 0
    for row in rows:
        flat = {k: v for k, v in row.items() if k != "probabilities"}
        flat.update({f"p_{name}": p for name, p in row.get("probabilities", {}).items()})
        if writer is None:
            writer = csv.DictWriter(handle, fieldnames=list(flat))
            writer.writeheader()
        writer.writerow(flat)
        count += 1
    return count


def write_predictions(
    path: Path | None,
    predictions: Sequence[SequencePrediction],
    model_labels: Sequence[str],
    per_step: bool,
) -> int:
    """Write every record to `path` (by its suffix), or JSON Lines to stdout when `path` is None; returns
    the number of records."""
    rows = records(predictions, model_labels, per_step)
    if path is None:
        return _write_jsonl(sys.stdout, rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        if FORMATS[path.suffix.lower()] == "csv":
            return _write_csv(handle, rows)
        return _write_jsonl(handle, rows)


def _write_jsonl(handle: IO[str], rows: Iterator[dict]) -> int:
    count = 0
    for row in rows:
        handle.write(json.dumps(row) + "\n")
        count += 1
    return count


def in_model_order(
    targets: Sequence[np.ndarray], data_labels: Sequence[str], model_labels: Sequence[str]
) -> list[np.ndarray]:
    """Targets indexing the data's label names, re-indexed into the model's (the orders may differ)."""
    missing = sorted(set(data_labels) - set(model_labels))
    if missing:
        raise ValueError(f"data labels {missing} are not among the model's labels {list(model_labels)}")
    mapping = np.array([list(model_labels).index(label) for label in data_labels])
    return [mapping[np.asarray(t)] for t in targets]
