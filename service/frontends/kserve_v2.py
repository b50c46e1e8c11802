"""inference.GRPCInferenceService (KServe V2 + Triton's sequence extension): one thin method per RPC.

Requests with a `sequence_id` go to the engine's sequence table (service/engine/sequences.py), the rest
are whole sequences answered statelessly like Classify. On ModelStreamInfer the reader hands each request
to the engine and reads on, so requests of different sequences share batcher calls; each answer is rendered as
the engine finishes it and written by the stream's one writer task; the table keeps each sequence's
answers in order, and a refused request gets a response with `error_message` while the stream goes on
(Triton's way).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from seqserve.service.engine import (
    InferenceEngine,
    InvalidChunk,
    ModelNotFound,
    ServedModel,
    ServiceError,
    ServiceMetrics,
    StreamState,
    Unsupported,
    WrongTask,
    outcome,
)
from seqserve.service.frontends import kserve_v2_converters as converters
from seqserve.service.frontends.status import status_code
from seqserve.service.kinds import forecaster as forecasting
from seqserve.service.kinds import seq2seq
from seqserve.service.kinds.classifier import RowResult
from seqserve.service.kinds.tensors import TensorAnswer

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
EXTENSIONS = ("sequence", "model_configuration", "statistics", "classification")
IMPLEMENTED = (
    "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig",
    "RepositoryIndex", "ModelStatistics", "ModelInfer", "ModelStreamInfer",
)  # fmt: skip
# Requests one ModelStreamInfer stream may have read and not yet answered on the wire (in the engine, or
# answered and waiting for a client that does not read) before the server stops reading it: gRPC's flow
# control then stalls the client's writes, and its answers cost the server a bounded amount of memory.
MAX_IN_FLIGHT_PER_STREAM = 1024
STREAM_RESPONSE = "ModelStreamInfer.response"  # the rpc label of each answer on a stream


def _server_version() -> str:
    try:
        return package_version("seqserve")
    except PackageNotFoundError:
        return "0"


# How a stream learns that an admitted request is over: (the request, the engine's answer, None) or
# (the request, None, the error it ended with, CancelledError included). Called on the event loop.
Answered = Callable[["_Admitted", Any, BaseException | None], None]


@dataclass(slots=True)
class _Admitted:
    """A request that passed validation and was handed to the engine. Its outcome goes to the stream's
    `Answered` callback, or without one to `pending`, which `response` awaits (a unary call)."""

    request: pb.ModelInferRequest
    model: ServedModel
    outputs: converters.Requested
    in_sequence: bool
    received: float
    pending: asyncio.Future | None = None

    def rows(self, answer: Any) -> list[RowResult]:
        return [answer] if self.in_sequence else answer

    def answered(self) -> None:
        if self.in_sequence:
            self.model.metrics.chunk_latency.observe(time.perf_counter() - self.received)

    def stream_response(self, answer: Any) -> pb.ModelStreamInferResponse:
        response = converters.stream_response(self.request, self.model, self.rows(answer), self.outputs)
        self.answered()
        return response

    def settle(self, answer: Any, error: BaseException | None) -> None:
        """A sequence request's outcome into `pending` (its caller may have gone: then nobody reads it)."""
        if self.pending.done():
            return
        if error is not None:
            self.pending.set_exception(error)
        else:
            self.pending.set_result(answer)

    async def response(self) -> pb.ModelInferResponse:
        # A cancelled caller cancels only `pending`: a sequence request runs to its end, its state whole.
        answer = await self.pending
        response = converters.infer_response(self.request, self.model, self.rows(answer), self.outputs)
        self.answered()
        return response


class KServeV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """Registered through `registration.add_service`: requests arrive parsed, errors are mapped there."""

    def __init__(self, engine: InferenceEngine, metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def admit(self, request: pb.ModelInferRequest, answered: Answered | None = None) -> _Admitted:
        """Validate and hand to the engine, synchronously: a sequence's requests queue in arrival order.
        With `answered` the outcome goes there instead of to `pending`'s awaiter."""
        received = time.perf_counter()
        model = self._model(request.model_name, request.model_version)
        control = converters.sequence_control(request)
        in_sequence = control.sequence_id is not None
        if converters.is_translator(model):
            return self._admit_translation(request, model, in_sequence, answered, received)
        max_steps = self.engine.config.max_chunk_steps if in_sequence else None
        ask = converters.forecast_ask(request, model, in_sequence)
        if ask is not None:
            forecasting.check_ask(model.runtime.info, ask, self.engine.config.max_forecast_steps)
        x = converters.input_array(request, model, in_sequence, max_steps)
        outputs = converters.requested_outputs(request, model, ask, in_sequence)
        admitted = _Admitted(request, model, outputs, in_sequence, received)
        if in_sequence:
            if answered is None:
                admitted.pending = asyncio.get_running_loop().create_future()
                on_answer = admitted.settle
            else:
                on_answer = functools.partial(answered, admitted)
            if ask is not None:
                on_answer = _then_forecast(model, ask, on_answer)
            sequence_id, start, end = control
            on_open = self._sequence_calendar(request, model, control)
            self.engine.sequences.submit(model, sequence_id, start, end, x[0], on_answer, on_open)
        elif ask is not None:
            start_unix_s = converters.forecast_start(request)
            histories = [forecasting.History(row[0], start_unix_s) for row in x]
            admitted.pending = asyncio.ensure_future(self._forecasts(model, histories, ask))
            if answered is not None:
                admitted.pending.add_done_callback(lambda done: answered(admitted, *outcome(done)))
        else:
            admitted.pending = asyncio.ensure_future(self.engine.classify(model, list(x)))
            if answered is not None:
                admitted.pending.add_done_callback(lambda done: answered(admitted, *outcome(done)))
        return admitted

    def _sequence_calendar(
        self, request: pb.ModelInferRequest, model: ServedModel, control: converters.SequenceControl
    ) -> Callable[[StreamState], None] | None:
        """A sequence's `start_unix_s`: its calendar phase, taken on the sequence's first request only."""
        start_unix_s = converters.forecast_start(request)
        if start_unix_s is None:
            return None
        if not control.start:
            raise InvalidChunk(
                f"parameter {converters.FORECAST_START} on a request that continues sequence "
                f"{control.sequence_id!r}; it sets the calendar phase on the sequence's first request "
                "(sequence_start)"
            )
        forecasting.check_start(model, start_unix_s)
        return functools.partial(forecasting.start_at, start_unix_s=start_unix_s)

    def _admit_translation(
        self,
        request: pb.ModelInferRequest,
        model: ServedModel,
        in_sequence: bool,
        answered: Answered | None,
        received: float,
    ) -> _Admitted:
        """A seq2seq request: its texts translated whole (no sequence: a translation keeps no state)."""
        if in_sequence:
            raise WrongTask(
                f"model {model.key} is a seq2seq model: a request translates whole texts, it takes no "
                "sequence_id"
            )
        texts = converters.translate_texts(request, model)
        options = converters.translate_options(request)
        outputs = converters.requested_outputs(request, model)
        admitted = _Admitted(request, model, outputs, False, received)
        admitted.pending = asyncio.ensure_future(seq2seq.translate(self.engine, model, texts, options))
        if answered is not None:
            admitted.pending.add_done_callback(lambda done: answered(admitted, *outcome(done)))
        return admitted

    async def _forecasts(
        self, model: ServedModel, histories: list[forecasting.History], ask: forecasting.ForecastAsk
    ) -> list[TensorAnswer]:
        answers = await forecasting.forecast_histories(self.engine, model, histories, ask)
        return [TensorAnswer(converters.forecast_tensors(answer), ()) for answer in answers]

    def _model(self, name: str, version: str) -> ServedModel:
        return self.engine.repository.resolve(name, converters.version_number(version))

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=not self.engine.store.draining)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="seqserve", version=_server_version(), extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        try:
            self._model(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self.engine.store.draining)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        model = self._model(request.name, request.version)
        versions = [
            m.runtime.info.version
            for m in self.engine.repository.all()
            if m.runtime.info.name == request.name
        ]
        return converters.model_metadata(model, versions)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:  # noqa: N802
        model = self._model(request.name, request.version)
        return pb.ModelConfigResponse(config=converters.model_config(model, self.engine.idle_timeout_s(0)))

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        state = "UNAVAILABLE" if self.engine.store.draining else "READY"
        if request.ready and state != "READY":
            return pb.RepositoryIndexResponse()
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=m.runtime.info.name, version=str(m.runtime.info.version), state=state
                )
                for m in self.engine.repository.all()
            ]
        )

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            models = [self._model(request.name, request.version)]
        else:
            models = self.engine.repository.all()
        return pb.ModelStatisticsResponse(
            model_stats=[converters.model_statistics(m, m.metrics.totals()) for m in models]
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        return await self.admit(request).response()

    async def ModelStreamInfer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        await _InferStream(self, context).run()


class _InferStream:
    """One ModelStreamInfer RPC: read requests in order; each answer is rendered when the engine is done
    with it and queued for the one writer task, so no task waits per request. The two tasks sleep on bare
    futures (`_writable`, `_room`) that the other side resolves: an asyncio.Event costs each answer two more
    Python calls and a waiter list. The reader stops at MAX_IN_FLIGHT_PER_STREAM requests in the engine or
    in the outbox: a client that sends without reading would otherwise have its answers pile up here."""

    def __init__(self, servicer: KServeV2Servicer, context: grpc.aio.ServicerContext) -> None:
        self.servicer = servicer
        self.context = context
        self._outbox: deque[tuple[pb.ModelStreamInferResponse, str]] = deque()
        self._writable: asyncio.Future | None = None  # the writer sleeps on it: something to write, or done
        self._room: asyncio.Future | None = None  # the reader sleeps on it while the stream is full
        self._in_engine = 0
        self._reading = True

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_all())
        try:
            await self._read_all()
            self._reading = False
            self._wake_writer()
            await writer
        finally:
            writer.cancel()  # the client went away: the answers still coming have nowhere to go

    async def _read_all(self) -> None:
        read, admit, answered = self.context.read, self.servicer.admit, self._answered
        while True:
            while self._in_engine + len(self._outbox) >= MAX_IN_FLIGHT_PER_STREAM:
                self._room = asyncio.get_running_loop().create_future()
                await self._room
            try:
                request = await read()
            except ServiceError as error:  # bytes that do not parse: no id to answer, the stream goes on
                self._refuse(pb.ModelInferRequest(), error)
                continue
            if request is grpc.aio.EOF:
                return
            try:
                admit(request, answered)
            except ServiceError as error:
                self._refuse(request, error)
                continue
            self._in_engine += 1

    def _answered(self, admitted: _Admitted, answer: Any, error: BaseException | None) -> None:
        self._in_engine -= 1
        if isinstance(error, asyncio.CancelledError):
            self._make_room()
            self._wake_writer()
            return
        if error is None:
            try:
                self._put(admitted.request, admitted.stream_response(answer), "OK")
                return
            except Exception as failed:  # noqa: BLE001 - answered like the engine's own failures
                error = failed
        if isinstance(error, ServiceError):
            self._refuse(admitted.request, error)
            return
        # The rows of a failed onnxruntime call: this request only.
        log.error("ModelStreamInfer request %r failed", admitted.request.id, exc_info=error)
        failed = converters.stream_error(admitted.request, "INTERNAL", f"internal error: {error}")
        self._put(admitted.request, failed, "INTERNAL")

    def _refuse(self, request: pb.ModelInferRequest, error: ServiceError) -> None:
        code = status_code(error).name
        self._put(request, converters.stream_error(request, code, str(error)), code)

    def _put(self, request: pb.ModelInferRequest, response: pb.ModelStreamInferResponse, code: str) -> None:
        converters.mark_final(request, response)
        self._outbox.append((response, code))
        if self._writable is not None:
            self._wake_writer()

    def _make_room(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():  # done: the writer was cancelled
            writable.set_result(None)

    async def _write_all(self) -> None:
        """grpc.aio takes one write at a time per call: this task makes them all, in the order answered."""
        write, done, outbox = self.context.write, self.servicer.metrics.request_done, self._outbox
        loop = asyncio.get_running_loop()
        while outbox or self._reading or self._in_engine:
            if not outbox:
                self._writable = loop.create_future()
                await self._writable
                continue
            response, code = outbox.popleft()
            if self._room is not None:
                self._make_room()
            await write(response)
            done(STREAM_RESPONSE, code)


def _then_forecast(
    model: ServedModel, ask: forecasting.ForecastAsk, on_answer: Callable[[Any, BaseException | None], None]
) -> Callable[[Any, BaseException | None], None]:
    """A sequence request that asks a forecast: its chunk's answer, then the forecast from the state after
    it, as one answer (the chunk's outputs and the forecast's); the sequence's next request does not wait
    for the forecast, which works on its own reference to that state."""

    def answered(answer: Any, error: BaseException | None) -> None:
        if error is not None:
            on_answer(answer, error)
            return
        rollout = asyncio.ensure_future(forecasting.forecast_after(model, answer, ask))

        def joined(done: asyncio.Future) -> None:
            forecast, failed = outcome(done)
            if failed is not None:
                on_answer(None, failed)
                return
            on_answer(
                TensorAnswer({**answer.tensors, **converters.forecast_tensors(forecast)}, answer.states), None
            )

        rollout.add_done_callback(joined)

    return answered


def _unimplemented(name: str):
    async def handler(self: KServeV2Servicer, request: Any, context: Any) -> None:
        raise Unsupported(
            f"seqserve does not implement {SERVICE_NAME}/{name}; it serves {', '.join(IMPLEMENTED)}"
        )

    handler.__name__ = name
    return handler


for _name in SERVICE.methods_by_name:
    if _name not in IMPLEMENTED:
        setattr(KServeV2Servicer, _name, _unimplemented(_name))
