"""Domain errors: what the engine and the model kinds refuse, each with the value that was wrong.

The batcher, state store, repository, runtime and kinds raise these; only the front doors turn them into
a status, through the one table in `service/frontends/status.py` (docs/design.md section 6).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; the message names the wrong value and what was expected."""


class ModelNotFound(ServiceError):
    """Unknown model or version."""


class InvalidChunk(ServiceError):
    """Wrong feature count, empty chunk, NaN/Inf, bytes not a multiple of 4, malformed request."""


class UnparsableRequest(ServiceError):
    """Request bytes that do not parse as the RPC's request message: the client's fault."""


class OutOfOrder(ServiceError):
    """Chunk before open, open twice, chunk after end."""


class LimitExceeded(ServiceError):
    """Too many open streams (on the server or for one token), chunk over max steps, message or buffer over
    max size."""


class AtCapacity(LimitExceeded):
    """A new stream refused for want of room, not for anything in the request: the server's open-stream
    limit, a token's, or its accept delay. The same stream may be served elsewhere now, or here later:
    `retry_after_ms` is how long a client should wait before it sends the stream again."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class IdleTimeout(ServiceError):
    """No message from the client within the stream's idle timeout."""


class Draining(ServiceError):
    """The server is shutting down and takes no new work."""


class InferenceFailed(ServiceError):
    """An onnxruntime call failed: the rows in that call end, every other row goes on."""


class Unsupported(ServiceError):
    """An RPC a protocol defines that seqserve does not serve (Triton's shared memory, load/unload...)."""


class BadResumeToken(ServiceError):
    """A resume token this server will not continue from: malformed, of another format version, signed by
    a key it does not hold, tampered with, expired, or for a model version it does not serve.
    `reason` (one of `checkpoints.REFUSAL_REASONS`) labels the refusal metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoStateKey(ServiceError):
    """Checkpoints or a resume asked of a server that was started without a state key."""


class Unauthenticated(ServiceError):
    """No bearer token, a malformed one, or one the server does not know."""


class WrongTask(ServiceError):
    """The model cannot do what was asked: Generate on a model that is not a language model."""
