"""Greedy and beam search over a decoder step, batched across words and beams (NumPy only).

One search serves every backend: a step function (PyTorch in training, onnxruntime in export, the server's
batcher) takes the previous token of every live row, the rows' decoder states and, for each row, the
word it belongs to; it returns the rows' log-probabilities over the output vocabulary and their new states.
Each word keeps its own hypotheses (`WordBeam`, `WordGreedy`): it reads its rows' log-probabilities, says
which of its rows go on (and with which token), and knows when it is done. `search` drives any number of
words together, one step call per step for all of their rows; words may finish at different steps, so a
word's answer never depends on which other words share its calls (tests/export/test_seq2seq_export.py).
`advance` is one step's bookkeeping for any driver: `search` here, and the server's
(service/kinds/seq2seq.py), which runs each step's rows through its batcher.

States are arrays with the batch on axis 1 ([layers, rows, hidden], the contract's h0/c0 layout).

Beam search (width k): each live hypothesis is extended by every token; of the candidates, best first, those
ending with the end token join the finished list and the first k others stay live. A word is done when it
has `nbest` finished hypotheses and no live one can still overtake the nbest-th of them, or at its step
limit (live hypotheses then finish unfinished). Ranking uses the length penalty of Wu et al. (2016, GNMT):
score / ((5 + length) / 6) ** alpha, where score is the sum of log-probabilities and length counts the end
token; alpha 0 ranks by the plain sum. Width 1 makes the same choices as greedy search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from seqserve.vocabularies import Tokens, Translation

T = TypeVar("T")

STATE_BATCH_AXIS = 1
State = tuple[np.ndarray, ...]
# step(previous int64 [R], states, word of each row int64 [R]) -> (log-probabilities [R, V], states)
StepFunction = Callable[[np.ndarray, State, np.ndarray], tuple[np.ndarray, State]]
# encode(tokens int64 [B, T], lengths int32 [B]) -> (the step function over those inputs, first states)
Encoder = Callable[[np.ndarray, np.ndarray], tuple[StepFunction, State]]


@dataclass(frozen=True)
class SearchOptions:
    """What a beam search is asked for; max_steps None lets each input take 2 * its length + 10 steps."""

    beam: int = 4
    nbest: int = 1
    max_steps: int | None = None
    length_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam width {self.beam}: expected 1 or more")
        if not 1 <= self.nbest <= self.beam:
            raise ValueError(f"nbest {self.nbest}: expected 1 to the beam width {self.beam}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps {self.max_steps}: expected 1 or more")
        if not self.length_penalty >= 0:
            raise ValueError(f"length_penalty {self.length_penalty}: expected 0 or more")

    def steps_for(self, input_length: int) -> int:
        return self.max_steps if self.max_steps is not None else 2 * input_length + 10


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # output tokens, without the start and end tokens
    score: float  # sum of the log-probabilities of every token chosen, the end token included
    finished: bool  # ended with the end token (False: stopped at the step limit)

    @property
    def length(self) -> int:
        return len(self.tokens) + self.finished


def length_normalised(score: float, length: int, alpha: float) -> float:
    return score if alpha == 0 else score / ((5 + length) / 6) ** alpha


class WordGreedy:
    """One word's greedy search: the most likely token each step."""

    def __init__(self, start: int, end: int, max_steps: int) -> None:
        self.end, self.max_steps = end, max_steps
        self.tokens: list[int] = []
        self.previous = np.array([start], dtype=np.int64)
        self.score = 0.0
        self.ended = self.done = False

    @property
    def rows(self) -> int:
        return 0 if self.done else 1

    def advance(self, log_probs: np.ndarray) -> np.ndarray:
        """log_probs [1, V] -> the parent row of each live row after this step (none once done)."""
        token = int(np.argmax(log_probs[0]))
        self.score += float(log_probs[0, token])
        if token == self.end:
            self.ended = self.done = True
            return np.zeros(0, dtype=np.int64)
        self.tokens.append(token)
        self.previous = np.array([token], dtype=np.int64)
        self.done = len(self.tokens) >= self.max_steps
        return np.zeros(0 if self.done else 1, dtype=np.int64)

    def results(self) -> list[Hypothesis]:
        return [Hypothesis(tuple(self.tokens), self.score, self.ended)]


class WordBeam:
    """One word's beam: its live hypotheses (one row each) and its finished ones."""

    def __init__(self, start: int, end: int, max_steps: int, options: SearchOptions) -> None:
        self.end, self.max_steps, self.options = end, max_steps, options
        self.live: list[tuple[int, ...]] = [()]
        self.scores = np.zeros(1)
        self.previous = np.array([start], dtype=np.int64)
        self.finished: list[Hypothesis] = []
        self.steps = 0
        self.done = False

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self.live)

    def _rank(self, hypothesis: Hypothesis) -> float:
        return length_normalised(hypothesis.score, hypothesis.length, self.options.length_penalty)

    def advance(self, log_probs: np.ndarray) -> np.ndarray:
        """log_probs [rows, V] -> the parent row of each live row after this step (none once done)."""
        width, vocabulary = self.options.beam, log_probs.shape[1]
        candidates = (self.scores[:, None] + log_probs.astype(np.float64)).ravel()
        order = np.argsort(-candidates, kind="stable")[: 2 * width]
        live, scores, parents = [], [], []
        for index in order:
            parent, token = divmod(int(index), vocabulary)
            if token == self.end:
                self.finished.append(Hypothesis(self.live[parent], float(candidates[index]), True))
                continue
            live.append((*self.live[parent], token))
            scores.append(candidates[index])
            parents.append(parent)
            if len(live) == width:
                break
        self.steps += 1
        self.live, self.scores = live, np.array(scores)
        self.previous = np.array([hyp[-1] for hyp in live], dtype=np.int64)
        if self.steps >= self.max_steps or not live:
            self.finished += [Hypothesis(h, float(s), False) for h, s in zip(live, scores, strict=True)]
            self.live, self.done = [], True
        else:
            self.done = self._settled()
        return np.zeros(0, dtype=np.int64) if self.done else np.array(parents, dtype=np.int64)

    def _settled(self) -> bool:
        """nbest finished and none of the live can overtake the nbest-th: a live score only falls as it
        grows, so its best normalised future is its score over the longest length's penalty."""
        if len(self.finished) < self.options.nbest:
            return False
        ranks = sorted((self._rank(h) for h in self.finished), reverse=True)
        best_live = length_normalised(float(self.scores.max()), self.max_steps, self.options.length_penalty)
        return ranks[self.options.nbest - 1] >= best_live

    def results(self) -> list[Hypothesis]:
        ranked = sorted(self.finished, key=self._rank, reverse=True)
        return ranked[: self.options.nbest]


Word = WordGreedy | WordBeam


class RowsOf(Generic[T]):
    """Per-input values (an encoder's memory and lengths) gathered for the live rows, gathered again only
    when the rows change: after the first step a beam keeps its width until words finish."""

    def __init__(self, gather: Callable[[np.ndarray], T]) -> None:
        self.gather = gather
        self.owner: np.ndarray | None = None
        self.value: T | None = None

    def __call__(self, owner: np.ndarray) -> T:
        if self.value is None or self.owner is None or not np.array_equal(owner, self.owner):
            self.owner, self.value = owner.copy(), self.gather(owner)
        return self.value


def take_rows(state: State, rows: np.ndarray) -> State:
    return tuple(np.take(s, rows, axis=STATE_BATCH_AXIS) for s in state)


def advance(words: Sequence[Word], active: list[int], log_probs: np.ndarray) -> tuple[list[int], np.ndarray]:
    """One step's bookkeeping, whoever ran the step: `log_probs` [R, V] holds the rows of the `active`
    words in order (each word's `rows` of them); each word takes its own. Returns the words still going
    and, for each of their rows after this step, the index of its parent among this step's R rows."""
    keep, going, offset = [], [], 0
    for w in active:
        rows = words[w].rows
        parents = words[w].advance(log_probs[offset : offset + rows])
        if not words[w].done:
            keep.append(offset + parents)
            going.append(w)
        offset += rows
    return going, np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def search(step: StepFunction, state: State, words: Sequence[Word]) -> list[list[Hypothesis]]:
    """Run `words` together (state: one row per word, in order) until every one is done; one step call
    per step for all the live rows of all the words."""
    owner = np.arange(len(words), dtype=np.int64)  # the word of each live row
    active = list(range(len(words)))
    while active:
        previous = np.concatenate([words[w].previous for w in active])
        log_probs, state = step(previous, state, owner)
        active, chosen = advance(words, active, log_probs)
        if active:
            state = take_rows(state, chosen)
            owner = np.concatenate([np.full(words[w].rows, w, dtype=np.int64) for w in active])
    return [word.results() for word in words]


def greedy(
    step: StepFunction,
    state: State,
    input_lengths: Sequence[int],
    start: int,
    end: int,
    max_steps: int | None = None,
) -> list[Hypothesis]:
    """The most likely token each step, for each input (state: one row per input, in order)."""
    limits = SearchOptions(beam=1, max_steps=max_steps)
    words = [WordGreedy(start, end, limits.steps_for(int(n))) for n in input_lengths]
    return [best for (best,) in search(step, state, words)]


def beam_search(
    step: StepFunction,
    state: State,
    input_lengths: Sequence[int],
    start: int,
    end: int,
    options: SearchOptions,
) -> list[list[Hypothesis]]:
    """Each input's `options.nbest` hypotheses, best first (state: one row per input, in order)."""
    words = [WordBeam(start, end, options.steps_for(int(n)), options) for n in input_lengths]
    return search(step, state, words)


def translate(
    encode: Encoder,
    tokens: Tokens,
    texts: Sequence[str],
    options: SearchOptions | None = None,
    batch_size: int = 64,
) -> list[list[Translation]]:
    """Each text's n-best outputs, best first: greedy search when `options` is None, else beam search.
    Texts go in batches of similar length (less padding); answers come back in the order given."""
    results: list[list[Translation]] = [[] for _ in texts]
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), texts[i]))
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        inputs, lengths = tokens.input_batch([texts[i] for i in batch])
        step, state = encode(inputs, lengths)
        found = (
            [[h] for h in greedy(step, state, lengths, tokens.start, tokens.end)]
            if options is None
            else beam_search(step, state, lengths, tokens.start, tokens.end, options)
        )
        for index, hypotheses in zip(batch, found, strict=True):
            results[index] = [
                Translation(texts[index], tokens.decode_output(h.tokens), h.score, h.finished)
                for h in hypotheses
            ]
    return results
