"""inference.GRPCInferenceService (KServe V2 + Triton's sequence extension): one thin method per RPC.

Requests with a `sequence_id` go to the engine's sequence table (service/sequences.py), the rest are whole
sequences answered statelessly like Classify. On ModelStreamInfer each request is answered by its own task,
so requests of different sequences share batcher calls; the table keeps each sequence's answers in order,
and a refused request gets a response with `error_message` while the stream goes on (Triton's way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from seqserve.service.batcher import RowResult
from seqserve.service.errors import ModelNotFound, ServiceError, Unsupported, status_code
from seqserve.service.frontends import kserve_v2_converters as converters
from seqserve.service.inference import InferenceEngine
from seqserve.service.metrics import ServiceMetrics
from seqserve.service.repository import ServedModel

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
EXTENSIONS = ("sequence", "model_configuration", "statistics")
IMPLEMENTED = (
    "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig",
    "RepositoryIndex", "ModelStatistics", "ModelInfer", "ModelStreamInfer",
)  # fmt: skip
# Requests one ModelStreamInfer stream may have in flight before the server stops reading it.
MAX_IN_FLIGHT_PER_STREAM = 4096
STREAM_RESPONSE = "ModelStreamInfer.response"  # the rpc label of each answer on a stream


def _server_version() -> str:
    try:
        return package_version("seqserve")
    except PackageNotFoundError:
        return "0"


@dataclass(slots=True)
class _Admitted:
    """A request that passed validation and was handed to the engine; `pending` is its answer."""

    request: pb.ModelInferRequest
    model: ServedModel
    outputs: list[str]
    pending: Awaitable[Any]
    in_sequence: bool
    received: float

    async def rows(self) -> list[RowResult]:
        if self.in_sequence:
            # The engine runs the request to the end even if this caller is cancelled: its state stays whole.
            return [await asyncio.shield(self.pending)]
        return await self.pending

    async def response(self) -> pb.ModelInferResponse:
        response = converters.infer_response(self.request, self.model, await self.rows(), self.outputs)
        if self.in_sequence:
            self.model.metrics.chunk_latency.observe(time.perf_counter() - self.received)
        return response


class KServeV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """Registered through `registration.add_service`: requests arrive parsed, errors are mapped there."""

    def __init__(self, engine: InferenceEngine, metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def admit(self, request: pb.ModelInferRequest) -> _Admitted:
        """Validate and hand to the engine, synchronously: a sequence's requests queue in arrival order."""
        received = time.perf_counter()
        model = self._model(request.model_name, request.model_version)
        control = converters.sequence_control(request)
        in_sequence = control.sequence_id is not None
        max_steps = self.engine.config.max_chunk_steps if in_sequence else None
        x = converters.input_array(request, model, in_sequence, max_steps)
        outputs = converters.requested_outputs(request, model)
        if in_sequence:
            pending = self.engine.sequences.submit(
                model, control.sequence_id, control.start, control.end, x[0]
            )
        else:
            pending = asyncio.ensure_future(self.engine.classify(model, list(x)))
        return _Admitted(request, model, outputs, pending, in_sequence, received)

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
    """One ModelStreamInfer RPC: read requests in order, answer each from its own task as it completes."""

    def __init__(self, servicer: KServeV2Servicer, context: grpc.aio.ServicerContext) -> None:
        self.servicer = servicer
        self.context = context
        self._write_lock = asyncio.Lock()  # grpc.aio takes one write at a time per call
        self._answering: set[asyncio.Task] = set()

    async def run(self) -> None:
        try:
            while True:
                if len(self._answering) >= MAX_IN_FLIGHT_PER_STREAM:
                    await asyncio.wait(self._answering, return_when=asyncio.FIRST_COMPLETED)
                try:
                    request = await self.context.read()
                except ServiceError as error:  # bytes that do not parse: no id to answer, the stream goes on
                    await self._refuse(pb.ModelInferRequest(), error)
                    continue
                if request is grpc.aio.EOF:
                    break
                try:
                    admitted = self.servicer.admit(request)
                except ServiceError as error:
                    await self._refuse(request, error)
                    continue
                task = asyncio.create_task(self._answer(admitted))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
            if self._answering:
                await asyncio.gather(*self._answering)
        finally:
            for task in self._answering:  # the client went away: its answers have nowhere to go
                task.cancel()

    async def _answer(self, admitted: _Admitted) -> None:
        try:
            response = pb.ModelStreamInferResponse(infer_response=await admitted.response())
        except ServiceError as error:
            await self._refuse(admitted.request, error)
            return
        except Exception as error:  # the rows of a failed onnxruntime call: this request only
            log.exception("ModelStreamInfer request %r failed", admitted.request.id)
            await self._send(
                converters.stream_error(admitted.request, "INTERNAL", f"internal error: {error}"), "INTERNAL"
            )
            return
        await self._send(response, "OK")

    async def _refuse(self, request: pb.ModelInferRequest, error: ServiceError) -> None:
        code = status_code(error).name
        await self._send(converters.stream_error(request, code, str(error)), code)

    async def _send(self, response: pb.ModelStreamInferResponse, code: str) -> None:
        async with self._write_lock:
            await self.context.write(response)
        self.servicer.metrics.request_done(STREAM_RESPONSE, code)


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
