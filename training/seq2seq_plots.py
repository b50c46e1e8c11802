"""A seq2seq run's figures: training curves and attention alignments (files only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:
    from seqserve.training.seq2seq import Seq2Seq
    from seqserve.vocabularies import Tokens


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, and validation WER and PER (greedy) per epoch."""
    epochs = [r["epoch"] for r in history]
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r["train_loss"] for r in history], label="train (teacher forced)")
    loss_axis.set(xlabel="epoch", ylabel="negative log-likelihood per phoneme", title="Loss")
    error_axis.plot(epochs, [r["validation_wer_percent"] for r in history], label="validation WER")
    error_axis.plot(epochs, [r["validation_per_percent"] for r in history], label="validation PER")
    error_axis.set(xlabel="epoch", ylabel="%", title="Validation error rates (greedy)")
    for axis in (loss_axis, error_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def greedy_alignment(model: Seq2Seq, tokens: Tokens, word: str) -> tuple[list[str], torch.Tensor]:
    """The greedy output of one word and its attention weights [output steps, letters]."""
    letters, lengths = tokens.input_batch([word])
    x, n = torch.from_numpy(letters), torch.from_numpy(lengths)
    model.eval()
    with torch.no_grad():
        memory, state = model.encode(x, n)
        previous, rows, phonemes = torch.tensor([tokens.start]), [], []
        for _ in range(2 * len(word) + 10):
            log_probs, state, weights = model.step(previous, state, memory, n)
            previous = log_probs.argmax(dim=-1)
            rows.append(weights[0])
            phonemes.append(tokens.outputs[int(previous)])
            if int(previous) == tokens.end:
                break
    return phonemes, torch.stack(rows)


def plot_attention(model: Seq2Seq, tokens: Tokens, words: list[str], path: Path) -> None:
    """Each word's greedy output (rows) against its letters (columns), shaded by attention weight."""
    figure, axes = plt.subplots(1, len(words), figsize=(3.2 * len(words), 3.6), squeeze=False)
    for axis, word in zip(axes[0], words, strict=True):
        phonemes, weights = greedy_alignment(model, tokens, word)
        axis.imshow(weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
        axis.set_xticks(range(len(word)), list(word))
        axis.set_yticks(range(len(phonemes)), phonemes, fontsize=8)
        axis.set_title(word)
    figure.suptitle("Attention of the greedy decode (test words)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
