"""What the Python client raises: one exception class per family of gRPC status codes, each carrying the
code's name (`.code`, e.g. "INVALID_ARGUMENT") and the server's message (`.message`).

No grpc here: the client turns a gRPC error into one of these (`error_for`), so a caller catches
`seqserve.errors.InvalidArgument` or the base `SeqserveError`, never a raw `grpc.RpcError`. Which request
gets which code is the table in docs/design.md, section 6.
"""

from __future__ import annotations


class SeqserveError(Exception):
    """A call the server (or the connection to it) refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code  # the grpc.StatusCode name
        self.message = message  # the server's own words: the value sent and what was expected


class InvalidArgument(SeqserveError):
    """The request itself is wrong: a chunk's shape or values, an unparsable or tampered resume token."""


class NotFound(SeqserveError):
    """No such model or version on the server."""


class FailedPrecondition(SeqserveError):
    """The request is fine but not now or not here: Generate on a classifier, checkpoints on a server
    without a state key, a client used after close()."""


class ResourceExhausted(SeqserveError):
    """Over a server limit: open streams, steps per chunk, message size, tokens per caller."""


class Unauthenticated(SeqserveError):
    """A missing, malformed or unknown bearer token (PERMISSION_DENIED too)."""


class Unavailable(SeqserveError):
    """The server is unreachable, draining, or every failover target refused the call."""


class DeadlineExceeded(SeqserveError):
    """The call's `timeout=` passed, or the stream sat idle past the server's idle timeout."""


class Cancelled(SeqserveError):
    """The call was cancelled before it finished."""


class Unimplemented(SeqserveError):
    """The server does not serve this RPC."""


class Internal(SeqserveError):
    """The server failed (onnxruntime on a call, for example); INTERNAL, UNKNOWN and DATA_LOSS."""


class ClientClosed(FailedPrecondition):
    """A call on a Client (or a stream) after its close()."""

    def __init__(self, what: str) -> None:
        super().__init__("FAILED_PRECONDITION", f"{what} is closed: open a new one to call the server again")


_BY_CODE: dict[str, type[SeqserveError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": FailedPrecondition,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ABORTED": FailedPrecondition,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": Unauthenticated,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "CANCELLED": Cancelled,
    "UNIMPLEMENTED": Unimplemented,
    "INTERNAL": Internal,
    "UNKNOWN": Internal,
    "DATA_LOSS": Internal,
}


def error_for(code: str, message: str) -> SeqserveError:
    """The exception for a status code's name ("NOT_FOUND") and the server's message."""
    return _BY_CODE.get(code, SeqserveError)(code, message)
