"""Data sets as train/validation/test splits of raw float32 sequences. NumPy only (no torch).

`load_dataset(dataset=...)` gives a shipped set, `load_dataset(data_file=...)` a user's own file; the same
arguments always give the same splits, so a checkpoint that records them (`payload["data"]`) lets the
exporter and the stream client rebuild the exact test split.

- `japanese_vowels`: the train file's cases are split 85/15 into train/validation (stratified, seeded);
  the test file is the test split.
- `basic_motions_stream`: see `basic_motions_stream.py`.
- a user's `.ts`/`.npz`/`.csv` file: one file, split 70/15/15 into train/validation/test (stratified by
  label for many-to-one, seeded).
- `shakespeare_chars` or a user's `.txt` file: a character corpus (`text.py`), given here as token
  sequences for a language model (task `language_model`); training reads the text itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from seqserve.contract import TASKS
from seqserve.training.readers import DataError, LabelledFile, read_file, read_ts

__all__ = ["DataError", "DatasetSplits", "SequenceSet", "SHIPPED_DATASETS", "data_dir", "load_dataset"]

SHIPPED_DATASETS: tuple[str, ...] = ("japanese_vowels", "basic_motions_stream", "shakespeare_chars")
DATA_DIR_ENV = "SEQSERVE_DATA_DIR"  # where the shipped .ts files are, for installs without the repo
JAPANESE_VOWELS_VALIDATION = 0.15
USER_FILE_VALIDATION = 0.15
USER_FILE_TEST = 0.15


@dataclass
class SequenceSet:
    sequences: list[np.ndarray]  # each float32 [T_i, F], raw features (not standardised)
    targets: list[np.ndarray]  # many_to_one: int64 shape () | many_to_many: int64 [T_i]

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, indices: np.ndarray) -> SequenceSet:
        return SequenceSet([self.sequences[i] for i in indices], [self.targets[i] for i in indices])


@dataclass
class DatasetSplits:
    name: str  # "japanese_vowels", "basic_motions_stream", or the file's stem
    task: str  # "many_to_one" | "many_to_many"
    labels: list[str]  # class names; targets index into this
    features: int
    train: SequenceSet
    validation: SequenceSet
    test: SequenceSet

    def split(self, name: str) -> SequenceSet:
        if name not in ("train", "validation", "test"):
            raise DataError(f"split {name!r} is not one of train, validation, test")
        return getattr(self, name)


def data_dir() -> Path:
    """The folder holding the shipped .ts files: $SEQSERVE_DATA_DIR, else the repository's data/."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path(__file__).resolve().parent.parent / "data")


def load_dataset(
    dataset: str | None = None, data_file: Path | str | None = None, seed: int = 0
) -> DatasetSplits:
    """A shipped data set by name, or a user's own file; seeded, so equal arguments give equal splits."""
    if (dataset is None) == (data_file is None):
        raise DataError(
            f"give exactly one of a shipped data set ({', '.join(SHIPPED_DATASETS)}) or a data file; "
            f"got dataset={dataset!r}, data_file={data_file!r}"
        )
    from seqserve.training import text

    if text.is_text(dataset, data_file):
        return text.as_dataset_splits(text.load_text(data_dir(), dataset, data_file))
    if dataset == "japanese_vowels":
        return _japanese_vowels(seed)
    if dataset == "basic_motions_stream":
        from seqserve.training.basic_motions_stream import load_basic_motions_stream

        return load_basic_motions_stream(data_dir(), seed)
    if dataset is not None:
        raise DataError(f"unknown data set {dataset!r}; expected one of {', '.join(SHIPPED_DATASETS)}")
    return _user_file(Path(data_file), seed)


def with_task(splits: DatasetSplits, task: str) -> DatasetSplits:
    """The same data for another task: a sequence label spread over its steps, or a constant one collapsed."""
    if task == splits.task:
        return splits
    if task not in TASKS or splits.task not in TASKS:
        raise DataError(f"{splits.name} is {splits.task}; it cannot be {task} (one of {', '.join(TASKS)})")

    def convert(part: SequenceSet) -> SequenceSet:
        if task == "many_to_many":
            targets = [
                np.full(len(s), t, dtype=np.int64) for s, t in zip(part.sequences, part.targets, strict=True)
            ]
            return SequenceSet(part.sequences, targets)
        for index, target in enumerate(part.targets):
            if (target != target[0]).any():
                raise DataError(
                    f"{splits.name}: sequence {index} changes label over time, so it cannot be many_to_one; "
                    "expected one label per sequence"
                )
        return SequenceSet(part.sequences, [np.asarray(t[0], dtype=np.int64) for t in part.targets])

    return replace(
        splits,
        task=task,
        train=convert(splits.train),
        validation=convert(splits.validation),
        test=convert(splits.test),
    )


def class_names(found: LabelledFile) -> list[str]:
    """The file's declared order, else the labels sorted (numerically when they are all numbers)."""
    if found.class_names is not None:
        return list(found.class_names)
    values = {str(v) for labels in found.labels for v in np.atleast_1d(labels)}
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def encode(found: LabelledFile, labels: list[str], source: str) -> SequenceSet:
    """Map string labels to indices into `labels`."""
    index = {name: i for i, name in enumerate(labels)}
    targets = []
    for number, label in enumerate(found.labels):
        unknown = [v for v in np.atleast_1d(label).tolist() if v not in index]
        if unknown:
            raise DataError(f"{source}: sequence {number} has label {unknown[0]!r}; expected one of {labels}")
        encoded = np.asarray([index[v] for v in np.atleast_1d(label).tolist()], dtype=np.int64)
        targets.append(encoded if found.per_step else encoded.reshape(()))
    return SequenceSet(list(found.sequences), targets)


def stratified_split(
    keys: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Indices for each of len(fractions) + 1 parts (the first part takes the rest), per key, shuffled."""
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for key in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == key))
        start = 0
        for part, fraction in enumerate(fractions, start=1):
            count = int(round(len(members) * fraction))
            parts[part].extend(members[start : start + count].tolist())
            start += count
        parts[0].extend(members[start:].tolist())
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _features(sets: list[SequenceSet], source: str) -> int:
    widths = {s.shape[1] for part in sets for s in part.sequences}
    if len(widths) != 1:
        raise DataError(f"{source}: sequences have {sorted(widths)} features; expected one feature count")
    return widths.pop()


def _japanese_vowels(seed: int) -> DatasetSplits:
    train_file = read_ts(data_dir() / "JapaneseVowels_TRAIN.ts")
    test_file = read_ts(data_dir() / "JapaneseVowels_TEST.ts")
    labels = class_names(train_file)
    full = encode(train_file, labels, "JapaneseVowels_TRAIN.ts")
    keys = np.asarray([int(t) for t in full.targets])
    train, validation = stratified_split(keys, (JAPANESE_VOWELS_VALIDATION,), np.random.default_rng(seed))
    test = encode(test_file, labels, "JapaneseVowels_TEST.ts")
    parts = [full.subset(train), full.subset(validation), test]
    return DatasetSplits(
        "japanese_vowels", "many_to_one", labels, _features(parts, "japanese_vowels"), *parts
    )


def _user_file(path: Path, seed: int) -> DatasetSplits:
    found = read_file(path)
    labels = class_names(found)
    if len(labels) < 2:
        raise DataError(f"{path}: only one class {labels}; a classifier needs at least 2")
    full = encode(found, labels, str(path))
    # Many-to-many sequences have no single class to stratify on.
    keys = np.zeros(len(full)) if found.per_step else np.asarray([int(t) for t in full.targets])
    fractions = (USER_FILE_VALIDATION, USER_FILE_TEST)
    indices = stratified_split(keys, fractions, np.random.default_rng(seed))
    if any(len(part) == 0 for part in indices):
        raise DataError(
            f"{path}: {len(full)} sequences are too few for a train/validation/test split of 70/15/15; "
            "expected enough that each part gets at least one"
        )
    parts = [full.subset(part) for part in indices]
    task = "many_to_many" if found.per_step else "many_to_one"
    return DatasetSplits(path.stem, task, labels, _features(parts, str(path)), *parts)
