"""numpy in, request bytes out; a gRPC error in, a seqserve.errors exception out.

The client calls its methods by path with these serialisers (no generated service stubs), so each request
is serialised once, here, and a chunk costs one protobuf message.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np
from google.protobuf.message import Message

from seqserve.errors import SeqserveError, error_for
from seqserve.v1 import seqserve_pb2 as pb

SERVICE = "/seqserve.v1.InferenceService/"
STREAM = SERVICE + "Stream"
CLASSIFY = SERVICE + "Classify"
LIST_MODELS = SERVICE + "ListModels"
GET_MODEL = SERVICE + "GetModel"
GENERATE = SERVICE + "Generate"
FORECAST = SERVICE + "Forecast"
TRANSLATE = SERVICE + "Translate"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

_FLOAT32 = np.dtype("<f4")
END = pb.StreamRequest(end=pb.StreamEnd()).SerializeToString()


def _as_input(x: np.ndarray | Sequence[int], what: str) -> np.ndarray:
    """float32 [steps, features], or a language model's token ids [steps]; refused before any call."""
    array = np.asarray(x)
    if array.ndim not in (1, 2) or array.shape[0] == 0:
        raise ValueError(
            f"{what} has shape {array.shape}: expected [steps, features] values or [steps] token ids, "
            "steps >= 1"
        )
    if array.ndim == 1 and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{what} is 1-D {array.dtype}: token ids must be integers; values are [steps, features]"
        )
    return array


def chunk_request(x: np.ndarray | Sequence[int]) -> bytes:
    """A StreamRequest carrying one chunk, serialised."""
    array = _as_input(x, "chunk")
    if array.ndim == 1:
        chunk = pb.StreamChunk(steps=array.shape[0], tokens=array.tolist())
    else:
        chunk = pb.StreamChunk(steps=array.shape[0], values=np.ascontiguousarray(array, _FLOAT32).tobytes())
    return pb.StreamRequest(chunk=chunk).SerializeToString()


def sequence_message(x: np.ndarray | Sequence[int]) -> pb.Sequence:
    """A Classify sequence: float32 [steps, features], or a language model's token ids [steps]."""
    array = _as_input(x, "sequence")
    if array.ndim == 1:
        return pb.Sequence(steps=array.shape[0], tokens=array.tolist())
    return pb.Sequence(steps=array.shape[0], values=np.ascontiguousarray(array, _FLOAT32).tobytes())


def open_request(opening: pb.StreamOpen) -> bytes:
    return pb.StreamRequest(open=opening).SerializeToString()


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


# grpc.health.v1 by hand (HealthCheckRequest.service = 1, HealthCheckResponse.status = 1), so the client
# needs no grpcio-health-checking.
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def health_request(service: str) -> bytes:
    name = service.encode()
    return b"\n" + _varint(len(name)) + name if name else b""


def health_status(raw: bytes) -> str:
    """The ServingStatus name in a HealthCheckResponse (field 1, a varint; absent means 0, UNKNOWN)."""
    status, position = 0, 0
    while position < len(raw):
        key, position = raw[position], position + 1
        value = shift = 0
        while True:  # every field of this message is a varint
            byte, position = raw[position], position + 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key == 0x08:
            status = value
    return _SERVING_STATUS.get(status, str(status))


def status_error(error: grpc.aio.AioRpcError) -> SeqserveError:
    """The seqserve.errors exception for a failed call: its status code's name and the server's message."""
    return error_for(error.code().name, error.details() or "")


def forecast_ask(horizon: int, quantiles: Sequence[float]) -> pb.ForecastAsk:
    return pb.ForecastAsk(horizon=horizon, quantiles=list(quantiles))


def forecast_series(history: np.ndarray | Sequence[float], start_unix_s: float | None) -> pb.ForecastSeries:
    """One history, float [steps] (or [steps, 1]) oldest first; refused before any call when not 1-D."""
    values = np.asarray(history, dtype=np.float32)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"history has shape {values.shape}: expected [steps] observations")
    series = pb.ForecastSeries(values=values.tolist())
    if start_unix_s is not None:
        series.start_unix_s = start_unix_s
    return series
