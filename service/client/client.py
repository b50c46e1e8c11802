"""`AsyncClient`: seqserve from asyncio. One object per server (or per set of failover targets), numpy in,
typed answers out, `timeout=` on every call, seqserve.errors for every refusal.

    async with AsyncClient("127.0.0.1:50051") as client:
        async with client.stream("jv-gru") as stream:
            answer = await stream.send(x[:5])
            final = await stream.end()

Channels open on first use, so an AsyncClient may be made outside a running loop. `Client` (sync.py) is
the same client for synchronous code.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import grpc
import numpy as np

from seqserve.errors import ClientClosed, error_for
from seqserve.service.client.answers import (
    Answer,
    Classification,
    Forecast,
    GenerationEnd,
    ModelInfo,
    Translation,
    generation_end,
)
from seqserve.service.client.channels import ClientSecurity, open_channel
from seqserve.service.client.messages import (
    CLASSIFY,
    FORECAST,
    GENERATE,
    GET_MODEL,
    HEALTH_CHECK,
    LIST_MODELS,
    STREAM,
    TRANSLATE,
    forecast_ask,
    forecast_series,
    health_request,
    health_status,
    sequence_message,
    serialize,
    status_error,
)
from seqserve.service.client.streams import AsyncStream, Chunk, StreamMethod, check_options
from seqserve.v1 import seqserve_pb2 as pb

T = TypeVar("T")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class _Target:
    """One address: its channels (one connection each) and their method callables, made once."""

    def __init__(self, address: str, security: ClientSecurity, connections: int) -> None:
        # Each channel its own connection: gRPC shares one subchannel per address unless told not to.
        options = (
            [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if connections > 1 else CHANNEL_OPTIONS
        )
        self.channels = [open_channel(address, security, options) for _ in range(connections)]
        self.streams: list[StreamMethod] = [
            channel.stream_stream(STREAM, response_deserializer=pb.StreamResponse.FromString)
            for channel in self.channels
        ]
        self._turn = itertools.cycle(range(connections))
        channel = self.channels[0]
        self.list_models = channel.unary_unary(
            LIST_MODELS, request_serializer=serialize, response_deserializer=pb.ListModelsResponse.FromString
        )
        self.get_model = channel.unary_unary(
            GET_MODEL, request_serializer=serialize, response_deserializer=pb.GetModelResponse.FromString
        )
        self.classify = channel.unary_unary(
            CLASSIFY, request_serializer=serialize, response_deserializer=pb.ClassifyResponse.FromString
        )
        self.forecast = channel.unary_unary(
            FORECAST, request_serializer=serialize, response_deserializer=pb.ForecastResponse.FromString
        )
        self.translate = channel.unary_unary(
            TRANSLATE, request_serializer=serialize, response_deserializer=pb.TranslateResponse.FromString
        )
        self.generate = channel.unary_stream(
            GENERATE, request_serializer=serialize, response_deserializer=pb.GenerateResponse.FromString
        )
        self.health: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            HEALTH_CHECK
        )  # bytes (messages.health_request)

    def stream(self) -> StreamMethod:
        """The next connection's Stream method, round robin."""
        return self.streams[next(self._turn)]


class AsyncClient:
    """A seqserve client for asyncio.

    `target`: "host:port", or several in failover order (calls that find a server gone go on at the
    next; streams resume there from their latest checkpoint). `tls`: True for TLS with the system's
    trusted CAs, or the path of the CA (PEM) that signed the server's certificate; `tls_cert` and
    `tls_key` for mTLS; `token`: a bearer token. `timeout`: the default deadline of every call, in
    seconds (None: no deadline); each call's own `timeout=` overrides it. `connections`: connections
    per target, which new streams take in turn.
    """

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
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets:
            raise ValueError("no target: give at least one 'host:port'")
        if connections < 1:
            raise ValueError(f"connections is {connections}: expected >= 1")
        self._security = security or ClientSecurity(
            tls=tls is True,
            tls_ca=None if isinstance(tls, bool) else Path(tls),
            tls_cert=None if tls_cert is None else Path(tls_cert),
            tls_key=None if tls_key is None else Path(tls_key),
            tls_server_name=tls_server_name,
            token=token,
        )
        self._timeout = timeout
        self._connections = connections
        self._opened: list[_Target] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; open streams and calls end with CANCELLED. Calling again does nothing."""
        self._closed = True
        opened, self._opened = self._opened, None
        for target in opened or []:
            for channel in target.channels:
                await channel.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("this client")

    def _targets(self) -> list[_Target]:
        self._check_open()
        if self._opened is None:
            self._opened = [_Target(address, self._security, self._connections) for address in self.targets]
        return self._opened

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    async def _unary(self, call: Callable[[_Target], Awaitable[T]]) -> T:
        """`call` on the first target that answers: UNAVAILABLE moves on to the next one."""
        targets = self._targets()
        for target in targets:
            try:
                return await call(target)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or target is targets[-1]:
                    raise status_error(error) from None
        raise AssertionError("unreachable: the last target raises")

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every served model version, sorted by name, then version."""
        deadline = self._deadline(timeout)

        async def call(target: _Target) -> pb.ListModelsResponse:
            response: pb.ListModelsResponse = await target.list_models(
                pb.ListModelsRequest(), timeout=deadline
            )
            return response

        return [ModelInfo.from_message(info) for info in (await self._unary(call)).models]

    async def model(self, name: str, version: int = 0, *, timeout: float | None = None) -> ModelInfo:
        """One model's metadata: its default version, or `version`."""
        request = pb.GetModelRequest(model=name, version=version)
        deadline = self._deadline(timeout)

        async def call(target: _Target) -> pb.GetModelResponse:
            response: pb.GetModelResponse = await target.get_model(request, timeout=deadline)
            return response

        return ModelInfo.from_message((await self._unary(call)).model)

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
    ) -> AsyncStream:
        """A stream to `model`; it opens on the first send. `checkpoint_every`: a signed checkpoint with
        every Nth answer (the server needs a state key), so a resume resends at most N chunks.
        `probabilities`: every class's probability with each label. `final_only`: chunks answered with
        empty answers, the label only at end. `start_unix_s` (forecasters): the time of the first
        observation, which sets the calendar's phase. `timeout`: the whole stream's deadline."""
        check_options(checkpoint_every, idle_timeout_s)
        opening = pb.StreamOpen(
            model=model, version=version, include_scores=probabilities,
            emit=pb.EMIT_MODE_FINAL_ONLY if final_only else pb.EMIT_MODE_EVERY_CHUNK,
            idle_timeout_ms=0 if idle_timeout_s is None else max(1, round(idle_timeout_s * 1000)),
            checkpoint_every_chunks=checkpoint_every,
        )  # fmt: skip
        if start_unix_s is not None:
            opening.start_unix_s = start_unix_s
        methods = [target.stream() for target in self._targets()]
        return AsyncStream(methods, opening, self._deadline(timeout), self._check_open)

    async def classify(
        self,
        model: str,
        sequences: Sequence[Chunk],
        *,
        version: int = 0,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Classification:
        """Whole sequences of any lengths in one call: one Answer per sequence, in order."""
        request = pb.ClassifyRequest(
            model=model, version=version, include_scores=probabilities,
            sequences=[sequence_message(x) for x in sequences],
        )  # fmt: skip
        deadline = self._deadline(timeout)

        async def call(target: _Target) -> pb.ClassifyResponse:
            response: pb.ClassifyResponse = await target.classify(request, timeout=deadline)
            return response

        response = await self._unary(call)
        answers = [Answer(-1, result.results) for result in response.results]
        return Classification(ModelInfo.from_message(response.model), answers)

    async def predict(
        self,
        model: str,
        x: Chunk,
        *,
        version: int = 0,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Answer:
        """One whole sequence's answer (Classify of one)."""
        found = await self.classify(model, [x], version=version, probabilities=probabilities, timeout=timeout)
        return found[0]

    async def forecast(
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
        """A forecaster's next `horizon` values after each history (float [steps], oldest first), in one
        call: one Forecast per history. `start_unix_s`: each history's first time (the calendar phase)."""
        starts = list(start_unix_s) if start_unix_s is not None else [None] * len(histories)
        if len(starts) != len(histories):
            raise ValueError(f"{len(starts)} start times for {len(histories)} histories; expected one each")
        request = pb.ForecastRequest(
            model=model, version=version, ask=forecast_ask(horizon, quantiles),
            series=[forecast_series(h, start) for h, start in zip(histories, starts, strict=True)],
        )  # fmt: skip
        deadline = self._deadline(timeout)

        async def call(target: _Target) -> pb.ForecastResponse:
            response: pb.ForecastResponse = await target.forecast(request, timeout=deadline)
            return response

        return [Forecast.from_message(f) for f in (await self._unary(call)).forecasts]

    async def translate(
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
        """A sequence-to-sequence model's outputs for each input (a word's pronunciation), searched on the
        server in one call: one Translation per input, in order, with its `nbest` hypotheses best first.
        `beam` 1 is greedy search; `max_steps` 0 lets each input take 2 x its length + 10 tokens;
        `length_penalty` ranks by score / ((5 + length) / 6) ** length_penalty."""
        request = pb.TranslateRequest(
            model=model, version=version, inputs=list(inputs), beam_width=beam, nbest=nbest,
            max_steps=max_steps, length_penalty=length_penalty,
        )  # fmt: skip
        deadline = self._deadline(timeout)

        async def call(target: _Target) -> pb.TranslateResponse:
            response: pb.TranslateResponse = await target.translate(request, timeout=deadline)
            return response

        return [Translation.from_message(t) for t in (await self._unary(call)).translations]

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
    ) -> AsyncGeneration:
        """A language model continues `prompt`: iterate the result for the text as it is made; after the
        last piece, its `end` says why it stopped. Temperature 0 is greedy; the same seed, the same text."""
        request = pb.GenerateRequest(
            model=model, version=version, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
            top_k=top_k, seed=seed, stop=list(stop),
        )  # fmt: skip
        return AsyncGeneration(self._targets(), request, self._deadline(timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1: "SERVING", "NOT_SERVING", ... of the server ("") or of a model by name."""
        deadline = self._deadline(timeout)

        async def call(target: _Target) -> bytes:
            response: bytes = await target.health(health_request(service), timeout=deadline)
            return response

        return health_status(await self._unary(call))


class AsyncGeneration:
    """A Generate call: `async for piece in generation` yields the text as the server makes it; `end`
    (after the last piece) says why it stopped. A piece holds one token or more."""

    def __init__(self, targets: list[_Target], request: pb.GenerateRequest, timeout: float | None) -> None:
        self._targets = targets
        self._request = request
        self._timeout = timeout
        self._pieces: list[str] = []
        self.tokens = 0  # tokens received so far
        self.end: GenerationEnd | None = None

    @property
    def text(self) -> str:
        """The text so far."""
        return "".join(self._pieces)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        for target in self._targets:
            call = target.generate(self._request, timeout=self._timeout)
            try:
                async for response in call:
                    if response.HasField("text"):
                        self._pieces.append(response.text.text)
                        self.tokens += len(response.text.tokens)
                        yield response.text.text
                    else:
                        self.end = generation_end(response.ended, len(self._pieces))
                        return
            except grpc.aio.AioRpcError as error:
                # Before any text a server that is gone is skipped; after some, the text cannot go on.
                if error.code() != grpc.StatusCode.UNAVAILABLE or self._pieces or target is self._targets[-1]:
                    raise status_error(error) from None
            finally:
                call.cancel()
            if self._pieces:
                break
        raise error_for("INTERNAL", "Generate ended without a GenerateEnded message")

    async def collect(self) -> str:
        """Run to the end; the whole text."""
        async for _ in self:
            pass
        return self.text
