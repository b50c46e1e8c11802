"""Words to pronunciations with a PyTorch Seq2Seq: its encoder, and its decoder step as the step function
of seqserve/beam_search.py (the search every backend shares), batched across words and beams."""

from __future__ import annotations

import numpy as np
import torch

from seqserve.beam_search import RowsOf, SearchOptions, State, StepFunction, translate
from seqserve.training.seq2seq import Seq2Seq
from seqserve.vocabularies import Tokens, Translation


def torch_step(model: Seq2Seq, memory: torch.Tensor, lengths: torch.Tensor) -> StepFunction:
    """The model's decoder step over NumPy rows, each reading its own word's memory."""
    rows_of = RowsOf(lambda owner: (memory[torch.from_numpy(owner)], lengths[torch.from_numpy(owner)]))

    def step(previous: np.ndarray, state: State, owner: np.ndarray) -> tuple[np.ndarray, State]:
        row_memory, row_lengths = rows_of(owner)
        with torch.no_grad():
            log_probs, new, _ = model.step(
                torch.from_numpy(previous), tuple(torch.from_numpy(s) for s in state), row_memory, row_lengths
            )
        return log_probs.numpy(), tuple(s.numpy() for s in new)

    return step


def decode_words(
    model: Seq2Seq,
    tokens: Tokens,
    words: list[str],
    options: SearchOptions | None = None,
    batch_size: int = 256,
) -> list[list[Translation]]:
    """Each word's n-best pronunciations, best first: greedy search when `options` is None, else beam."""
    model.eval()

    def encode(inputs: np.ndarray, lengths: np.ndarray) -> tuple[StepFunction, State]:
        lengths_t = torch.from_numpy(lengths)
        with torch.no_grad():
            memory, state = model.encode(torch.from_numpy(inputs), lengths_t)
        return torch_step(model, memory, lengths_t), tuple(s.numpy() for s in state)

    return translate(encode, tokens, words, options, batch_size)
