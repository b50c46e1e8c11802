"""Word and phoneme error rates against several references per word (standard library only).

WER: the share of words whose output equals none of their references. PER: for each word the reference
nearest to the output (fewest edits; the shorter on a tie) gives its edit distance and its length; PER is
the sum of those distances over the sum of those lengths. Both are the papers' rules (training/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Phonemes = Sequence[str]


def edit_distance(a: Phonemes, b: Phonemes) -> int:
    """Levenshtein distance: insertions, deletions and substitutions each cost 1."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class ErrorRates:
    wer: float  # fraction of words wrong, 0..1
    per: float  # phoneme edits over reference phonemes, 0..
    words: int
    words_wrong: int
    phoneme_edits: int
    reference_phonemes: int

    def as_percent(self) -> dict[str, float | int]:
        return {
            "wer_percent": round(100 * self.wer, 3),
            "per_percent": round(100 * self.per, 3),
            "words": self.words,
            "words_wrong": self.words_wrong,
            "phoneme_edits": self.phoneme_edits,
            "reference_phonemes": self.reference_phonemes,
        }


def nearest_reference(output: Phonemes, references: Sequence[Phonemes]) -> tuple[int, int]:
    """(edit distance, reference length) of the reference nearest to `output`."""
    if not references:
        raise ValueError("a word needs at least one reference pronunciation")
    return min((edit_distance(output, ref), len(ref)) for ref in references)


def error_rates(outputs: Sequence[Phonemes], references: Sequence[Sequence[Phonemes]]) -> ErrorRates:
    """WER and PER of `outputs[i]` against `references[i]` (every pronunciation of word i)."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} words; expected one per word")
    wrong = edits = total = 0
    for output, refs in zip(outputs, references, strict=True):
        distance, length = nearest_reference(tuple(output), [tuple(r) for r in refs])
        wrong += distance > 0
        edits += distance
        total += length
    words = len(outputs)
    return ErrorRates(
        wer=wrong / words if words else 0.0,
        per=edits / total if total else 0.0,
        words=words,
        words_wrong=wrong,
        phoneme_edits=edits,
        reference_phonemes=total,
    )
