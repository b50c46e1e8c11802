"""Who is calling: the name of the bearer token that authenticated the current RPC.

The auth interceptor sets it once per RPC, before the handler runs; grpc.aio runs the interceptors and the
handler in one contextvars.Context per RPC, so every front door's handler, and the engine it calls, sees
the caller without passing it along. None when the server takes no tokens.
"""

from __future__ import annotations

from contextvars import ContextVar

_CALLER: ContextVar[str | None] = ContextVar("seqserve_caller", default=None)


def current_caller() -> str | None:
    return _CALLER.get()


def set_caller(name: str | None) -> None:
    _CALLER.set(name)
