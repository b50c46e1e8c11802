"""`seqserve health` against a bare gRPC health service: the exit status Docker's HEALTHCHECK reads."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from seqserve.cli import app
from seqserve.service.client.health_probe import HealthProbeError, check_health


@pytest.fixture
def health_target() -> Iterator[str]:
    """A server whose overall health is SERVING and whose `jv-gru` service is NOT_SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("jv-gru", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_check_health_reports_each_service_status(health_target: str) -> None:
    assert check_health(health_target) == "SERVING"
    assert check_health(health_target, service="jv-gru") == "NOT_SERVING"
    with pytest.raises(HealthProbeError, match="NOT_FOUND"):
        check_health(health_target, service="no-such-model")


@pytest.mark.parametrize(
    ("service", "exit_code", "says"),
    [("", 0, "SERVING"), ("jv-gru", 1, "is NOT_SERVING"), ("no-such-model", 1, "NOT_FOUND")],
)
def test_health_command_exit_status(health_target: str, service: str, exit_code: int, says: str) -> None:
    result = CliRunner().invoke(app, ["health", "--target", health_target, "--service", service])
    assert result.exit_code == exit_code
    assert says in result.output


def test_health_command_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
    result = CliRunner().invoke(app, ["health", "--target", f"127.0.0.1:{port}", "--timeout-s", "1"])
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.output
