"""`seqserve health`: one gRPC health check against a running server, for Docker's HEALTHCHECK and scripts.

Exit status follows Docker's HEALTHCHECK contract: 0 when the service is SERVING, 1 otherwise (2 is
reserved by Docker, so an unreachable server is also 1).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.console import fail
from seqserve.service.client.channels import ClientSecurity, open_sync_channel

UNHEALTHY_EXIT = 1


class HealthProbeError(RuntimeError):
    """The health check could not be answered: server unreachable, unknown service, or too slow."""


def check_health(
    target: str, service: str = "", timeout_s: float = 3.0, security: ClientSecurity | None = None
) -> str:
    """The serving status name (`SERVING`, `NOT_SERVING`, ...) of `service` at `target`; "" is the server.

    Health needs no bearer token; over TLS `security` says which CA to trust (and the client certificate
    for a server that requires mTLS)."""
    request = health_pb2.HealthCheckRequest(service=service)
    with open_sync_channel(target, security) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise HealthProbeError(
                f"health check of service {service!r} at {target} failed: {exc.code().name}: {exc.details()}"
            ) from exc
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health_command(target: str, service: str, timeout_s: float, **security: object) -> None:
    """`security`: the CLI's --tls* options, as ClientSecurity's fields."""
    try:
        status = check_health(target, service, timeout_s, ClientSecurity(**security))
        problem = "" if status == "SERVING" else f"service {service!r} at {target} is {status}, not SERVING"
    except (HealthProbeError, ValueError) as exc:
        problem = str(exc)
    if problem:
        fail(problem, code=UNHEALTHY_EXIT)
    print(f"{target} service {service!r}: SERVING")
