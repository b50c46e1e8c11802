"""The classifier kind: a row is float32 features per step; its answer is logits, the label (argmax) and
softmax scores per answered step, many-to-many (every step) or many-to-one (one running answer).

The argmax runs once per call over every row; the softmax is made once per call too, and only when some
row of the call reads its scores (most answers carry labels only).
"""

from __future__ import annotations

import numpy as np

from seqserve.declaration import Declaration
from seqserve.predictions import softmax
from seqserve.service.engine.kind import KeptAnswer, States


class _CallScores:
    """One call's softmax, made the first time any of its rows asks and then shared by all of them: most
    answers carry labels only (a lone stream's chunk paid five numpy calls for scores nobody read)."""

    __slots__ = ("logits", "scores")

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits
        self.scores: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self.scores is None:
            self.scores = softmax(self.logits)
        return self.scores


class RowResult:
    """One row's answer: labels, logits and softmax scores per output step, and the state after its last
    step. `scores` is given, or taken from its call's softmax (`call`, at `pick`) when first read."""

    __slots__ = ("labels", "states", "logits", "_scores", "_call", "_pick")

    def __init__(
        self,
        labels: np.ndarray,  # int64 [steps] (many-to-many) or [1] (many-to-one)
        scores: np.ndarray | None,  # float32 [len(labels), classes]
        states: States,  # each [layers * directions, hidden]
        logits: np.ndarray,  # float32 [len(labels), classes], what the graph returned
        call: _CallScores | None = None,
        pick: object = None,
    ) -> None:
        self.labels = labels
        self.states = states
        self.logits = logits
        self._scores = scores
        self._call = call
        self._pick = pick

    @property
    def scores(self) -> np.ndarray:
        if self._scores is None:
            self._scores = self._call.get()[self._pick] if self._call is not None else softmax(self.logits)
        return self._scores


class Classifier:
    """Logits in the contract's layout (`output`, batch first): [rows, steps, classes] answered per step,
    or [rows, classes] at each row's last valid step."""

    name = "classifier"

    def __init__(self, output: str, answers_every_step: bool, classes: int) -> None:
        self.output = output
        self.answers_every_step = answers_every_step
        self.keeps_answer = not answers_every_step  # the running label
        self.kept_size = classes

    @classmethod
    def of(cls, declaration: Declaration) -> Classifier:
        """The classifier over the declaration's output with labels."""
        scored = next(o for o in declaration.outputs if o.labels)
        return cls(scored.name, scored.time_axis is not None, len(scored.labels))

    def answer_one(self, outputs: dict[str, np.ndarray], states: States) -> RowResult:
        logits = outputs[self.output]
        logits = logits[0] if self.answers_every_step else logits  # [steps, classes] or [1, classes]
        return RowResult(logits.argmax(axis=-1), None, states, logits)

    def answer_rows(
        self, outputs: dict[str, np.ndarray], lengths: list[int], states: list[States]
    ) -> list[RowResult]:
        logits = outputs[self.output]
        labels = logits.argmax(axis=-1)
        scores = _CallScores(logits)
        every_step = self.answers_every_step
        answers = []
        for index, (n, row_states) in enumerate(zip(lengths, states, strict=True)):
            pick = (index, slice(0, n)) if every_step else slice(index, index + 1)
            answers.append(RowResult(labels[pick], None, row_states, logits[pick], scores, pick))
        return answers

    def kept_answer(self, answer: RowResult) -> KeptAnswer:
        return int(answer.labels[0]), answer.scores[0], answer.logits[0]

    def restored_answer(self, kept: KeptAnswer, states: States) -> RowResult:
        label, scores, logits = kept
        return RowResult(np.array([label], dtype=np.int64), scores[np.newaxis], states, logits[np.newaxis])
