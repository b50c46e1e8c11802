"""Raw-bytes calls for the tests: any method of any service, with bytes that need not parse, and the
server's request counter read back as a tally of (rpc, code)."""

from __future__ import annotations

import asyncio
import collections

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from seqserve.service.engine.metrics import ServiceMetrics
from seqserve.service.frontends import kserve_v2
from seqserve.v1 import seqserve_pb2

SERVICES: list[ServiceDescriptor] = [
    seqserve_pb2.DESCRIPTOR.services_by_name["InferenceService"],
    kserve_v2.SERVICE,
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS: dict[str, MethodDescriptor] = {m.full_name: m for s in SERVICES for m in s.methods}


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def call_raw(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    messages: list[bytes],
    timeout: float = 30.0,
    answers: list[bytes] | None = None,
) -> tuple[grpc.StatusCode, str]:
    """Send `messages` as they are (one for a unary request), read every answer (kept in `answers` when
    given), return the status."""
    kind = (method.client_streaming, method.server_streaming)
    answers = [] if answers is None else answers
    try:
        if kind == (False, False):
            answers.append(await channel.unary_unary(path(method))(messages[0], timeout=timeout))
        elif kind == (False, True):
            call = channel.unary_stream(path(method))(messages[0], timeout=timeout)
            answers.extend([answer async for answer in call])
        else:
            factory = channel.stream_stream if method.server_streaming else channel.stream_unary
            call = factory(path(method))(iter(messages), timeout=timeout)
            if method.server_streaming:
                answers.extend([answer async for answer in call])
            else:
                answers.append(await call)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def request_tally(metrics: ServiceMetrics) -> collections.Counter:
    """(rpc, code name) -> count, from `seqserve_requests_total`."""
    tally: collections.Counter = collections.Counter()
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "seqserve_requests_total" and sample.value:
                tally[(sample.labels["rpc"], sample.labels["code"])] += int(sample.value)
    return tally


async def settled_tally(metrics: ServiceMetrics, total: int) -> collections.Counter:
    """The tally once it holds `total` calls: the server counts a call after its status is sent, and
    sees a client's cancel after the client does, so the count may trail the client by a moment."""
    for _ in range(500):
        if request_tally(metrics).total() >= total:
            break
        await asyncio.sleep(0.01)
    return request_tally(metrics)
