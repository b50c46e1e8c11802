"""The one table that maps the engine's domain errors to gRPC status codes (docs/design.md section 6), and
the trailers a refusal carries beside its status."""

from __future__ import annotations

import grpc

from seqserve.service.engine import errors

STATUS_CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidChunk: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnparsableRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OutOfOrder: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.AtCapacity: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.IdleTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.BadResumeToken: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NoStateKey: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.WrongTask: grpc.StatusCode.FAILED_PRECONDITION,
}


# gRPC's retry design (gRFC A6): how long the client should wait before it sends the call again. A client
# whose retry policy lists the status (RESOURCE_EXHAUSTED) waits that long instead of its own backoff; the
# policy applies only to a call that got no response headers, so a refusal goes out as trailers only.
RETRY_PUSHBACK = "grpc-retry-pushback-ms"


def status_code(error: errors.ServiceError) -> grpc.StatusCode:
    return STATUS_CODES[type(error)]


def trailers(error: errors.ServiceError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a refusal: the retry hint of a stream refused for want of room."""
    if isinstance(error, errors.AtCapacity):
        return ((RETRY_PUSHBACK, str(error.retry_after_ms)),)
    return ()
