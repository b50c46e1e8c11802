"""KServe V2 requests for the tests: interleaved sequence schedules for tritonclient, raw requests (bad ones
too) for the generated stub, and how answers of one sequence add up to its whole result."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2 as pb

OUTPUT_NAMES = ("logits", "label", "scores")


@dataclass(frozen=True)
class Part:
    """One request of one sequence: steps [start, stop) of sequence `index`."""

    index: int
    number: int
    start: int
    stop: int
    first: bool
    last: bool

    @property
    def request_id(self) -> str:
        return f"{self.index}:{self.number}"


def interleaved(lengths: list[int], chunks: list[int]) -> list[Part]:
    """Round robin over the sequences, one chunk of each per turn, until every sequence is sent."""
    cuts = [list(range(0, n, c)) for n, c in zip(lengths, chunks, strict=True)]
    parts = []
    for turn in range(max(len(c) for c in cuts)):
        for index, starts in enumerate(cuts):
            if turn < len(starts):
                stop = min(starts[turn] + chunks[index], lengths[index])
                parts.append(Part(index, turn, starts[turn], stop, turn == 0, turn == len(starts) - 1))
    return parts


@dataclass
class Joined:
    """A sequence's answers put together: per step (many-to-many) or per request (many-to-one)."""

    logits: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def join(answers: list[dict[str, np.ndarray]], many_to_many: bool) -> Joined:
    """`answers`: the outputs of one sequence's requests, in order. Many-to-one gives one row per request."""
    if many_to_many:
        return Joined(*(np.concatenate([a[name][0] for a in answers]) for name in OUTPUT_NAMES))
    return Joined(*(np.concatenate([a[name] for a in answers]) for name in OUTPUT_NAMES))


def infer_request(
    model: str,
    x: np.ndarray | None = None,
    request_id: str = "",
    sequence_id: int | str | None = None,
    start: bool = False,
    end: bool = False,
    *,
    shape: list[int] | None = None,
    datatype: str = "FP32",
    raw: bytes | None = None,
    input_name: str = "x",
    outputs: tuple[str, ...] = (),
) -> pb.ModelInferRequest:
    """A ModelInferRequest as tritonclient builds it; the keyword arguments make it wrong on purpose."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    if sequence_id is not None:
        if isinstance(sequence_id, str):
            request.parameters["sequence_id"].string_param = sequence_id
        else:
            request.parameters["sequence_id"].int64_param = sequence_id
        request.parameters["sequence_start"].bool_param = start
        request.parameters["sequence_end"].bool_param = end
    if x is not None:
        x = x[None] if x.ndim == 2 else x
        request.inputs.add(name=input_name, datatype=datatype, shape=shape or list(x.shape))
        request.raw_input_contents.append(
            raw if raw is not None else np.ascontiguousarray(x, "<f4").tobytes()
        )
    for name in outputs:
        request.outputs.add(name=name)
    return request


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)
