"""Put a service on the server: every front door (and health, reflection) goes through `add_service`.

grpc parses request bytes before a handler runs, and bytes that do not parse then reach the client as
an unhelpful status with a server-side traceback. Here the method handlers are built from the service
descriptor with no deserializer (the handler receives the raw bytes), and the wrapper parses them: bytes
over the size limit are RESOURCE_EXHAUSTED, bytes that do not parse are INVALID_ARGUMENT naming the RPC,
logged at WARNING without a traceback. The same wrapper maps domain errors
(`seqserve.service.engine.errors`) to their status and trailers once (`status.py`: a stream refused for
want of room carries the retry hint), and anything unexpected to INTERNAL with its traceback logged, for
every RPC.

grpc's own receive limit is set to `receive_ceiling(limit)`, above the configured limit, so a message over
the limit reaches this wrapper and its refusal is counted by `recording.RecordingInterceptor` like any
other outcome; grpc core still drops messages over the ceiling before any Python code sees them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from seqserve.service.engine import LimitExceeded, ServiceError, UnparsableRequest
from seqserve.service.frontends.status import status_code, trailers

log = logging.getLogger(__name__)

_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def receive_ceiling(max_message_bytes: int) -> int:
    """grpc's own receive limit: room above ours for a client's oversized message to be refused by us."""
    return min(4 * max_message_bytes, 2**31 - 1)


class RequestParser:
    """Bytes -> the RPC's request message, or the domain error that says what is wrong with them."""

    def __init__(self, rpc: str, request_type: type[Message], max_message_bytes: int) -> None:
        self.rpc = rpc
        self.request_type = request_type
        self.type_name = request_type.DESCRIPTOR.full_name
        self.max_message_bytes = max_message_bytes

    def __call__(self, raw: bytes, what: str) -> Message:
        if len(raw) > self.max_message_bytes:
            raise LimitExceeded(
                f"{self.rpc}: {what} is {len(raw)} bytes, over the server's limit of "
                f"{self.max_message_bytes} bytes per message"
            )
        try:
            return self.request_type.FromString(raw)
        except (DecodeError, RecursionError) as error:
            refusal = UnparsableRequest(
                f"{self.rpc}: {what} ({len(raw)} bytes) could not be parsed as {self.type_name} ({error}); "
                f"expected a serialized {self.type_name}"
            )
        # Logged here, whether the front door ends the call or answers in the stream (Triton's way).
        log.warning("%s", refusal)
        raise refusal


class _ParsingContext:
    """The servicer context of a client-streaming RPC: `read()` returns parsed messages."""

    def __init__(self, context: grpc.aio.ServicerContext, parse: RequestParser) -> None:
        self._context = context
        self._read = context.read  # once: through the recording wrapper it is a __getattr__ per message
        self._parse = parse
        self._count = 0

    async def read(self) -> Any:
        raw = await self._read()
        if raw is grpc.aio.EOF:
            return raw
        self._count += 1
        return self._parse(raw, f"message {self._count} of the stream")

    async def requests(self) -> AsyncIterator[Message]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _mapped(rpc: str, context: grpc.aio.ServicerContext, run: Callable[[], Any]) -> Any:
    """Run the servicer method; a domain error becomes its status, anything unexpected INTERNAL."""
    try:
        result = run()
        if inspect.isasyncgen(result):
            async for response in result:
                await context.write(response)
            return None
        return await result
    except grpc.aio.AbortError:
        raise
    except ServiceError as error:
        await context.abort(status_code(error), str(error), trailers(error))
    except NotImplementedError:  # a generated base-class method the servicer does not override
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not implemented by this server")
    except Exception as error:
        log.exception("%s failed", rpc)
        await context.abort(grpc.StatusCode.INTERNAL, f"{rpc}: internal error: {error}")


def _method_handler(servicer: object, method: MethodDescriptor, max_message_bytes: int) -> Any:
    rpc = method.name
    implementation = getattr(servicer, rpc)
    parse = RequestParser(rpc, GetMessageClass(method.input_type), max_message_bytes)
    if method.client_streaming:

        async def behaviour(_raw_requests: Any, context: grpc.aio.ServicerContext) -> Any:
            parsing = _ParsingContext(context, parse)
            return await _mapped(rpc, context, lambda: implementation(parsing.requests(), parsing))

    else:

        async def behaviour(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await _mapped(rpc, context, lambda: implementation(parse(raw, "the request"), context))

    make = _HANDLERS[(method.client_streaming, method.server_streaming)]
    serialize = GetMessageClass(method.output_type).SerializeToString
    return make(behaviour, request_deserializer=None, response_serializer=serialize)


def add_service(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, max_message_bytes: int
) -> None:
    """Serve every method of `service` from the servicer's method of the same name."""
    handlers = {m.name: _method_handler(servicer, m, max_message_bytes) for m in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
