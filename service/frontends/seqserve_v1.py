"""seqserve.v1.InferenceService: one thin method per RPC: translate messages and delegate."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from seqserve.service.engine import (
    IDLE_TIMEOUT,
    SHUTDOWN,
    Draining,
    IdleTimeout,
    InferenceEngine,
    InvalidChunk,
    OutOfOrder,
    ServiceError,
    StreamState,
)
from seqserve.service.frontends import seqserve_v1_converters as converters
from seqserve.service.kinds import forecaster as forecasting
from seqserve.service.kinds import language_model as generation
from seqserve.service.kinds import seq2seq
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END_REASONS = {IDLE_TIMEOUT: pb.END_REASON_IDLE_TIMEOUT, SHUTDOWN: pb.END_REASON_SERVER_SHUTDOWN}


class _StreamCall:
    """One Stream RPC: reads the client's messages in order and answers each."""

    def __init__(self, engine: InferenceEngine, context: grpc.aio.ServicerContext) -> None:
        self.engine = engine
        self.context = context
        self.stream: StreamState | None = None
        self.labels: list[str] = []

    async def run(self) -> None:
        # No response headers before the open is decided: a refusal goes out as trailers only, which a
        # client's retry policy may retry (gRPC's retry design; docs/operations.md, Running many replicas).
        first = await self.context.read()
        if first is grpc.aio.EOF:
            return
        kind = first.WhichOneof("kind")
        if kind != "open":
            raise OutOfOrder(f"the first message of a stream must be open, got {kind or 'an empty message'}")
        stream = self.stream = self.engine.open(
            first.open.model,
            first.open.version,
            first.open.idle_timeout_ms,
            converters.stream_options(first.open),
            first.open.resume_token,
            converters.constants(
                first.open, self.engine.repository.resolve(first.open.model, first.open.version)
            )
            if first.open.constants
            else None,
        )
        self.labels = stream.model.runtime.info.labels
        if first.open.HasField("start_unix_s") and not first.open.resume_token:
            forecasting.start_at(stream, first.open.start_unix_s)
        await self.context.write(converters.opened(stream, bool(first.open.resume_token)))
        while True:
            request = await self._read()
            kind = None if request is grpc.aio.EOF else request.WhichOneof("kind")
            if kind == "chunk":
                await self._chunk(request.chunk)
            elif kind == "forecast":
                answer = await forecasting.forecast_stream(
                    self.engine, stream, converters.forecast_ask(request.forecast)
                )
                await self.context.write(pb.StreamResponse(forecast=converters.forecast(answer)))
            elif kind == "open":
                raise OutOfOrder(f"open sent twice on stream {stream.id}; a stream is opened once")
            elif kind == "end" or request is grpc.aio.EOF:  # a half-close without end ends the stream too
                break
            else:
                raise InvalidChunk("empty StreamRequest; expected open, chunk, forecast or end")
        final = await self.engine.end(stream)
        # A cancelled client also reads as EOF here; its write fails, so the stream counts as cancelled.
        await self.context.write(
            converters.ended(
                pb.END_REASON_COMPLETED, stream.steps, final, self.labels, stream.options.include_scores
            )
        )
        self.engine.store.close(stream, "completed")
        if kind == "end":
            await self._await_half_close(stream)

    async def _chunk(self, chunk: pb.StreamChunk) -> None:
        received = time.perf_counter()
        stream = self.stream
        x = converters.values_array(
            chunk, stream.model, "chunk", stream.chunks, self.engine.config.max_chunk_steps
        )
        result = await self.engine.chunk(stream, x)
        options = stream.options
        await self.context.write(
            converters.chunk_response(
                stream.chunks - 1,
                None if options.final_only else result,
                stream.steps - 1,
                self.labels,
                options.include_scores,
                stream.checkpoint,
                stream.model,
            )  # fmt: skip
        )
        stream.model.metrics.chunk_latency.observe(time.perf_counter() - received)

    async def _read(self) -> Any:
        stream = self.stream
        if stream.interrupted:
            await self._interrupted()
        stream.last_seen = asyncio.get_running_loop().time()
        stream.reading = True
        try:
            return await self.context.read()
        except asyncio.CancelledError:
            if stream.interrupted is None:
                raise
            asyncio.current_task().uncancel()
            await self._interrupted()
        finally:
            stream.reading = False

    async def _interrupted(self) -> None:
        """The server ends this stream: tell the client why, free the state, finish with the status."""
        stream = self.stream
        reason = stream.interrupted
        if reason == IDLE_TIMEOUT:
            message = f"idle timeout: no message for {stream.idle_timeout_s:g} s on stream {stream.id}"
            error: ServiceError = IdleTimeout(message)
        else:
            message = "server shut down before the stream ended; reopen it on another replica"
            error = Draining(message)
        checkpoint = self.engine.final_checkpoint(stream, reason)
        if checkpoint is not None:
            message += f"; resume from the checkpoint at chunk {checkpoint.chunks}"
        self.engine.store.close(stream, reason)
        ended = converters.ended(
            _END_REASONS[reason], stream.steps, None, self.labels, False, message, checkpoint
        )
        await self.context.write(ended)
        raise error

    async def _await_half_close(self, stream: StreamState) -> None:
        # After end the client only closes its side; anything else it sends is out of order.
        try:
            request = await asyncio.wait_for(self.context.read(), stream.idle_timeout_s)
        except TimeoutError:
            return
        if request is not grpc.aio.EOF:
            raise OutOfOrder(
                f"{request.WhichOneof('kind')} sent after end on stream {stream.id}; the stream is over"
            )

    def close(self, reason: str) -> None:
        if self.stream is not None:
            self.engine.store.close(self.stream, reason)


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Registered through `registration.add_service`: requests arrive parsed, errors are mapped there."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        call = _StreamCall(self.engine, context)
        try:
            await call.run()
        except asyncio.CancelledError:
            call.close("cancelled")
            raise
        finally:
            call.close("error")  # no-op unless an error ended the stream

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:  # noqa: N802
        model = self.engine.repository.resolve(request.model, request.version)
        self.engine.check_client_rows(model, "Classify")
        if not request.sequences:
            raise InvalidChunk("ClassifyRequest has no sequences; expected at least 1")
        sequences = [
            converters.values_array(sequence, model, "sequence", i, None)
            for i, sequence in enumerate(request.sequences)
        ]
        results = await self.engine.classify(model, sequences)
        response = pb.ClassifyResponse(model=converters.model_info(model))
        labels = model.runtime.info.labels
        for x, result in zip(sequences, results, strict=True):
            answered = response.results.add()
            if model.declared:
                converters.fill_outputs(answered, result, model, x[0].shape[0] - 1, request.include_scores)
            else:
                converters.fill_steps(
                    answered.results, result, x.shape[0] - 1, labels, request.include_scores
                )
        return response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:  # noqa: N802
        return pb.ListModelsResponse(models=[converters.model_info(m) for m in self.engine.repository.all()])

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:  # noqa: N802
        model = self.engine.repository.resolve(request.model, request.version)
        return pb.GetModelResponse(model=converters.model_info(model))

    async def Forecast(
        self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForecastResponse:  # noqa: N802
        model = self.engine.repository.resolve(request.model, request.version)
        answers = await forecasting.forecast_histories(
            self.engine, model, converters.histories(request), converters.forecast_ask(request.ask)
        )
        return pb.ForecastResponse(
            model=converters.model_info(model), forecasts=[converters.forecast(a) for a in answers]
        )

    async def Translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranslateResponse:  # noqa: N802
        model = self.engine.repository.resolve(request.model, request.version)
        texts = list(request.inputs)
        found = await seq2seq.translate(self.engine, model, texts, converters.translate_options(request))
        return pb.TranslateResponse(
            model=converters.model_info(model),
            translations=[
                converters.translation(text, n_best) for text, n_best in zip(texts, found, strict=True)
            ],
        )

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        model = self.engine.repository.resolve(request.model, request.version)

        async def emit(piece: generation.Piece) -> None:
            await context.write(converters.generated_text(piece))

        end = await generation.generate(self.engine, model, converters.generate_params(request), emit)
        if end.reason == generation.SERVER_SHUTDOWN:
            message = "server shut down before the generation ended; retry on another replica"
            await context.write(converters.generate_ended(end, message))
            raise Draining(message)
        await context.write(converters.generate_ended(end))
