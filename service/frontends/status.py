"""The one table that maps the engine's domain errors to gRPC status codes (docs/design.md section 6)."""

from __future__ import annotations

import grpc

from seqserve.service.engine import (
    BadResumeToken,
    Draining,
    IdleTimeout,
    InferenceFailed,
    InvalidChunk,
    LimitExceeded,
    ModelNotFound,
    NoStateKey,
    OutOfOrder,
    ServiceError,
    Unauthenticated,
    UnparsableRequest,
    Unsupported,
    WrongTask,
)

STATUS_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidChunk: grpc.StatusCode.INVALID_ARGUMENT,
    UnparsableRequest: grpc.StatusCode.INVALID_ARGUMENT,
    OutOfOrder: grpc.StatusCode.FAILED_PRECONDITION,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    IdleTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    BadResumeToken: grpc.StatusCode.INVALID_ARGUMENT,
    NoStateKey: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    WrongTask: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(error: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES[type(error)]
