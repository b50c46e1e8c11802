"""PNG figures for a run folder and for the vanishing-gradient study (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from seqserve.training.loop import EpochRecord


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(history: Sequence[EpochRecord], path: Path) -> None:
    epochs = [r.epoch for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label="train")
    loss_axis.plot(epochs, [r.validation_loss for r in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    accuracy_axis.plot(epochs, [r.train_accuracy for r in history], label="train")
    accuracy_axis.plot(epochs, [r.validation_accuracy for r in history], label="validation")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    _save(figure, path)


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    counts = np.asarray(matrix)
    size = max(4.0, 0.55 * len(labels) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(counts, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, column), value in np.ndenumerate(counts):
        axis.text(
            column, row, str(value), ha="center", va="center", color="white" if value > threshold else "black"
        )
    _save(figure, path)


def plot_gradient_norms(history: Sequence[EpochRecord], path: Path) -> None:
    epochs = [r.epoch for r in history]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(epochs, [r.grad_norm_mean for r in history], label="mean over steps")
    axis.plot(epochs, [r.grad_norm_max for r in history], label="max over steps", alpha=0.7)
    axis.set(xlabel="epoch", ylabel="gradient norm (before clipping)", title="Gradient norm", yscale="log")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_accuracy_vs_length(results: dict[str, dict[int, float]], chance: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for cell, by_length in results.items():
        lengths = sorted(by_length)
        axis.plot(lengths, [by_length[t] for t in lengths], marker="o", label=cell)
    axis.axhline(chance, color="grey", linestyle="--", label="chance")
    axis.set(xlabel="sequence length T", ylabel="test accuracy", title="Long-range task", ylim=(0, 1.02))
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_gradient_through_time(norms: dict[str, np.ndarray], path: Path, title: str) -> None:
    """One line per cell: ||dloss/dh_t|| against t."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for cell, values in norms.items():
        axis.plot(np.arange(len(values)), values, label=cell)
    axis.set(xlabel="time step t", ylabel="||∂loss/∂h_t||", title=title, yscale="log")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    _save(figure, path)


def plot_step_traces(traces: dict[str, Sequence[float]], path: Path, title: str, ylabel: str) -> None:
    """Per optimiser step values (gradient norms, losses) of several runs, log scale."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, values in traces.items():
        axis.plot(np.arange(1, len(values) + 1), values, label=name, alpha=0.85)
    axis.set(xlabel="optimiser step", ylabel=ylabel, title=title, yscale="log")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    _save(figure, path)


def plot_language_model_curves(curve: Sequence, baselines: dict[str, dict[str, float]], path: Path) -> None:
    """Train and validation nats/char against optimiser steps, with the baselines as flat lines."""
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [point.step for point in curve]
    axis.plot(steps, [point.train_loss for point in curve], marker=".", label="train")
    axis.plot(steps, [point.validation_loss for point in curve], marker=".", label="validation")
    for (name, figures), style in zip(baselines.items(), ("--", ":"), strict=False):
        axis.axhline(figures["nats_per_char"], color="grey", linestyle=style, label=f"{name} (validation)")
    axis.set(xlabel="optimiser step", ylabel="nats per character", title="Character language model")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)
