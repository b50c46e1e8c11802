"""The async load client behind `seqserve stream` and `seqserve classify`, reused by the demo and benchmarks.

`stream_sequence` runs one sequence through one Stream RPC, chunk by chunk, each chunk awaiting its answer
(so the latency of every chunk is measured alone). `stream_load` runs many sequences over K concurrent
streams on one channel and returns a `LoadReport`; `classify_load` does the same with Classify batches;
`on_dataset` runs either over a data set's split (what the CLI and the demo run).
From synchronous code in a process that also runs a server, run these on `launch.run_on_loop`.
Targets are label indices, in a data set's label order (`target_labels`) or the model's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from rich.progress import Progress

from seqserve.predictions import SequencePrediction
from seqserve.service.channels import ClientSecurity, open_channel
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

_FLOAT32 = np.dtype("<f4")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


@dataclass
class StreamResult:
    """One streamed sequence: per-step labels (many-to-many) or the final label (many-to-one)."""

    labels: np.ndarray  # int64 [steps] or [1]
    scores: np.ndarray | None  # float32 [len(labels), classes] when scores were asked for
    running: list[int]  # many-to-one: the running label after each chunk (empty if not streamable)
    latencies_s: list[float]  # one per chunk: chunk written -> its answer read
    end_reason: int
    steps: int


@dataclass
class LoadReport:
    """What a load run measured; `stream_load` and `classify_load` both return one."""

    model: str
    version: int
    task: str
    sequences: int
    steps: int
    correct: int  # correct predictions: sequences (many-to-one) or steps (many-to-many)
    scored: int
    elapsed_s: float
    latencies_s: np.ndarray  # per chunk (stream) or per Classify call
    results: list[StreamResult] = field(default_factory=list, repr=False)
    labels: list[str] = field(default_factory=list)  # the model's label names, which predictions index
    # Per sequence, in input order: labels, probabilities (when asked for), targets in the model's order.
    predictions: list[SequencePrediction] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else float("nan")

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.elapsed_s

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s

    def latency_ms(self, percentile: float) -> float:
        return (
            float(np.percentile(self.latencies_s, percentile) * 1000)
            if len(self.latencies_s)
            else float("nan")
        )

    def summary(self) -> dict[str, float | int | str]:
        return {
            "model": f"{self.model}:{self.version}",
            "task": self.task,
            "sequences": self.sequences,
            "steps": self.steps,
            "accuracy": round(self.accuracy, 4),
            "sequences_per_s": round(self.sequences_per_s, 1),
            "steps_per_s": round(self.steps_per_s, 1),
            "p50_ms": round(self.latency_ms(50), 3),
            "p99_ms": round(self.latency_ms(99), 3),
        }


def _in_model_order(
    targets: Sequence | None, target_labels: Sequence[str] | None, info: pb.ModelInfo
) -> list:
    """Targets indexing `target_labels` re-indexed into the model's labels (the orders may differ)."""
    if targets is None or target_labels is None:
        return list(targets or [])
    model_labels = list(info.labels)
    missing = sorted(set(target_labels) - set(model_labels))
    if missing:
        raise ValueError(f"data labels {missing} are not among model {info.name}'s labels {model_labels}")
    mapping = np.array([model_labels.index(label) for label in target_labels])
    return [mapping[np.asarray(t)] for t in targets]


def _chunk_request(part: np.ndarray) -> pb.StreamRequest:
    values = np.ascontiguousarray(part, dtype=_FLOAT32).tobytes()
    return pb.StreamRequest(chunk=pb.StreamChunk(steps=part.shape[0], values=values))


def _collect(steps: Sequence[pb.StepResult], labels: list[int], scores: list) -> None:
    for step in steps:
        labels.append(step.label_index)
        if step.scores:
            scores.append(list(step.scores))


async def stream_sequence(
    stub: pb_grpc.InferenceServiceStub,
    model: str,
    x: np.ndarray,
    chunk: int,
    version: int = 0,
    include_scores: bool = False,
    idle_timeout_ms: int = 0,
) -> StreamResult:
    """Stream x [steps, features] in chunks of `chunk` steps; raises grpc.aio.AioRpcError on a bad status."""
    call = stub.Stream()
    await call.write(
        pb.StreamRequest(
            open=pb.StreamOpen(
                model=model, version=version, include_scores=include_scores, idle_timeout_ms=idle_timeout_ms
            )
        )
    )
    opened = (await call.read()).opened
    many_to_many = opened.model.task == "many_to_many"
    labels: list[int] = []
    scores: list = []
    running: list[int] = []
    latencies: list[float] = []
    for start in range(0, x.shape[0], chunk):
        request = _chunk_request(x[start : start + chunk])
        sent = time.perf_counter()
        await call.write(request)
        response = await call.read()
        latencies.append(time.perf_counter() - sent)
        results = response.chunk.results
        if many_to_many:
            _collect(results, labels, scores)
        elif results:
            running.append(results[-1].label_index)
    await call.write(pb.StreamRequest(end=pb.StreamEnd()))
    await call.done_writing()
    ended = (await call.read()).ended
    if many_to_many:
        _collect(ended.final_results, labels, scores)  # non-streamable: every step's result comes at end
    else:
        _collect(ended.final_results[-1:], labels, scores)
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(
            code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
        )
    return StreamResult(
        labels=np.asarray(labels, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32) if scores else None,
        running=running,
        latencies_s=latencies,
        end_reason=ended.reason,
        steps=ended.steps,
    )


def _score(predictions: Sequence[np.ndarray], targets: Sequence | None) -> tuple[int, int]:
    """(correct, scored): per sequence for many-to-one targets, per step for many-to-many ones."""
    correct = scored = 0
    for labels, target in zip(predictions, targets or [], strict=False):
        target = np.atleast_1d(target)
        correct += int((labels[-len(target) :] == target).sum())
        scored += len(target)
    return correct, scored


async def stream_load(
    target: str,
    model: str,
    sequences: Sequence[np.ndarray],
    targets: Sequence | None = None,
    chunk: int | Sequence[int] = 8,
    concurrency: int = 8,
    version: int = 0,
    include_scores: bool = False,
    progress: bool = False,
    target_labels: Sequence[str] | None = None,
    security: ClientSecurity | None = None,
) -> LoadReport:
    """Stream every sequence over `concurrency` concurrent streams; `chunk` may differ per sequence.

    `targets` index `target_labels` (a data set's label order), or the model's labels when that is None.
    """
    chunks = [chunk] * len(sequences) if isinstance(chunk, int) else list(chunk)
    async with open_channel(target, security, CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        info = (await stub.GetModel(pb.GetModelRequest(model=model, version=version))).model
        results: list[StreamResult | None] = [None] * len(sequences)
        queue = iter(range(len(sequences)))
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"streaming {info.name}:{info.version}", total=len(sequences))

            async def worker() -> None:
                for index in queue:
                    results[index] = await stream_sequence(
                        stub, model, sequences[index], chunks[index], info.version, include_scores
                    )
                    bar.advance(task)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(sequences)))))
            elapsed = time.perf_counter() - started
    latencies = [s for r in results for s in r.latencies_s]
    predictions = [r.labels for r in results]
    return _report(info, sequences, predictions, targets, target_labels, elapsed, latencies, results)


async def classify_load(
    target: str,
    model: str,
    sequences: Sequence[np.ndarray],
    targets: Sequence | None = None,
    batch: int = 32,
    version: int = 0,
    progress: bool = False,
    target_labels: Sequence[str] | None = None,
    include_scores: bool = False,
    security: ClientSecurity | None = None,
) -> LoadReport:
    """Classify every sequence in Classify calls of `batch` sequences, one call at a time."""
    async with open_channel(target, security, CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        predictions: list[np.ndarray] = []
        scores: list[np.ndarray | None] = []
        latencies: list[float] = []
        info = None
        started = time.perf_counter()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"classifying with {model}", total=len(sequences))
            for start in range(0, len(sequences), batch):
                part = sequences[start : start + batch]
                request = pb.ClassifyRequest(
                    model=model,
                    version=version,
                    include_scores=include_scores,
                    sequences=[
                        pb.Sequence(
                            steps=x.shape[0], values=np.ascontiguousarray(x, dtype=_FLOAT32).tobytes()
                        )
                        for x in part
                    ],
                )
                sent = time.perf_counter()
                response = await stub.Classify(request)
                latencies.append(time.perf_counter() - sent)
                info = response.model
                predictions += [np.asarray([s.label_index for s in r.results]) for r in response.results]
                scores += [
                    np.asarray([s.scores for s in r.results], dtype=np.float32) if include_scores else None
                    for r in response.results
                ]
                bar.advance(task, len(part))
        elapsed = time.perf_counter() - started
    return _report(info, sequences, predictions, targets, target_labels, elapsed, latencies, scores=scores)


def _report(
    info: pb.ModelInfo,
    sequences: Sequence[np.ndarray],
    predictions: list[np.ndarray],
    targets: Sequence | None,
    target_labels: Sequence[str] | None,
    elapsed_s: float,
    latencies_s: list[float],
    results: list[StreamResult] | None = None,
    scores: list[np.ndarray | None] | None = None,
) -> LoadReport:
    in_order = _in_model_order(targets, target_labels, info)
    correct, scored = _score(predictions, in_order)
    if scores is None:
        scores = [r.scores for r in results] if results else [None] * len(predictions)
    answers = [
        SequencePrediction(i, labels, score, in_order[i] if i < len(in_order) else None)
        for i, (labels, score) in enumerate(zip(predictions, scores, strict=True))
    ]
    return LoadReport(
        model=info.name,
        version=info.version,
        task=info.task,
        sequences=len(sequences),
        steps=sum(int(x.shape[0]) for x in sequences),
        correct=correct,
        scored=scored,
        elapsed_s=elapsed_s,
        latencies_s=np.asarray(latencies_s),
        results=results or [],
        labels=list(info.labels),
        predictions=answers,
    )


def load_split(
    dataset: str | None = None,
    data: Path | None = None,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
) -> tuple[list[str], list[np.ndarray], list]:
    """(label names, sequences, targets) of a data set's or a file's split, at most `limit` of them.
    Split "all" is every sequence: a file's in file order, a data set's train, validation, then test."""
    from seqserve.training.datasets import SequenceSet, class_names, encode, load_dataset  # numpy, no torch
    from seqserve.training.readers import read_file

    if split == "all" and data is not None:
        found = read_file(data)
        names = class_names(found)
        part = encode(found, names, str(data))
        count = len(part) if limit is None else min(limit, len(part))
        return names, part.sequences[:count], part.targets[:count]
    splits = load_dataset(dataset=dataset, data_file=data, seed=seed)
    if split == "all":
        parts = (splits.train, splits.validation, splits.test)
        part = SequenceSet([s for p in parts for s in p.sequences], [t for p in parts for t in p.targets])
    else:
        part = splits.split(split)
    count = len(part) if limit is None else min(limit, len(part))
    return splits.labels, part.sequences[:count], part.targets[:count]


async def on_dataset(
    run: Callable[..., Awaitable[LoadReport]],
    target: str,
    model: str,
    dataset: str | None = None,
    data: Path | None = None,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    **options: object,
) -> LoadReport:
    """`run` (`stream_load` or `classify_load`, with its `options`) over a data set's split, scored against
    its targets: `on_dataset(stream_load, target, "jv-gru", "japanese_vowels", chunk=4, concurrency=16)`."""
    labels, sequences, targets = load_split(dataset, data, split, seed, limit)
    return await run(target, model, sequences, targets, target_labels=labels, **options)
