"""The async load client behind `seqserve stream` and `seqserve classify`, reused by the demo and benchmarks.

`stream_sequence` runs one sequence through one Stream RPC, chunk by chunk, each chunk awaiting its answer
(so the latency of every chunk is measured alone). `stream_resumable` does the same over several targets:
when a stream ends with SERVER_SHUTDOWN or its connection drops, it reopens on the next target with the
latest checkpoint token and resends the chunks after it. `stream_load` runs many sequences over K
concurrent streams (one channel per target) and returns a `LoadReport`; `classify_load` does the same
with Classify batches; `on_dataset` runs either over a data set's split (what the CLI and the demo run).
From synchronous code in a process that also runs a server, run these on `launch.run_on_loop`.
Targets are label indices, in a data set's label order (`target_labels`) or the model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from rich.progress import Progress

from seqserve.predictions import SequencePrediction
from seqserve.service.client.channels import ClientSecurity, open_channel
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
    if part.ndim == 1:  # a language model's token ids
        return pb.StreamRequest(chunk=pb.StreamChunk(steps=part.shape[0], tokens=part.tolist()))
    values = np.ascontiguousarray(part, dtype=_FLOAT32).tobytes()
    return pb.StreamRequest(chunk=pb.StreamChunk(steps=part.shape[0], values=values))


def sequence_message(x: np.ndarray) -> pb.Sequence:
    """A Classify sequence: float32 [steps, features], or a language model's token ids [steps]."""
    if x.ndim == 1:
        return pb.Sequence(steps=x.shape[0], tokens=x.tolist())
    return pb.Sequence(steps=x.shape[0], values=np.ascontiguousarray(x, dtype=_FLOAT32).tobytes())


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
    checkpoint_every_chunks: int = 0,
) -> StreamResult:
    """Stream x [steps, features] in chunks of `chunk` steps; raises grpc.aio.AioRpcError on a bad status."""
    return await stream_resumable(
        [stub], model, x, chunk, version, include_scores, idle_timeout_ms, checkpoint_every_chunks
    )


# Codes after which the same stream may go on elsewhere: the server went away or is draining.
_FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE,)


class _Moved(Exception):
    """This attempt's server is gone or draining; the stream goes on at another target."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error


@dataclass
class _Progress:
    """What a resumable stream has so far, kept across attempts: answers by chunk, the latest checkpoint."""

    chunks: list[np.ndarray]
    answers: dict[int, list[pb.StepResult]] = field(default_factory=dict)
    latencies: dict[int, float] = field(default_factory=dict)
    checkpoint: pb.Checkpoint | None = None
    written: int = 0  # chunks written to some server so far (the highest index + 1)
    resent: int = 0
    ended: pb.StreamEnded | None = None
    many_to_many: bool = False

    def restart_at(self) -> int:
        """The first chunk the next attempt sends: the latest checkpoint covers every one before it."""
        start = self.checkpoint.chunks if self.checkpoint is not None else 0
        for index in [i for i in self.answers if i >= start]:
            del self.answers[index]  # answered, but no checkpoint holds the state after it: sent again
        return start


async def _attempt(stub: pb_grpc.InferenceServiceStub, opening: pb.StreamOpen, progress: _Progress) -> None:
    """One Stream call from the latest checkpoint to the end; raises _Moved when the server goes away."""
    start = progress.restart_at()
    call = stub.Stream()
    responses: asyncio.Queue[pb.StreamResponse | None] = asyncio.Queue()

    async def read_all() -> None:
        # A read is always pending, so a StreamEnded the server sends while no chunk is in flight (drain,
        # idle timeout) still arrives with its checkpoint; a write after it fails, a read would not.
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                responses.put_nowait(response)
        except grpc.aio.AioRpcError:
            pass  # the status is read below
        finally:
            responses.put_nowait(None)

    reader = asyncio.create_task(read_all())
    write_failed = False
    try:
        try:
            await _exchange(call, responses, opening, start, progress)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The call ended while this side was about to write: the server ended it (what it said last
            # is read below) or the connection dropped (gRPC then reports a local INTERNAL error).
            write_failed = True
        await reader
    finally:
        reader.cancel()
    while not responses.empty():
        response = responses.get_nowait()
        if response is not None and response.HasField("ended"):
            progress.ended = response.ended
    if progress.ended is not None and progress.ended.HasField("checkpoint"):
        progress.checkpoint = progress.ended.checkpoint
    code = await call.code()
    status = grpc.aio.AioRpcError(
        code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
    )
    if progress.ended is None:
        dropped = write_failed or code in _FAILOVER_CODES or code == grpc.StatusCode.OK
    else:
        dropped = progress.ended.reason == pb.END_REASON_SERVER_SHUTDOWN
    if dropped:
        raise _Moved(status)
    if code != grpc.StatusCode.OK:
        raise status


async def _exchange(
    call: grpc.aio.StreamStreamCall,
    responses: asyncio.Queue,
    opening: pb.StreamOpen,
    start: int,
    progress: _Progress,
) -> None:
    """Open, then each chunk from `start` awaiting its answer, then end; returns early when the call ends."""
    await call.write(pb.StreamRequest(open=opening))
    first = await responses.get()
    if first is None or not first.HasField("opened"):
        return
    progress.many_to_many = first.opened.model.task == "many_to_many"
    for index in range(start, len(progress.chunks)):
        request = _chunk_request(progress.chunks[index])
        progress.resent += index < progress.written
        progress.written = max(progress.written, index + 1)
        sent = time.perf_counter()
        await call.write(request)
        response = await responses.get()
        if response is None:
            return
        if response.HasField("ended"):  # the server ended the stream while this chunk was in flight
            progress.ended = response.ended
            return
        progress.latencies[index] = time.perf_counter() - sent
        progress.answers[index] = list(response.chunk.results)
        if response.chunk.HasField("checkpoint"):
            progress.checkpoint = response.chunk.checkpoint
    await call.write(pb.StreamRequest(end=pb.StreamEnd()))
    await call.done_writing()
    response = await responses.get()
    if response is not None:
        progress.ended = response.ended


async def stream_resumable(
    stubs: Sequence[pb_grpc.InferenceServiceStub],
    model: str,
    x: np.ndarray,
    chunk: int,
    version: int = 0,
    include_scores: bool = False,
    idle_timeout_ms: int = 0,
    checkpoint_every_chunks: int = 0,
    first: int = 0,
) -> StreamResult:
    """Stream x over `stubs` (one per target), starting at `stubs[first]`. When the stream's server shuts
    down or its connection drops, reopen on the next target from the latest checkpoint (from the start
    without one) and resend the chunks after it; every chunk is kept until a checkpoint covers it. With
    one stub the stream reopens on it only when it asks for checkpoints (behind a Kubernetes Service that
    is another pod); otherwise a failure raises grpc.aio.AioRpcError as a plain stream would. Gives up,
    raising the last status, after every target failed twice in a row without an answer."""
    progress = _Progress([x[start : start + chunk] for start in range(0, x.shape[0], chunk)])
    target, failures, resumes = first % len(stubs), 0, 0
    while True:
        token = progress.checkpoint.token if progress.checkpoint is not None else b""
        opening = pb.StreamOpen(
            model=model, version=version, include_scores=include_scores, idle_timeout_ms=idle_timeout_ms,
            checkpoint_every_chunks=checkpoint_every_chunks, resume_token=token,
        )  # fmt: skip
        answered = len(progress.answers)
        progress.ended = None
        try:
            await _attempt(stubs[target], opening, progress)
            break
        except _Moved as moved:
            failures = 0 if len(progress.answers) > answered or progress.ended is not None else failures + 1
            if len(stubs) == 1 and not checkpoint_every_chunks:
                raise moved.error from None
            if failures >= 2 * len(stubs):  # every target failed twice running: the last one's status
                raise moved.error from None
            resumes += 1
            target = (target + 1) % len(stubs)
            if failures and failures % len(stubs) == 0:
                await asyncio.sleep(0.05 * failures)  # every target refused: give them a moment
    return _result(progress, progress.ended, resumes)


def _result(progress: _Progress, ended: pb.StreamEnded, resumes: int) -> StreamResult:
    answers = [progress.answers[index] for index in sorted(progress.answers)]
    if progress.many_to_many:  # non-streamable: every step's result comes at end
        final = [step for answer in answers for step in answer] + list(ended.final_results)
        running = []
    else:
        final = list(ended.final_results[-1:])
        running = [answer[-1].label_index for answer in answers if answer]
    labels: list[int] = []
    scores: list = []
    _collect(final, labels, scores)
    return StreamResult(
        labels=np.asarray(labels, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32) if scores else None,
        running=running,
        latencies_s=[progress.latencies[i] for i in sorted(progress.latencies)],
        end_reason=ended.reason,
        steps=ended.steps,
        step_indexes=[step.step for step in final],
        resumes=resumes,
        resent_chunks=progress.resent,
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
    target: str | Sequence[str],
    model: str,
    sequences: Sequence[np.ndarray],
    targets: Sequence | None = None,
    chunk: int | Sequence[int] = 8,
    concurrency: int = 8,
    version: int = 0,
    include_scores: bool = False,
    progress: bool = False,
    target_labels: Sequence[str] | None = None,
    checkpoint_every_chunks: int = 0,
    security: ClientSecurity | None = None,
) -> LoadReport:
    """Stream every sequence over `concurrency` concurrent streams; `chunk` may differ per sequence.

    `target` is one server address or several: streams open on the first and move to the next when
    their server shuts down or drops (`stream_resumable`), resuming from their latest checkpoint.
    `targets` index `target_labels` (a data set's label order), or the model's labels when that is None.
    """
    chunks = [chunk] * len(sequences) if isinstance(chunk, int) else list(chunk)
    addresses = [target] if isinstance(target, str) else list(target)
    async with contextlib.AsyncExitStack() as channels:
        stubs = []
        for address in addresses:
            channel = open_channel(address, security, CHANNEL_OPTIONS)
            stubs.append(pb_grpc.InferenceServiceStub(await channels.enter_async_context(channel)))
        info = await _model_info(stubs, model, version)
        results: list[StreamResult | None] = [None] * len(sequences)
        queue = iter(range(len(sequences)))
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"streaming {info.name}:{info.version}", total=len(sequences))

            async def worker() -> None:
                for index in queue:
                    results[index] = await stream_resumable(
                        stubs, model, sequences[index], chunks[index], info.version, include_scores,
                        checkpoint_every_chunks=checkpoint_every_chunks,
                    )  # fmt: skip
                    bar.advance(task)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(sequences)))))
            elapsed = time.perf_counter() - started
    latencies = [s for r in results for s in r.latencies_s]
    predictions = [r.labels for r in results]
    return _report(info, sequences, predictions, targets, target_labels, elapsed, latencies, results)


async def _model_info(stubs: list[pb_grpc.InferenceServiceStub], model: str, version: int) -> pb.ModelInfo:
    """The model's metadata from the first target that answers."""
    for stub in stubs[:-1]:
        try:
            return (await stub.GetModel(pb.GetModelRequest(model=model, version=version))).model
        except grpc.aio.AioRpcError as error:
            if error.code() not in _FAILOVER_CODES:
                raise
    return (await stubs[-1].GetModel(pb.GetModelRequest(model=model, version=version))).model


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
                    sequences=[sequence_message(x) for x in part],
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
    stub: pb_grpc.InferenceServiceStub,
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
    """Run one Generate call to its end; `on_text` sees each piece of text as it arrives (a message may
    carry several tokens)."""
    request = pb.GenerateRequest(
        model=model, version=version, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
        top_k=top_k, seed=seed, stop=list(stop),
    )  # fmt: skip
    pieces: list[str] = []
    arrivals: list[float] = []
    sent = time.perf_counter()
    async for response in stub.Generate(request):
        if response.HasField("text"):
            now = time.perf_counter() - sent
            pieces.append(response.text.text)
            arrivals.extend([now] * len(response.text.tokens))
            if on_text is not None:
                on_text(response.text.text)
        else:
            ended = response.ended
            return Generated("".join(pieces), ended.reason, ended.tokens, ended.stop, arrivals, len(pieces))
    raise RuntimeError("Generate ended without a GenerateEnded message")
