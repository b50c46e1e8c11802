"""Load runs on the client (`AsyncClient`): what `seqserve stream` and `seqserve classify` run, and the demo
and tests reuse.

`stream_sequence` runs one sequence through one stream, chunk by chunk, each chunk awaiting its answer (so
the latency of every chunk is measured alone); the stream resumes on the client's next target when its
server drains or drops. `stream_load` runs many sequences over K concurrent streams and returns a
`LoadReport`; `classify_load` does the same with Classify batches; `on_dataset` runs either over a data
set's split (what the CLI and the demo run). From synchronous code in a process that also runs a server,
run these on `loop.run_on_loop`. Targets are label indices, in a data set's label order (`target_labels`)
or the model's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from seqserve.predictions import SequencePrediction
from seqserve.service.client.answers import Answer, Ended, ModelInfo
from seqserve.service.client.channels import ClientSecurity
from seqserve.service.client.client import AsyncClient
from seqserve.v1 import seqserve_pb2 as pb


@dataclass
class StreamResult:
    """One streamed sequence: per-step labels (many-to-many) or the final label (many-to-one)."""

    labels: np.ndarray  # int64 [steps] or [1]
    scores: np.ndarray | None  # float32 [len(labels), classes] when scores were asked for
    running: list[int]  # many-to-one: the running label after each chunk (empty if not streamable)
    latencies_s: list[float]  # one per chunk: chunk written -> its answer read
    end_reason: int  # pb.EndReason
    steps: int
    step_indexes: list[int] = field(default_factory=list)  # the server's step index of each label
    resumes: int = 0  # times the stream moved to another target (or reopened) and went on
    resent_chunks: int = 0  # chunks written again after a resume (none a checkpoint covered)


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
    def resumes(self) -> int:
        return sum(r.resumes for r in self.results)

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
            "resumes": self.resumes,
        }


def _in_model_order(
    targets: Sequence[Any] | None, target_labels: Sequence[str] | None, info: ModelInfo
) -> list[Any]:
    """Targets indexing `target_labels` re-indexed into the model's labels (the orders may differ)."""
    if targets is None or target_labels is None:
        return list(targets or [])
    model_labels = list(info.labels)
    missing = sorted(set(target_labels) - set(model_labels))
    if missing:
        raise ValueError(f"data labels {missing} are not among model {info.name}'s labels {model_labels}")
    mapping = np.array([model_labels.index(label) for label in target_labels])
    return [mapping[np.asarray(t)] for t in targets]


async def stream_sequence(
    client: AsyncClient,
    model: str,
    x: np.ndarray,
    chunk: int,
    version: int = 0,
    include_scores: bool = False,
    idle_timeout_ms: int = 0,
    checkpoint_every_chunks: int = 0,
    chunk_interval_s: float = 0.0,
) -> StreamResult:
    """Stream x [steps, features] in chunks of `chunk` steps, each awaiting its answer; a refused stream
    raises seqserve.errors. On a client with several targets, or with checkpoints, the stream resumes
    where its server drained or dropped. `chunk_interval_s` > 0 sends chunk i no sooner than i intervals
    after the first, as a device sampling at a fixed rate does."""
    stream = client.stream(
        model, version=version, probabilities=include_scores, checkpoint_every=checkpoint_every_chunks,
        idle_timeout_s=idle_timeout_ms / 1000 if idle_timeout_ms else None,
    )  # fmt: skip
    answers: list[Answer] = []
    latencies: list[float] = []
    async with stream:
        opened = time.perf_counter()
        for index, start in enumerate(range(0, x.shape[0], chunk)):
            if chunk_interval_s > 0:
                await asyncio.sleep(opened + index * chunk_interval_s - time.perf_counter())
            sent = time.perf_counter()
            answers.append(await stream.send(x[start : start + chunk]))
            latencies.append(time.perf_counter() - sent)
        ended = await stream.end()
    task = stream.model.task if stream.model is not None else ""
    return _result(task, answers, ended, latencies)


def _result(task: str, answers: list[Answer], ended: Ended, latencies: list[float]) -> StreamResult:
    """Many-to-many: every step's answer (as they came, then any the end holds); many-to-one: the end's."""
    if task == "many_to_one":
        final: list[Answer] = [ended]
        running = [int(answer.label_indexes[-1]) for answer in answers if len(answer)]
        last = slice(-1, None)
    else:
        final, running, last = [*answers, ended], [], slice(None)
    labels = np.concatenate([answer.label_indexes[last] for answer in final])
    steps = np.concatenate([answer.step_indexes[last] for answer in final])
    scores = [p[last] for answer in final if (p := answer.probabilities) is not None]
    return StreamResult(
        labels=labels,
        scores=np.concatenate(scores) if scores else None,
        running=running,
        latencies_s=latencies,
        end_reason=pb.EndReason.Value(f"END_REASON_{ended.reason.upper()}"),
        steps=ended.steps,
        step_indexes=steps.tolist(),
        resumes=ended.resumes,
        resent_chunks=ended.resent_chunks,
    )


def _score(predictions: Sequence[np.ndarray], targets: Sequence[Any] | None) -> tuple[int, int]:
    """(correct, scored): per sequence for many-to-one targets, per step for many-to-many ones."""
    correct = scored = 0
    for labels, target in zip(predictions, targets or [], strict=False):
        target = np.atleast_1d(target)
        correct += int((labels[-len(target) :] == target).sum())
        scored += len(target)
    return correct, scored


async def stream_load(
    target: str | Sequence[str],
    model: str,
    sequences: Sequence[np.ndarray],
    targets: Sequence[Any] | None = None,
    chunk: int | Sequence[int] = 8,
    concurrency: int = 8,
    version: int = 0,
    include_scores: bool = False,
    progress: bool = False,
    target_labels: Sequence[str] | None = None,
    checkpoint_every_chunks: int = 0,
    security: ClientSecurity | None = None,
    chunk_interval_s: float = 0.0,
) -> LoadReport:
    """Stream every sequence over `concurrency` concurrent streams; `chunk` may differ per sequence.

    `target` is one server address or several: streams open on the first and move to the next when
    their server shuts down or drops, resuming from their latest checkpoint.
    `targets` index `target_labels` (a data set's label order), or the model's labels when that is None.
    """
    chunks = [chunk] * len(sequences) if isinstance(chunk, int) else list(chunk)
    async with AsyncClient(target, security=security) as client:
        info = await client.model(model, version)
        results: list[StreamResult] = []
        by_index: dict[int, StreamResult] = {}
        queue = iter(range(len(sequences)))
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"streaming {info.name}:{info.version}", total=len(sequences))

            async def worker() -> None:
                for index in queue:
                    by_index[index] = await stream_sequence(
                        client, model, sequences[index], chunks[index], info.version, include_scores,
                        checkpoint_every_chunks=checkpoint_every_chunks, chunk_interval_s=chunk_interval_s,
                    )  # fmt: skip
                    bar.advance(task)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(sequences)))))
            elapsed = time.perf_counter() - started
    results = [by_index[index] for index in range(len(sequences))]
    latencies = [s for r in results for s in r.latencies_s]
    predictions = [r.labels for r in results]
    return _report(info, sequences, predictions, targets, target_labels, elapsed, latencies, results)


async def classify_load(
    target: str,
    model: str,
    sequences: Sequence[np.ndarray],
    targets: Sequence[Any] | None = None,
    batch: int = 32,
    version: int = 0,
    progress: bool = False,
    target_labels: Sequence[str] | None = None,
    include_scores: bool = False,
    security: ClientSecurity | None = None,
) -> LoadReport:
    """Classify every sequence in Classify calls of `batch` sequences, one call at a time."""
    async with AsyncClient(target, security=security) as client:
        predictions: list[np.ndarray] = []
        scores: list[np.ndarray | None] = []
        latencies: list[float] = []
        info: ModelInfo | None = None
        started = time.perf_counter()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"classifying with {model}", total=len(sequences))
            for start in range(0, len(sequences), batch):
                part = sequences[start : start + batch]
                sent = time.perf_counter()
                found = await client.classify(model, part, version=version, probabilities=include_scores)
                latencies.append(time.perf_counter() - sent)
                info = found.model
                predictions += [answer.label_indexes for answer in found]
                scores += [answer.probabilities for answer in found]
                bar.advance(task, len(part))
        elapsed = time.perf_counter() - started
        if info is None:  # no sequences: the model's metadata still names the report
            info = await client.model(model, version)
    return _report(info, sequences, predictions, targets, target_labels, elapsed, latencies, scores=scores)


def _report(
    info: ModelInfo,
    sequences: Sequence[np.ndarray],
    predictions: list[np.ndarray],
    targets: Sequence[Any] | None,
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
) -> tuple[list[str], list[np.ndarray], list[Any]]:
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
    target: str | Sequence[str],
    model: str,
    dataset: str | None = None,
    data: Path | None = None,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    **options: Any,
) -> LoadReport:
    """`run` (`stream_load` or `classify_load`, with its `options`) over a data set's split, scored against
    its targets: `on_dataset(stream_load, target, "jv-gru", "japanese_vowels", chunk=4, concurrency=16)`."""
    labels, sequences, targets = load_split(dataset, data, split, seed, limit)
    return await run(target, model, sequences, targets, target_labels=labels, **options)


@dataclass
class Generated:
    """One Generate call as the client saw it: the text, why it stopped, and when each token arrived."""

    text: str
    reason: int  # pb.GenerateStopReason
    tokens: int
    stop: str
    arrivals_s: list[float]  # per token, seconds since the request was sent (a message's tokens share one)
    messages: int  # GeneratedText messages the text came in


async def generate(
    client: AsyncClient,
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    stop: Sequence[str] = (),
    version: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> Generated:
    """Run one Generate call to its end; `on_text` sees each piece of text as it arrives (a piece may
    carry several tokens)."""
    generation = client.generate(
        model, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed, stop=stop,
        version=version,
    )  # fmt: skip
    arrivals: list[float] = []
    sent = time.perf_counter()
    async for piece in generation:
        arrivals.extend([time.perf_counter() - sent] * (generation.tokens - len(arrivals)))
        if on_text is not None:
            on_text(piece)
    end = generation.end
    assert end is not None  # the iteration ends only after GenerateEnded; anything else raised
    reason = pb.GenerateStopReason.Value(f"GENERATE_STOP_REASON_{end.reason.upper()}")
    return Generated(generation.text, reason, end.tokens, end.stop, arrivals, end.pieces)
