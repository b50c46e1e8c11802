"""Classification metrics from predicted and true class indices. NumPy only."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def classification_report(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/support and the confusion matrix, as plain JSON values.

    A class never predicted has precision 0.0 (and one never present has recall 0.0) rather than NaN,
    so the report stays valid JSON.
    """
    matrix = confusion_matrix(truth, predicted, len(labels))
    hits = np.diag(matrix).astype(np.float64)
    predicted_counts, true_counts = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted_counts, out=np.zeros_like(hits), where=predicted_counts > 0)
    recall = np.divide(hits, true_counts, out=np.zeros_like(hits), where=true_counts > 0)
    return {
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "support": int(n)}
            for label, p, r, n in zip(labels, precision, recall, true_counts, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
    }
