"""The server's wiring: health (overall and per model), reflection, the listening line, SIGTERM's drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from seqserve.service.server.launch import ServerThread, run_on_loop, start_server_process
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .streams import END, chunk_request, open_request

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
CHUNK = np.zeros((3, 12), dtype=np.float32)


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status
        )


def test_health_answers_overall_and_per_model(server: ServerThread) -> None:
    for service in ("", "seqserve.v1.InferenceService", "jv-gru", "bms-gru", "jv-bigru"):
        assert _health(server.target, service) == SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        _health(server.target, "no-such-model")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_api(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        method = database.FindFileContainingSymbol("seqserve.v1.InferenceService").service[0].method
    assert {"seqserve.v1.InferenceService", "grpc.health.v1.Health"} <= services
    served = ["Stream", "Classify", "ListModels", "GetModel", "Generate", "Forecast", "Translate"]
    assert [m.name for m in method] == served


def test_list_and_get_models_describe_every_version(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
        pinned = stub.GetModel(pb.GetModelRequest(model="bms-gru", version=1)).model
    assert set(models) == {"jv-gru", "jv-lstm", "jv-bigru", "bms-gru", "bms-lstm"}
    assert models["jv-lstm"].cell == "lstm" and models["jv-lstm"].features == 12
    assert models["jv-bigru"].streamable is False and models["jv-gru"].streamable is True
    assert models["jv-gru"].execution_provider == "CPUExecutionProvider" and models["jv-gru"].default_version
    assert pinned.task == "many_to_many" and pinned.features == 6 and len(pinned.labels) == 4
    assert 0.0 < models["jv-gru"].test_accuracy <= 1.0


async def _drain_scenario(server, grace_s: float) -> dict:  # noqa: ANN001
    """One stream finishes inside the grace period, one outlives it; SIGTERM arrives between."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        finisher, outliver = stub.Stream(), stub.Stream()
        for call in (finisher, outliver):
            await call.write(open_request("jv-gru"))
            await call.read()
            await call.write(chunk_request(CHUNK))
            await call.read()
        server.process.send_signal(15)
        health = health_pb2_grpc.HealthStub(channel)
        while (await health.Check(health_pb2.HealthCheckRequest(service="jv-gru"))).status != NOT_SERVING:
            await asyncio.sleep(0.02)
        refused = stub.Stream()
        await refused.write(open_request("jv-gru"))
        with pytest.raises(grpc.aio.AioRpcError):
            await refused.read()
        await finisher.write(chunk_request(CHUNK))
        finished_chunk = await finisher.read()
        await finisher.write(END)
        await finisher.done_writing()
        finished = await finisher.read()
        cut = await outliver.read()  # sent nothing more: the drain ends it once the grace period is over
        return {
            "refused": (await refused.code(), await refused.details()),
            "finished": (finished_chunk.chunk.chunk_index, finished.ended.reason, finished.ended.steps,
                         await finisher.code()),
            "cut": (cut.ended.reason, cut.ended.steps, await outliver.code(), await outliver.details()),
        }  # fmt: skip


def test_sigterm_drains_then_exits_zero(service_repository: Path) -> None:
    server = start_server_process(service_repository, "--grace-s", "1.0")
    try:
        outcome = run_on_loop(_drain_scenario(server, 1.0), timeout_s=30)
        exit_code = server.process.wait(timeout=30)
    finally:
        server.process.kill()
    assert outcome["refused"][0] == grpc.StatusCode.UNAVAILABLE and "shutting down" in outcome["refused"][1]
    assert outcome["finished"] == (1, pb.END_REASON_COMPLETED, 6, grpc.StatusCode.OK)
    reason, steps, code, details = outcome["cut"]
    assert (reason, steps, code) == (pb.END_REASON_SERVER_SHUTDOWN, 3, grpc.StatusCode.UNAVAILABLE)
    assert "server shut down" in details
    assert exit_code == 0


def test_listening_line_names_both_addresses(service_repository: Path) -> None:
    server = start_server_process(service_repository, "--metrics-port", "-1")
    try:
        assert server.target.startswith("127.0.0.1:") and server.metrics_target is None
        assert _health(server.target, "") == SERVING
    finally:
        assert server.terminate() == 0
