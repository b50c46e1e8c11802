"""Counting and error mapping shared by every front door's RPC handlers."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from seqserve.service.errors import ServiceError, status_code

log = logging.getLogger(__name__)


def recorded(rpc: str) -> Callable:
    """Count the RPC by status code; turn domain errors into their status, anything else into INTERNAL."""

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            try:
                return await method(self, request, context)
            except ServiceError as error:
                code = status_code(error)
                await context.abort(code, str(error))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                log.exception("%s failed", rpc)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, f"internal error: {error}")
            finally:
                self.metrics.request_done(rpc, code.name)

        return handler

    return wrap
