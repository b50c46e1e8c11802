"""Character corpora for language models: train/validation/test text, a vocabulary, token ids. NumPy only.

- `shakespeare_chars`: the plays in `data/shakespeare/{train,validation,test}/`, split by play (six plays
  train, one validation, one test; see data/SOURCES.md). Each split's plays are joined in name order.
- a user's `.txt` file: one text, cut by position into 90/5/5 train/validation/test (the first 90 % of
  the characters train), so no character of the held-out parts is trained on.

The vocabulary is every character of every split, sorted (index = token id): a language model must be
able to read any character of its own corpus, and the set of characters says nothing about the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqserve.contract import LANGUAGE_MODEL
from seqserve.training.readers import DataError

SHAKESPEARE = "shakespeare_chars"
TEXT_SUFFIX = ".txt"
USER_TEXT_VALIDATION = 0.05
USER_TEXT_TEST = 0.05
# Evaluation and export cut each held-out text into sequences of this many steps (state starts at zero
# in each); long enough that the zero start costs little, short enough to batch.
EVAL_SEQUENCE = 512
SPLITS = ("train", "validation", "test")


@dataclass
class TextSplits:
    name: str
    vocabulary: list[str]  # index = token id
    train: str
    validation: str
    test: str

    def split(self, name: str) -> str:
        if name not in SPLITS:
            raise DataError(f"split {name!r} is not one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def encode(self, text: str) -> np.ndarray:
        """int64 token ids of `text`; a character outside the vocabulary raises naming it and where."""
        index = {char: i for i, char in enumerate(self.vocabulary)}
        try:
            return np.fromiter((index[char] for char in text), dtype=np.int64, count=len(text))
        except KeyError as exc:
            position = next(i for i, char in enumerate(text) if char not in index)
            raise DataError(
                f"{self.name}: character {text[position]!r} at position {position} is not in the vocabulary"
            ) from exc


def is_text(dataset: str | None, data_file: Path | str | None) -> bool:
    """True when the arguments name a character corpus (so `seqserve train` trains a language model)."""
    if dataset is not None:
        return dataset == SHAKESPEARE
    return data_file is not None and Path(data_file).suffix.lower() == TEXT_SUFFIX


def load_text(data_dir: Path, dataset: str | None = None, data_file: Path | str | None = None) -> TextSplits:
    if dataset == SHAKESPEARE:
        return _shakespeare(data_dir / "shakespeare")
    if data_file is None:
        raise DataError(f"unknown text data set {dataset!r}; expected {SHAKESPEARE} or a {TEXT_SUFFIX} file")
    return _user_text(Path(data_file))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc


def _vocabulary(*texts: str) -> list[str]:
    return sorted(set().union(*map(set, texts)))


def _shakespeare(folder: Path) -> TextSplits:
    parts = {}
    for split in SPLITS:
        plays = sorted((folder / split).glob("*.txt"))
        if not plays:
            raise DataError(f"{folder / split}: no plays found; expected the shipped data/shakespeare/")
        parts[split] = "".join(_read(play) for play in plays)
    return TextSplits(SHAKESPEARE, _vocabulary(*parts.values()), **parts)


def _user_text(path: Path) -> TextSplits:
    text = _read(path)
    validation_at = round(len(text) * (1 - USER_TEXT_VALIDATION - USER_TEXT_TEST))
    test_at = round(len(text) * (1 - USER_TEXT_TEST))
    parts = text[:validation_at], text[validation_at:test_at], text[test_at:]
    if min(map(len, parts)) < 2:
        raise DataError(
            f"{path}: {len(text)} characters are too few for a 90/5/5 train/validation/test split; "
            "expected at least 40"
        )
    vocabulary = _vocabulary(text)
    if len(vocabulary) < 2:
        raise DataError(f"{path}: only one distinct character; a language model needs at least 2")
    return TextSplits(path.stem, vocabulary, *parts)


def next_token_pairs(tokens: np.ndarray, length: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inputs tokens[i : i + length] and targets one step ahead, for i = 0, length, 2 * length, ..."""
    inputs, targets = [], []
    for start in range(0, len(tokens) - 1, length):
        end = min(start + length, len(tokens) - 1)
        inputs.append(tokens[start:end])
        targets.append(tokens[start + 1 : end + 1])
    return inputs, targets


def as_dataset_splits(text: TextSplits, length: int = EVAL_SEQUENCE):
    """The corpus as `DatasetSplits` of token sequences: what the exporter's parity and accuracy read."""
    from seqserve.training.datasets import DatasetSplits, SequenceSet

    sets = [SequenceSet(*next_token_pairs(text.encode(text.split(s)), length)) for s in SPLITS]
    return DatasetSplits(text.name, LANGUAGE_MODEL, list(text.vocabulary), 1, *sets)
