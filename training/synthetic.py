"""Seeded synthetic long-range task for the vanishing-gradient study. NumPy only.

Each sequence is T steps of Gaussian noise over `features` channels, except its first `cue_steps` steps,
which carry the class as a one-hot pattern on the first `classes` channels (scaled by `cue_scale`, noise
added). The label is decided by those first steps alone, so a many-to-one model that answers at step T
must carry the cue across T - cue_steps steps of noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqserve.training.datasets import DatasetSplits, SequenceSet


@dataclass(frozen=True)
class LongRangeTask:
    length: int  # T
    classes: int = 4
    features: int = 8
    cue_steps: int = 3
    cue_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.classes > self.features:
            raise ValueError(f"{self.classes} classes need at least as many features, got {self.features}")
        if not 1 <= self.cue_steps < self.length:
            raise ValueError(f"cue_steps must be in [1, T), got {self.cue_steps} for T={self.length}")

    @property
    def chance(self) -> float:
        return 1.0 / self.classes

    def sample(self, count: int, rng: np.random.Generator) -> SequenceSet:
        labels = rng.integers(0, self.classes, size=count)
        x = rng.standard_normal((count, self.length, self.features)).astype(np.float32)
        x[np.arange(count), : self.cue_steps, labels] += self.cue_scale
        return SequenceSet(list(x), [np.asarray(label, dtype=np.int64) for label in labels])

    def splits(self, sizes: tuple[int, int, int], seed: int) -> DatasetSplits:
        """Train/validation/test sets of the given sizes, all drawn from one seeded generator."""
        rng = np.random.default_rng([seed, self.length])
        train, validation, test = (self.sample(size, rng) for size in sizes)
        labels = [f"class_{i}" for i in range(self.classes)]
        name = f"long_range_T{self.length}"
        return DatasetSplits(name, "many_to_one", labels, self.features, train, validation, test)
