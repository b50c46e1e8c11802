"""Variable-length sequences to padded tensors with lengths; the model packs them, so padding is inert."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from seqserve.training.datasets import SequenceSet

IGNORE_INDEX = -100  # many-to-many targets at padded steps; cross_entropy skips them


@dataclass
class Batch:
    x: torch.Tensor  # float32 [B, T_max, F], zero-padded
    lengths: torch.Tensor  # int64 [B]
    targets: torch.Tensor  # int64 [B] (many-to-one) or [B, T_max] padded with IGNORE_INDEX


def collate(sequences: list[np.ndarray], targets: list[np.ndarray]) -> Batch:
    lengths = [len(s) for s in sequences]
    steps, features = max(lengths), sequences[0].shape[1]
    x = np.zeros((len(sequences), steps, features), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        x[row, : len(sequence)] = sequence
    if targets[0].ndim == 0:
        y = np.asarray(targets, dtype=np.int64)
    else:
        y = np.full((len(targets), steps), IGNORE_INDEX, dtype=np.int64)
        for row, target in enumerate(targets):
            y[row, : len(target)] = target
    return Batch(torch.from_numpy(x), torch.tensor(lengths, dtype=torch.int64), torch.from_numpy(y))


def batches(data: SequenceSet, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Batches in a shuffled order when a generator is given, else in data order."""
    order = (
        torch.randperm(len(data), generator=generator).tolist() if generator is not None else range(len(data))
    )
    order = list(order)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        yield collate([data.sequences[i] for i in chosen], [data.targets[i] for i in chosen])


def batch_count(data: SequenceSet, batch_size: int) -> int:
    return -(-len(data) // batch_size)


def feature_statistics(data: SequenceSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation over every step of every sequence."""
    steps = np.concatenate(data.sequences).astype(np.float64)
    return torch.tensor(steps.mean(axis=0), dtype=torch.float32), torch.tensor(
        steps.std(axis=0), dtype=torch.float32
    )
