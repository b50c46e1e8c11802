"""What the client hands back: typed records made from the server's messages, numpy where there are numbers.

An `Answer` reads its message only when asked (labels, probabilities, step indexes), so a caller that
streams and reads one field, or none, pays for no conversion it does not use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from seqserve.v1 import seqserve_pb2 as pb


@dataclass(frozen=True)
class ModelInfo:
    """One served model version's metadata (the contract's model.json, as the server reports it)."""

    name: str
    version: int
    task: str  # "many_to_one", "many_to_many", "language_model", "forecast", "seq2seq" or "declared"
    cell: str
    layers: int
    hidden: int
    bidirectional: bool
    streamable: bool  # False: a stream answers only at its end
    features: int  # features per time step a chunk must have
    labels: tuple[str, ...]  # class labels, in the order of label indexes and probability columns
    precision: str
    opset: int
    sha256: str
    test_accuracy: float
    execution_provider: str
    default_version: bool
    # Language models: token id -> text. Seq2seq models: the input characters (index = input token id,
    # "<pad>" first), and `labels` the output symbols.
    vocabulary: tuple[str, ...] = ()

    @classmethod
    def from_message(cls, info: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=info.name, version=info.version, task=info.task, cell=info.cell, layers=info.layers,
            hidden=info.hidden, bidirectional=info.bidirectional, streamable=info.streamable,
            features=info.features, labels=tuple(info.labels), precision=info.precision, opset=info.opset,
            sha256=info.sha256, test_accuracy=info.test_accuracy, execution_provider=info.execution_provider,
            default_version=info.default_version, vocabulary=tuple(info.vocabulary),
        )  # fmt: skip


class Answer:
    """The server's answer to one chunk, to a whole stream (its end) or to one classified sequence.

    Many-to-one: one entry, the label after the last step sent. Many-to-many: one entry per step.
    Empty when the stream asked for final answers only, or the model is not streamable (until the end).
    """

    __slots__ = ("chunk_index", "_results", "_labels")

    def __init__(self, chunk_index: int, results: Sequence[pb.StepResult]) -> None:
        self.chunk_index = chunk_index  # the chunk this answers, from 0 (-1: a stream's end, Classify)
        self._results = results
        self._labels: list[str] | None = None

    @property
    def labels(self) -> list[str]:
        """The class label of each answered step."""
        if self._labels is None:
            self._labels = [step.label for step in self._results]
        return self._labels

    @property
    def label(self) -> str:
        """The latest step's label: a many-to-one model's answer. Raises when the answer is empty."""
        if not self._results:
            raise ValueError(
                f"answer to chunk {self.chunk_index} holds no step (final-only or not streamable)"
            )
        return self._results[-1].label

    @property
    def label_indexes(self) -> np.ndarray:
        """int64 [n]: each label's index into ModelInfo.labels."""
        return np.fromiter((step.label_index for step in self._results), np.int64, len(self._results))

    @property
    def step_indexes(self) -> np.ndarray:
        """int64 [n]: each answered step's index in the stream (or sequence), from 0."""
        return np.fromiter((step.step for step in self._results), np.int64, len(self._results))

    @property
    def probabilities(self) -> np.ndarray | None:
        """float32 [n, classes], softmax, in label order; None unless the call asked for probabilities."""
        if not self._results or not self._results[0].scores:
            return None
        return np.asarray([list(step.scores) for step in self._results], dtype=np.float32)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return f"Answer(chunk_index={self.chunk_index}, labels={self.labels!r})"


class Ended(Answer):
    """A stream's end: the final answer (many-to-one; non-streamable many-to-many: every step), why it
    ended, the steps the server received, and how many times the stream moved server and went on."""

    __slots__ = ("reason", "steps", "message", "resumes", "resent_chunks")

    def __init__(self, ended: pb.StreamEnded, resumes: int, resent_chunks: int) -> None:
        super().__init__(-1, ended.final_results)
        # "completed", "idle_timeout" or "server_shutdown"
        self.reason = pb.EndReason.Name(ended.reason).removeprefix("END_REASON_").lower()
        self.steps = ended.steps
        self.message = ended.message
        self.resumes = resumes
        self.resent_chunks = resent_chunks

    def __repr__(self) -> str:
        return f"Ended(reason={self.reason!r}, steps={self.steps}, labels={self.labels!r})"


@dataclass(frozen=True)
class Classification:
    """Classify's answer: the model version that answered, and one Answer per sequence, in request order.
    Iterate it, index it or take len() as a list of answers."""

    model: ModelInfo
    answers: list[Answer] = field(repr=False)

    def __iter__(self) -> Iterator[Answer]:
        return iter(self.answers)

    def __len__(self) -> int:
        return len(self.answers)

    def __getitem__(self, index: int) -> Answer:
        return self.answers[index]


@dataclass
class GenerationEnd:
    """Why a generation stopped ("max_tokens", "stop_string", "server_shutdown") and how many tokens."""

    reason: str
    tokens: int
    stop: str  # the stop string that matched, for reason "stop_string"
    pieces: int  # the GeneratedText messages the text came in


def generation_end(ended: pb.GenerateEnded, pieces: int) -> GenerationEnd:
    reason = pb.GenerateStopReason.Name(ended.reason).removeprefix("GENERATE_STOP_REASON_").lower()
    return GenerationEnd(reason, ended.tokens, ended.stop, pieces)


@dataclass(frozen=True)
class Forecast:
    """A forecaster's next `horizon` values: each step's Normal(mean, scale^2) and the quantiles asked."""

    from_step: int  # observations the forecast follows (the stream step of mean[0])
    mean: np.ndarray  # float32 [horizon]
    scale: np.ndarray  # float32 [horizon]
    quantiles: dict[float, np.ndarray]  # level -> float32 [horizon], in the order asked

    @classmethod
    def from_message(cls, forecast: pb.Forecast) -> Forecast:
        return cls(
            forecast.from_step,
            np.asarray(forecast.mean, dtype=np.float32),
            np.asarray(forecast.scale, dtype=np.float32),
            {q.level: np.asarray(q.values, dtype=np.float32) for q in forecast.quantiles},
        )


@dataclass(frozen=True)
class Hypothesis:
    """One output of a translation: its symbols (a pronunciation's phonemes), the sum of the log-
    probabilities of its tokens (end token included) and whether it ended (False: cut at max_steps)."""

    output: tuple[str, ...]
    score: float
    finished: bool

    @property
    def text(self) -> str:
        """The symbols joined by spaces, as `seqserve translate` prints them."""
        return " ".join(self.output)


@dataclass(frozen=True)
class Translation:
    """One input's answer to Translate: its hypotheses, best first (nbest of them)."""

    input: str
    hypotheses: tuple[Hypothesis, ...]

    @property
    def best(self) -> Hypothesis:
        return self.hypotheses[0]

    @classmethod
    def from_message(cls, translation: pb.Translation) -> Translation:
        return cls(
            translation.input,
            tuple(Hypothesis(tuple(h.output), h.score, h.finished) for h in translation.hypotheses),
        )
