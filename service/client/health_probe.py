"""`seqserve health`: one gRPC health check against a running server, for Docker's HEALTHCHECK and scripts.

Exit status follows Docker's HEALTHCHECK contract: 0 when the service is SERVING, 1 otherwise (2 is
reserved by Docker, so an unreachable server is also 1).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from seqserve.console import fail
from seqserve.errors import SeqserveError
from seqserve.service.client.channels import ClientSecurity
from seqserve.service.client.sync import Client

UNHEALTHY_EXIT = 1


class HealthProbeError(RuntimeError):
    """The health check could not be answered: server unreachable, unknown service, or too slow."""


def check_health(
    target: str, service: str = "", timeout_s: float = 3.0, security: ClientSecurity | None = None
) -> str:
    """The serving status name (`SERVING`, `NOT_SERVING`, ...) of `service` at `target`; "" is the server.

    Health needs no bearer token; over TLS `security` says which CA to trust (and the client certificate
    for a server that requires mTLS)."""
    security = replace(security or ClientSecurity(), token=None)  # health needs no token
    with Client(target, security=security) as client:
        try:
            return client.health(service, timeout=timeout_s)
        except SeqserveError as exc:
            raise HealthProbeError(f"health check of service {service!r} at {target} failed: {exc}") from exc


def health_command(target: str, service: str, timeout_s: float, **security: Any) -> None:
    """`security`: the CLI's --tls* options, as ClientSecurity's fields."""
    try:
        status = check_health(target, service, timeout_s, ClientSecurity(**security))
        problem = "" if status == "SERVING" else f"service {service!r} at {target} is {status}, not SERVING"
    except (HealthProbeError, ValueError) as exc:
        problem = str(exc)
    if problem:
        fail(problem, code=UNHEALTHY_EXIT)
    print(f"{target} service {service!r}: SERVING")
