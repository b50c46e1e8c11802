"""Every refused V2 request: the right code and a message naming what was sent, while other sequences on
the same stream finish exactly; on ModelInfer the gRPC status. Also idle eviction, drain and the RPCs
seqserve does not serve."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from seqserve.service.server.launch import ServerThread

from .reference import Offline
from .triton_requests import infer_request, interleaved, join

TOLERANCE = 1e-5
FEATURES = 12  # japanese_vowels


def _bad_requests(x: np.ndarray) -> list[tuple[pb.ModelInferRequest, str, str]]:
    """(request, code, words the message must hold) for every refusal a stream can meet."""
    wide = np.zeros((3, FEATURES + 1), np.float32)
    nan = x[:3].copy()
    nan[1, 2] = np.nan
    two_rows = np.zeros((2, 2, FEATURES), np.float32)
    return [
        (infer_request("no-such-model", x[:2], "e1", 9, True), "NOT_FOUND", "'no-such-model' is not served"),
        (infer_request("jv-gru", wide, "e2", 9, True), "INVALID_ARGUMENT", "shape [1, 3, 13]"),
        (infer_request("jv-gru", x[:2], "e3", 9, True, datatype="FP64"), "INVALID_ARGUMENT", "datatype FP64"),
        (infer_request("jv-gru", x[:2], "e4", 9, True, raw=b"\0" * 10), "INVALID_ARGUMENT", "10 bytes"),
        (infer_request("jv-gru", nan, "e5", 9, True), "INVALID_ARGUMENT", "nan at batch 0, step 1, feat"),
        (infer_request("jv-gru", x[:2], "e6", 9, True, input_name="h0"), "INVALID_ARGUMENT", "inputs 'h0'"),
        (infer_request("jv-gru", x[:2], "e7", 9, True, outputs=("hn",)), "INVALID_ARGUMENT", "output 'hn'"),
        (infer_request("jv-gru", x[:2], "e8", 404), "FAILED_PRECONDITION", "404 of model jv-gru:1 is not"),
        (infer_request("jv-gru", x[:2], "e9", 1, True), "FAILED_PRECONDITION", "already open"),
        (infer_request("jv-bigru", x[:2], "e10", 5, True), "FAILED_PRECONDITION", "bidirectional"),
        (infer_request("jv-gru", two_rows, "e11", 6, True), "INVALID_ARGUMENT", "batch 2 in a sequence"),
        (_asking(infer_request("jv-gru", x[:2], "e12", 7, True), "label", "classification", 3),
         "INVALID_ARGUMENT", "'label' has no class dimension to classify"),
        (_asking(infer_request("jv-gru", x[:2], "e13", 7, True), "scores", "classification", 0),
         "INVALID_ARGUMENT", "expected a class count >= 1"),
        (_asking(infer_request("jv-gru", x[:2], "e14", 7, True), "logits", "shared_memory_region", "r0"),
         "INVALID_ARGUMENT", "seqserve has no shared memory"),
    ]  # fmt: skip


def _asking(request: pb.ModelInferRequest, output: str, name: str, value: int | str) -> pb.ModelInferRequest:
    """`request` asking for `output` with one parameter, as tritonclient's InferRequestedOutput sets it."""
    parameters = request.outputs.add(name=output).parameters
    if isinstance(value, str):
        parameters[name].string_param = value
    else:
        parameters[name].int64_param = value
    return request


async def _stream_with_errors(target: str, xs: list[np.ndarray]) -> tuple[dict, list]:
    """Four good sequences (ids 1..4) interleaved with every bad request, on one stream."""
    chunks = [3, 5, 2, 7]
    parts = interleaved([len(x) for x in xs], chunks)
    good = [
        infer_request("jv-gru", xs[p.index][p.start : p.stop], p.request_id, p.index + 1, p.first, p.last)
        for p in parts
    ]
    bad = _bad_requests(xs[0])
    # The start-twice case needs sequence 1 open: every bad one goes after the good sequences' first turn.
    requests = good[:4] + [b[0] for b in bad] + good[4:]
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        for request in requests:
            await call.write(request)
        responses = [await call.read() for _ in requests]
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    by_id = {r.infer_response.id: r for r in responses}
    return by_id, [(parts, chunks), bad]


def test_every_stream_error_is_answered_and_other_sequences_finish_exactly(
    server: ServerThread, offline: Offline, sequences: dict
) -> None:
    xs = sequences["japanese_vowels"][:4]
    by_id, ((parts, _chunks), bad) = server.call(_stream_with_errors(server.target, xs))
    for request, code, words in bad:
        message = by_id[request.id].error_message
        assert message.startswith(f"{code}: ") and words in message, (request.id, message)
    answers: list[list[dict]] = [[] for _ in xs]
    for part in parts:
        response = by_id[part.request_id]
        assert response.error_message == "", response.error_message
        infer = response.infer_response
        arrays = {
            o.name: np.frombuffer(raw, np.float32 if o.datatype == "FP32" else np.int64).reshape(o.shape)
            for o, raw in zip(infer.outputs, infer.raw_output_contents, strict=True)
        }
        answers[part.index].append(arrays)
    for x, group in zip(xs, answers, strict=True):
        np.testing.assert_allclose(
            join(group, False).scores[-1:], offline.scores("jv-gru", x), atol=TOLERANCE
        )
    assert server.running.store.open_count == 0  # the refused starts opened nothing


@pytest.mark.parametrize("case", range(len(_bad_requests(np.zeros((3, FEATURES), np.float32)))))
def test_model_infer_errors_are_grpc_statuses(server: ServerThread, sequences: dict, case: int) -> None:
    x = sequences["japanese_vowels"][0]

    async def run() -> tuple:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request, code, words = _bad_requests(x)[case]
            if case == 8:  # start twice needs the sequence open
                await stub.ModelInfer(infer_request("jv-gru", x[:2], "", 1000, True))
                request.parameters["sequence_id"].int64_param = 1000
            try:
                await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as error:
                if case == 8:
                    await stub.ModelInfer(infer_request("jv-gru", x[2:3], "", 1000, False, True))
                return error.code().name, error.details(), code, words
            raise AssertionError(f"case {case} was accepted")

    got_code, details, code, words = server.call(run())
    assert got_code == code and words in details, details


def test_too_many_sequences_is_resource_exhausted_and_the_open_ones_go_on(
    make_server, sequences: dict
) -> None:
    running = make_server(max_streams=2)
    x = sequences["japanese_vowels"][0]

    async def run() -> list[pb.ModelStreamInferResponse]:
        async with grpc.aio.insecure_channel(running.target) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            requests = [infer_request("jv-gru", x[:2], f"s{i}", i + 1, True) for i in range(3)]
            requests += [infer_request("jv-gru", x[2:4], f"e{i}", i + 1, False, True) for i in range(2)]
            for request in requests:
                await call.write(request)
            responses = [await call.read() for _ in requests]
            await call.done_writing()
            return responses

    by_id = {r.infer_response.id: r.error_message for r in running.call(run())}
    assert by_id["s2"].startswith("RESOURCE_EXHAUSTED: too many open streams: 2 open")
    assert [by_id[k] for k in ("s0", "s1", "e0", "e1")] == ["", "", "", ""]
    assert running.running.store.open_count == 0


def test_idle_sequence_is_evicted_by_the_engine_and_its_state_freed(make_server, sequences: dict) -> None:
    running = make_server(idle_timeout_s=0.2)
    x = sequences["japanese_vowels"][0]
    store = running.running.store

    async def run() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(infer_request("jv-gru", x[:2], "", "idle-one", True))
            assert store.open_count == 1 and store.state_bytes > 0
            while store.open_count:  # the timer fires with no task reading for the sequence
                await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(infer_request("jv-gru", x[2:4], "", "idle-one"))
            return caught.value

    error = running.call(run(), timeout_s=30)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'idle-one' of model jv-gru:1 was ended by the idle timeout" in error.details()
    assert store.state_bytes == 0
    registry = running.running.metrics.registry
    labels = {"model": "jv-gru", "version": "1", "reason": "idle_timeout"}
    assert registry.get_sample_value("seqserve_stream_evictions_total", labels) == 1


def test_drain_makes_server_not_ready_refuses_new_sequences_and_lets_open_ones_finish(
    make_server, offline: Offline, sequences: dict
) -> None:
    running = make_server(grace_s=30.0)
    x = sequences["japanese_vowels"][1]

    async def run() -> tuple:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
            await stub.ModelInfer(infer_request("jv-gru", x[:4], "", 1, True))
            drain = asyncio.ensure_future(running.running.drain())
            while not running.running.store.draining:
                await asyncio.sleep(0.01)
            ready = (await stub.ServerReady(pb.ServerReadyRequest())).ready
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(infer_request("jv-gru", x[:4], "", 2, True))
            last = await stub.ModelInfer(
                infer_request("jv-gru", x[4:], "", 1, False, True, outputs=("scores",))
            )
            await drain
            return ready, refused.value, last

    ready, refused, last = running.call(run(), timeout_s=60)
    running.running = None  # already drained
    assert not ready
    assert refused.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.details()
    scores = np.frombuffer(last.raw_output_contents[0], np.float32).reshape(1, -1)
    np.testing.assert_allclose(scores, offline.scores("jv-gru", x), atol=TOLERANCE)


def test_metadata_config_statistics_health_and_reflection(server: ServerThread, sequences: dict) -> None:
    x = sequences["japanese_vowels"][0]

    async def run() -> dict:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            before = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="jv-lstm"))
            await stub.ModelInfer(infer_request("jv-lstm", x, ""))
            after = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="jv-lstm"))
            health = health_pb2_grpc.HealthStub(channel)
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            listed = [r async for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )]  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="jv-gru"))
            return {
                "server": await stub.ServerMetadata(pb.ServerMetadataRequest()),
                "live": await stub.ServerLive(pb.ServerLiveRequest()),
                "ready": await stub.ModelReady(pb.ModelReadyRequest(name="jv-gru")),
                "missing": await stub.ModelReady(pb.ModelReadyRequest(name="nope")),
                "metadata": await stub.ModelMetadata(pb.ModelMetadataRequest(name="bms-gru")),
                "config": await stub.ModelConfig(pb.ModelConfigRequest(name="jv-gru")),
                "bi_config": await stub.ModelConfig(pb.ModelConfigRequest(name="jv-bigru")),
                "index": await stub.RepositoryIndex(pb.RepositoryIndexRequest()),
                "before": before.model_stats[0],
                "after": after.model_stats[0],
                "health": await health.Check(
                    health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
                ),
                "services": [s.name for s in listed[0].list_services_response.service],
                "unimplemented": unimplemented.value,
            }

    got = server.call(run())
    assert got["server"].name == "seqserve" and "sequence" in got["server"].extensions
    assert got["live"].live and got["ready"].ready and not got["missing"].ready
    metadata = got["metadata"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, -1, 6])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("logits", "FP32", [-1, -1, 4]), ("label", "INT64", [-1, -1]), ("scores", "FP32", [-1, -1, 4]),
    ]  # fmt: skip
    config = got["config"].config
    assert config.max_batch_size == 0 and config.HasField("sequence_batching")
    assert config.sequence_batching.max_sequence_idle_microseconds == round(
        server.config.idle_timeout_s * 1e6
    )
    assert not got["bi_config"].config.HasField("sequence_batching")
    assert {(m.name, m.version, m.state) for m in got["index"].models} >= {("jv-gru", "1", "READY")}
    before, after = got["before"], got["after"]
    assert (
        after.inference_count == before.inference_count + 1 and after.execution_count > before.execution_count
    )
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.inference_stats.queue.count == after.inference_count
    assert got["health"].status == health_pb2.HealthCheckResponse.SERVING
    assert (
        "inference.GRPCInferenceService" in got["services"]
        and "seqserve.v1.InferenceService" in got["services"]
    )
    error = got["unimplemented"]
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "does not implement inference.GRPCInferenceService/RepositoryModelLoad" in error.details()


def test_a_refusal_is_the_final_response_when_the_client_asks(server: ServerThread, sequences: dict) -> None:
    x = sequences["japanese_vowels"][0]
    request = infer_request("jv-gru", x[:2], "never-started", 31337)
    request.parameters["triton_enable_empty_final_response"].bool_param = True

    async def run() -> pb.ModelStreamInferResponse:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            await call.write(request)
            response = await call.read()
            await call.done_writing()
            return response

    response = server.call(run())
    assert response.error_message.startswith("FAILED_PRECONDITION: ")
    assert response.infer_response.id == "never-started"
    assert response.infer_response.parameters["triton_final_response"].bool_param
