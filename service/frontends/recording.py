"""The one place that counts RPC outcomes: a server interceptor, outermost, so every RPC of every service
(seqserve.v1, health, reflection, any front door added later, an interceptor's refusal) is counted once in
`seqserve_requests_total` under the status code the client received.

The handler gets a context that remembers the code it aborted with or set; a cancelled call counts as
CANCELLED (DEADLINE_EXCEEDED when the client's deadline ran out), an exception that escapes a handler as
UNKNOWN, since that is what grpc then sends. Methods no service offers are answered UNIMPLEMENTED here,
counted under rpc="unknown" so a client cannot grow the label set.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from seqserve.service.engine import ServiceMetrics

UNKNOWN_RPC = "unknown"
_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class _WatchedContext:
    """A servicer context that remembers the status the handler chose; everything else passes through."""

    def __init__(self, context: grpc.aio.ServicerContext, rpc: str, metrics: ServiceMetrics) -> None:
        self._context = context
        self._rpc = rpc
        self._metrics = metrics
        self._counted = False
        self.chosen: grpc.StatusCode | None = None

    def count(self, code: grpc.StatusCode) -> None:
        """Count the call once; an abort counts before its status goes out, so a client that reads the
        metric after its status finds it counted."""
        if not self._counted:
            self._counted = True
            self._metrics.request_done(self._rpc, code.name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.chosen = code
        self.count(code)
        await self._context.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.chosen = status.code
        self.count(status.code)
        await self._context.abort_with_status(status)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.chosen = code
        self._context.set_code(code)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _outcome(context: _WatchedContext, error: BaseException | None) -> grpc.StatusCode:
    """The code the client receives for a call that ended with `error` (None: the handler returned)."""
    cancelled = isinstance(error, asyncio.CancelledError)
    if context.chosen is not None and not cancelled:
        return context.chosen
    if cancelled or context.cancelled():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


def _counted(behaviour: Callable, rpc: str, metrics: ServiceMetrics) -> Callable:
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            watched, error = _WatchedContext(context, rpc, metrics), None
            try:
                async for response in behaviour(request, watched):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                watched.count(_outcome(watched, error))

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        watched, error = _WatchedContext(context, rpc, metrics), None
        try:
            result = behaviour(request, watched)
            return await result if inspect.isawaitable(result) else result
        except BaseException as raised:
            error = raised
            raise
        finally:
            watched.count(_outcome(watched, error))

    return call


def _unimplemented(method: str, metrics: ServiceMetrics) -> grpc.RpcMethodHandler:
    async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        metrics.request_done(UNKNOWN_RPC, grpc.StatusCode.UNIMPLEMENTED.name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method {method[:200]!r} is not served here")

    # Raw bytes in and out: the same handler answers a unary or streaming call to an unknown method.
    return grpc.stream_stream_rpc_method_handler(refuse)


class RecordingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method handler so its outcome is counted exactly once."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return _unimplemented(handler_call_details.method, self.metrics)
        rpc = handler_call_details.method.rsplit("/", 1)[-1]
        wrapped = {
            name: _counted(getattr(handler, name), rpc, self.metrics)
            for name in _BEHAVIOURS
            if getattr(handler, name) is not None
        }
        return handler._replace(**wrapped)
