"""What the engine asks of a model kind, and nothing more: the batcher, state store and checkpoints see
rows of inputs and state; a kind (`service/kinds/`) says what a row's answer is.

The engine runs a call and hands the kind the graph's answer outputs (every output that is not a state's)
for the call's rows, with each row's length and its state after its last step; the kind makes each row's
answer from them. A stream keeps its latest answer, and a kind whose answers are not per step (a
many-to-one classifier) says so: the stream's final answer is then its latest, and a checkpoint carries
it. The kind of a frame model (named tensors: the
declaration refuses any other rendering for one) also says how several frames' answers make a chunk's
(`frames`).

The server's wiring gives the repository a `KindFor` (`seqserve.service.kinds.kind_for`), so no engine
module imports a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from seqserve.declaration import Declaration

States = tuple[np.ndarray, ...]
# What a checkpoint keeps of a stream's latest answer: an index and two float32 vectors of `kept_size`
# (a classifier's label index, scores and logits).
KeptAnswer = tuple[int, np.ndarray, np.ndarray]


class RowAnswer(Protocol):
    """One row's answer to one call; the engine reads only the state after the row's last step."""

    states: States


class ModelKind(Protocol):
    name: str
    # Every step answered with its chunk (many-to-many, a language model); else one running answer per
    # chunk, the latest being the stream's final answer (many-to-one).
    answers_every_step: bool
    # A checkpoint carries the stream's latest answer (`kept_answer`): a many-to-one classifier's running
    # label, a forecaster's next-value distribution (where its forecasts start). `kept_size` is the
    # length of each of the kept vectors, which a resume checks against the served model.
    keeps_answer: bool
    kept_size: int

    def answer_one(self, outputs: dict[str, np.ndarray], states: States) -> RowAnswer:
        """A lone row's answer: `outputs` are the call's answer outputs by name, batch axis of 1 still on."""
        ...

    def answer_rows(
        self, outputs: dict[str, np.ndarray], lengths: list[int], states: list[States]
    ) -> list[RowAnswer]:
        """The answers of a call's rows, in order: the call's answer outputs by name, each row's valid
        steps and its state after them."""
        ...

    def kept_answer(self, answer: RowAnswer) -> KeptAnswer:
        """What a checkpoint carries of a stream's latest answer (kinds that keep one)."""
        ...

    def restored_answer(self, kept: KeptAnswer, states: States) -> RowAnswer:
        """The latest answer a resumed stream continues from, out of what its checkpoint carried."""
        ...


KindFor = Callable[[Declaration], ModelKind]
