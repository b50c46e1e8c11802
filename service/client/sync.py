"""`Client`: the same client as `AsyncClient`, for synchronous code. Every call runs the AsyncClient's on
the process's background loop (loop.py) and waits for it, so the two behave alike: the same answers, the
same resume and failover, the same errors.

    with Client("127.0.0.1:50051") as client:
        with client.stream("jv-gru") as stream:
            answer = stream.send(x[:5])
            final = stream.end()
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Self, TypeVar

import numpy as np

from seqserve.service.client.answers import (
    Answer,
    Classification,
    Ended,
    Forecast,
    GenerationEnd,
    ModelInfo,
    Translation,
)
from seqserve.service.client.channels import ClientSecurity
from seqserve.service.client.client import AsyncClient, AsyncGeneration
from seqserve.service.client.loop import run_on_loop
from seqserve.service.client.streams import AsyncStream, Chunk
from seqserve.v1 import seqserve_pb2 as pb

T = TypeVar("T")


class Client:
    """A seqserve client for synchronous code; the arguments are AsyncClient's."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls: bool | str | os.PathLike[str] = False,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        connections: int = 1,
        security: ClientSecurity | None = None,
    ) -> None:
        self._client = AsyncClient(
            target, tls=tls, tls_cert=tls_cert, tls_key=tls_key, tls_server_name=tls_server_name, token=token,
            timeout=timeout, connections=connections, security=security,
        )  # fmt: skip

    @property
    def targets(self) -> list[str]:
        return self._client.targets

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection. Calling again does nothing; any other call raises ClientClosed."""
        run_on_loop(self._client.close())

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every served model version, sorted by name, then version."""
        return run_on_loop(self._client.models(timeout=timeout))

    def model(self, name: str, version: int = 0, *, timeout: float | None = None) -> ModelInfo:
        """One model's metadata: its default version, or `version`."""
        return run_on_loop(self._client.model(name, version, timeout=timeout))

    def stream(
        self,
        model: str,
        *,
        version: int = 0,
        checkpoint_every: int = 0,
        probabilities: bool = False,
        final_only: bool = False,
        idle_timeout_s: float | None = None,
        start_unix_s: float | None = None,
        timeout: float | None = None,
    ) -> Stream:
        """A stream to `model` (see AsyncClient.stream); use it in `with`."""

        async def make() -> AsyncStream:
            return self._client.stream(
                model, version=version, checkpoint_every=checkpoint_every, probabilities=probabilities,
                final_only=final_only, idle_timeout_s=idle_timeout_s, start_unix_s=start_unix_s,
                timeout=timeout,
            )  # fmt: skip

        return Stream(run_on_loop(make()))

    def classify(
        self,
        model: str,
        sequences: Sequence[Chunk],
        *,
        version: int = 0,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Classification:
        """Whole sequences of any lengths in one call: one Answer per sequence, in order."""
        return run_on_loop(
            self._client.classify(
                model, sequences, version=version, probabilities=probabilities, timeout=timeout
            )
        )

    def predict(
        self,
        model: str,
        x: Chunk,
        *,
        version: int = 0,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Answer:
        """One whole sequence's answer (Classify of one)."""
        return run_on_loop(
            self._client.predict(model, x, version=version, probabilities=probabilities, timeout=timeout)
        )

    def forecast(
        self,
        model: str,
        histories: Sequence[np.ndarray | Sequence[float]],
        *,
        horizon: int,
        quantiles: Sequence[float] = (),
        start_unix_s: Sequence[float | None] | None = None,
        version: int = 0,
        timeout: float | None = None,
    ) -> list[Forecast]:
        """A forecaster's next `horizon` values after each history, in one call (see AsyncClient)."""
        return run_on_loop(
            self._client.forecast(
                model,
                histories,
                horizon=horizon,
                quantiles=quantiles,
                start_unix_s=start_unix_s,
                version=version,
                timeout=timeout,
            )  # fmt: skip
        )

    def translate(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        beam: int = 4,
        nbest: int = 1,
        max_steps: int = 0,
        length_penalty: float = 0.0,
        version: int = 0,
        timeout: float | None = None,
    ) -> list[Translation]:
        """A seq2seq model's n best outputs for each input, searched on the server (see AsyncClient)."""
        return run_on_loop(
            self._client.translate(
                model,
                inputs,
                beam=beam,
                nbest=nbest,
                max_steps=max_steps,
                length_penalty=length_penalty,
                version=version,
                timeout=timeout,
            )  # fmt: skip
        )

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Sequence[str] = (),
        version: int = 0,
        timeout: float | None = None,
    ) -> Generation:
        """A language model continues `prompt`: iterate for the text as it is made (see AsyncClient)."""

        async def make() -> AsyncGeneration:  # on the loop: the client's channels open there
            return self._client.generate(
                model, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed,
                stop=stop, version=version, timeout=timeout,
            )  # fmt: skip

        return Generation(run_on_loop(make()))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1: "SERVING", "NOT_SERVING", ... of the server ("") or of a model by name."""
        return run_on_loop(self._client.health(service, timeout=timeout))


class Stream:
    """A stream of chunks to one model, for synchronous code (see AsyncStream)."""

    def __init__(self, stream: AsyncStream) -> None:
        self._stream = stream

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        run_on_loop(self._stream.__aexit__(kind, error, trace))

    @property
    def resumes(self) -> int:
        """Times the stream moved to another target (or reopened) and went on."""
        return self._stream.resumes

    @property
    def resent_chunks(self) -> int:
        return self._stream.resent_chunks

    @property
    def model(self) -> ModelInfo | None:
        return self._stream.model

    @property
    def checkpoint(self) -> pb.Checkpoint | None:
        return self._stream.checkpoint

    def send(self, chunk: Chunk) -> Answer:
        """Send one chunk (float32 [steps, features], or token ids [steps]) and return its answer."""
        return run_on_loop(self._stream.send(chunk))

    def answers(self, chunks: Iterable[Chunk]) -> Iterator[Answer]:
        """Every chunk's answer, in order, with chunks written ahead of their answers."""
        return _blocking(self._stream.answers(chunks))

    def forecast(self, horizon: int, quantiles: Sequence[float] = ()) -> Forecast:
        """The next `horizon` values from the stream's state, which stays as it was (forecasters)."""
        return run_on_loop(self._stream.forecast(horizon, quantiles))

    def end(self) -> Ended:
        """End the stream; the final answer."""
        return run_on_loop(self._stream.end())

    def cancel(self) -> None:
        """Abandon the stream: the server frees its state at once."""

        async def cancel() -> None:
            self._stream.cancel()

        run_on_loop(cancel())


class Generation:
    """A Generate call for synchronous code: iterate for the text; `end` says why it stopped."""

    def __init__(self, generation: AsyncGeneration) -> None:
        self._generation = generation

    @property
    def end(self) -> GenerationEnd | None:
        return self._generation.end

    @property
    def text(self) -> str:
        return self._generation.text

    def __iter__(self) -> Iterator[str]:
        return _blocking(aiter(self._generation))

    def collect(self) -> str:
        """Run to the end; the whole text."""
        return run_on_loop(self._generation.collect())


def _blocking(items: AsyncIterator[T]) -> Iterator[T]:
    """An async iterator's items, each awaited on the background loop."""

    async def next_item() -> T:
        return await anext(items)

    try:
        while True:
            try:
                yield run_on_loop(next_item())
            except StopAsyncIteration:
                return
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            run_on_loop(close())
