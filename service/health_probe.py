"""`seqserve health`: one gRPC health check against a running server, for Docker's HEALTHCHECK and scripts.

Exit status follows Docker's HEALTHCHECK contract: 0 when the service is SERVING, 1 otherwise (2 is
reserved by Docker, so an unreachable server is also 1).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.cli import fail

UNHEALTHY_EXIT = 1


class HealthProbeError(RuntimeError):
    """The health check could not be answered: server unreachable, unknown service, or too slow."""


def check_health(target: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name (`SERVING`, `NOT_SERVING`, ...) of `service` at `target`; "" is the server."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise HealthProbeError(
                f"health check of service {service!r} at {target} failed: {exc.code().name}: {exc.details()}"
            ) from exc
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health_command(target: str, service: str, timeout_s: float) -> None:
    try:
        status = check_health(target, service, timeout_s)
        problem = "" if status == "SERVING" else f"service {service!r} at {target} is {status}, not SERVING"
    except HealthProbeError as exc:
        problem = str(exc)
    if problem:
        fail(problem, code=UNHEALTHY_EXIT)
    print(f"{target} service {service!r}: SERVING")
