"""A failing onnxruntime call hurts only its own rows: those streams end INTERNAL naming the model, every
other stream and model goes on, the next call works; a model failing call after call goes NOT_SERVING in
per-model health and comes back when its calls succeed again."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.service.engine.batcher import FAILURES_BEFORE_NOT_SERVING
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .reference import Offline
from .streams import END, chunk_request, open_request

FAILING, OTHER = "jv-gru", "jv-lstm"
Status = health_pb2.HealthCheckResponse
rng = np.random.default_rng(3)


class Switch:
    """Wraps a runtime's `run`: raises while `on`, like an onnxruntime call that fails."""

    def __init__(self, runtime) -> None:  # noqa: ANN001
        self.run = runtime.run
        self.on = False
        runtime.run = self

    def __call__(self, *args: object) -> object:
        if self.on:
            raise RuntimeError("injected failure: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION")
        return self.run(*args)


async def _health(channel: grpc.aio.Channel, name: str, want: int) -> int:
    """The model's health once it reads `want` (health is published just after the call that changed it)."""
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(300):
        status = (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
        if status == want:
            break
        await asyncio.sleep(0.01)
    return status


async def _classify(stub: pb_grpc.InferenceServiceStub, model: str) -> grpc.StatusCode:
    x = rng.standard_normal((5, 12)).astype(np.float32)
    try:
        await stub.Classify(
            pb.ClassifyRequest(model=model, sequences=[pb.Sequence(steps=5, values=x.tobytes())])
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_a_failed_call_ends_only_its_rows_and_health_follows_the_model(make_server, offline: Offline) -> None:
    server = make_server()
    switch = Switch(server.running.engine.repository.resolve(FAILING).runtime)
    bystander_x = rng.standard_normal((12, 12)).astype(np.float32)

    async def run() -> dict:
        seen: dict = {}
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            bystander, victim = stub.Stream(), stub.Stream()
            await bystander.write(open_request(OTHER, include_scores=True))
            await victim.write(open_request(FAILING))
            await bystander.read(), await victim.read()
            await bystander.write(chunk_request(bystander_x[:6]))
            await victim.write(chunk_request(bystander_x[:4]))
            await bystander.read(), await victim.read()

            switch.on = True
            await victim.write(chunk_request(bystander_x[4:8]))
            try:
                await victim.read()
            except grpc.aio.AioRpcError:
                pass
            seen["victim"] = (await victim.code(), await victim.details())
            await bystander.write(chunk_request(bystander_x[6:]))
            await bystander.read()
            switch.on = False
            seen["after one failure"] = await _health(channel, FAILING, Status.SERVING)
            seen["next call"] = await _classify(stub, FAILING)

            switch.on = True
            seen["failing calls"] = [
                await _classify(stub, FAILING) for _ in range(FAILURES_BEFORE_NOT_SERVING)
            ]
            seen["failing"] = await _health(channel, FAILING, Status.NOT_SERVING)
            seen["other model"] = await _health(channel, OTHER, Status.SERVING)
            seen["other calls"] = await _classify(stub, OTHER)
            await bystander.write(END)
            await bystander.done_writing()
            seen["bystander"] = (await bystander.read()).ended, await bystander.code()

            switch.on = False
            seen["recovered call"] = await _classify(stub, FAILING)
            seen["recovered"] = await _health(channel, FAILING, Status.SERVING)
        return seen

    seen = server.call(run())
    code, details = seen["victim"]
    assert code == grpc.StatusCode.INTERNAL
    assert f"model {FAILING}:1 failed on the onnxruntime call" in details and "injected failure" in details
    assert seen["after one failure"] == Status.SERVING and seen["next call"] == grpc.StatusCode.OK
    assert seen["failing calls"] == [grpc.StatusCode.INTERNAL] * FAILURES_BEFORE_NOT_SERVING
    assert seen["failing"] == Status.NOT_SERVING
    assert seen["other model"] == Status.SERVING and seen["other calls"] == grpc.StatusCode.OK
    ended, bystander_code = seen["bystander"]
    assert bystander_code == grpc.StatusCode.OK and ended.steps == 12
    np.testing.assert_allclose([ended.final_results[0].scores], offline.scores(OTHER, bystander_x), atol=1e-5)
    assert seen["recovered call"] == grpc.StatusCode.OK and seen["recovered"] == Status.SERVING
    assert server.running.store.open_count == 0 and server.running.store.state_bytes == 0
