"""The one table that maps the engine's domain errors to gRPC status codes (docs/design.md section 6)."""

from __future__ import annotations

import grpc

from seqserve.service.engine import errors

STATUS_CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidChunk: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnparsableRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OutOfOrder: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.IdleTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.BadResumeToken: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NoStateKey: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.WrongTask: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(error: errors.ServiceError) -> grpc.StatusCode:
    return STATUS_CODES[type(error)]
