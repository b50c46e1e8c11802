"""`--poll-repository-s`: versions exported into a running server's repository serve without a restart,
removed ones finish their open streams and unload, a broken one is refused while everything else serves;
ListModels and per-model health follow."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kserve_pb
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from seqserve.contract import METADATA_FILE, version_dir
from seqserve.service.server.launch import ServerThread
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

from .reference import Offline
from .streams import END, chunk_request, end_ok, open_request

POLL_S = 0.05
Status = health_pb2.HealthCheckResponse
rng = np.random.default_rng(5)


@pytest.fixture
def live(make_server, service_repository: Path, tmp_path: Path) -> tuple[ServerThread, Path]:
    repository = Path(shutil.copytree(service_repository, tmp_path / "repository"))
    return make_server(repository=repository, poll_repository_s=POLL_S), repository


def _events(server: ServerThread) -> dict[str, float]:
    samples = server.running.metrics.repository_events.collect()[0].samples
    return {s.labels["event"]: s.value for s in samples if s.name.endswith("_total")}


def _copy_version(repository: Path, name: str, source: int, target: int) -> None:
    """Version `source` again as `target`, renamed into place whole as the exporter does."""
    staging = repository / name / f".staging-{target}"
    shutil.copytree(version_dir(repository, name, source), staging)
    info = json.loads((staging / METADATA_FILE).read_text())
    (staging / METADATA_FILE).write_text(json.dumps({**info, "version": target}))
    staging.rename(version_dir(repository, name, target))


async def _until(check: Callable[[], object], what: str) -> None:
    """Wait for the server's next rescans to make `check` true (bounded, so a miss fails, not hangs)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(POLL_S / 2)
    raise AssertionError(f"the server never got to: {what}")


async def _served(stub: pb_grpc.InferenceServiceStub) -> set[tuple[str, int, bool]]:
    models = (await stub.ListModels(pb.ListModelsRequest())).models
    return {(m.name, m.version, m.default_version) for m in models}


async def _index(channel: grpc.aio.Channel) -> set[tuple[str, str]]:
    """What the Triton protocol's RepositoryIndex lists."""
    index = await kserve_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
        kserve_pb.RepositoryIndexRequest()
    )
    return {(m.name, m.version) for m in index.models}


async def _whole_stream(stub: pb_grpc.InferenceServiceStub, model: str, x: np.ndarray, version: int = 0):
    """Open (on `version`), stream `x` in two chunks, end: the opened version and the final scores."""
    call = stub.Stream()
    await call.write(open_request(model, version=version, include_scores=True))
    opened = (await call.read()).opened
    for part in np.array_split(x, 2):
        await call.write(chunk_request(part))
        await call.read()
    ended = await end_ok(call)
    return opened.model.version, np.array([ended.final_results[0].scores])


def test_a_version_exported_into_the_repository_serves_without_restart(
    live: tuple[ServerThread, Path], trained_runs: dict[str, Path], offline: Offline
) -> None:
    from seqserve.export.job import export_run

    server, repository = live
    x = rng.standard_normal((10, 12)).astype(np.float32)

    async def run() -> tuple:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            old = stub.Stream()  # opened on version 1, goes on across the new version's arrival
            await old.write(open_request("jv-gru", include_scores=True))
            old_version = (await old.read()).opened.model.version
            await old.write(chunk_request(x[:5]))
            await old.read()

            await asyncio.get_running_loop().run_in_executor(
                None, export_run, trained_runs["jv-gru"], repository
            )
            await _until(lambda: server.running.engine.repository.resolve("jv-gru").runtime.info.version == 2,
                         "jv-gru:2 loaded")  # fmt: skip
            served = await _served(stub), await _index(channel)
            new = await _whole_stream(stub, "jv-gru", x)
            await old.write(chunk_request(x[5:]))
            await old.read()
            await old.write(END)
            await old.done_writing()
            old_final = np.array([(await old.read()).ended.final_results[0].scores])
            return old_version, served, new, old_final, await old.code()

    old_version, served, (new_version, new_scores), old_final, old_code = server.call(run())
    assert old_version == 1 and new_version == 2
    assert {("jv-gru", 1, False), ("jv-gru", 2, True)} <= served[0]
    assert {("jv-gru", "1"), ("jv-gru", "2")} <= served[1]
    # Version 2 is the same run exported again: the same answers, from its own session.
    np.testing.assert_allclose(new_scores, offline.scores("jv-gru", x), atol=1e-5)
    assert old_code == grpc.StatusCode.OK
    np.testing.assert_allclose(old_final, offline.scores("jv-gru", x), atol=1e-5)


def test_a_removed_version_finishes_its_streams_then_unloads(
    live: tuple[ServerThread, Path], offline: Offline
) -> None:
    server, repository = live
    repo = server.running.engine.repository
    _copy_version(repository, "jv-lstm", 1, 2)
    x = rng.standard_normal((8, 12)).astype(np.float32)

    async def run() -> dict:
        seen: dict = {}
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await _until(lambda: repo.resolve("jv-lstm").runtime.info.version == 2, "jv-lstm:2 loaded")
            open_on_2 = stub.Stream()
            await open_on_2.write(open_request("jv-lstm", include_scores=True))
            seen["opened on"] = (await open_on_2.read()).opened.model.version
            await open_on_2.write(chunk_request(x[:4]))
            await open_on_2.read()

            shutil.rmtree(version_dir(repository, "jv-lstm", 2))
            shutil.rmtree(repository / "bms-gru")  # a whole model gone
            await _until(lambda: repo.retired(), "jv-lstm:2 retired")
            seen["served"] = await _served(stub)
            seen["index"] = await _index(channel)
            seen["new stream"] = (await _whole_stream(stub, "jv-lstm", x))[0]
            try:
                await stub.GetModel(pb.GetModelRequest(model="jv-lstm", version=2))
            except grpc.aio.AioRpcError as error:
                seen["pinned"] = error.code()
            seen["gone model"] = (await health.Check(health_pb2.HealthCheckRequest(service="bms-gru"))).status
            seen["still retired"] = [m.key for m in repo.retired()]

            await open_on_2.write(chunk_request(x[4:]))
            await open_on_2.read()
            await open_on_2.write(END)
            await open_on_2.done_writing()
            seen["final"] = np.array([(await open_on_2.read()).ended.final_results[0].scores])
            seen["code"] = await open_on_2.code()
            await _until(lambda: not repo.retired(), "jv-lstm:2 unloaded")
        return seen

    seen = server.call(run())
    assert seen["opened on"] == 2 and seen["new stream"] == 1
    assert ("jv-lstm", 1, True) in seen["served"] and not {m for m in seen["served"] if m[0] == "bms-gru"}
    assert ("jv-lstm", 2, False) not in seen["served"] and ("jv-lstm", 2, True) not in seen["served"]
    assert ("jv-lstm", "1") in seen["index"] and ("jv-lstm", "2") not in seen["index"]
    assert not {m for m in seen["index"] if m[0] == "bms-gru"}
    assert seen["pinned"] == grpc.StatusCode.NOT_FOUND
    assert seen["gone model"] == Status.NOT_SERVING
    assert "jv-lstm:2" in seen["still retired"]  # its stream was still open
    assert seen["code"] == grpc.StatusCode.OK
    np.testing.assert_allclose(seen["final"], offline.scores("jv-lstm", x), atol=1e-5)
    assert _events(server) == {"loaded": 1, "refused": 0, "retired": 2, "unloaded": 2}
    assert server.running.store.open_count == 0 and server.running.store.state_bytes == 0


def test_a_broken_model_is_refused_once_and_the_rest_serves(
    live: tuple[ServerThread, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, repository = live
    repo = server.running.engine.repository
    staging = repository / ".staging"
    shutil.copytree(version_dir(repository, "jv-gru", 1), staging / "1")
    info = json.loads((staging / "1" / METADATA_FILE).read_text())
    (staging / "1" / METADATA_FILE).write_text(json.dumps({**info, "name": "broken"}))
    (staging / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    x = rng.standard_normal((6, 12)).astype(np.float32)

    async def run() -> tuple:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            with caplog.at_level(logging.WARNING, logger="seqserve.service.engine.repository"):
                staging.rename(repository / "broken")
                _copy_version(repository, "jv-gru", 1, 2)  # a good version arriving beside it still loads
                await _until(lambda: repo.resolve("jv-gru").runtime.info.version == 2, "jv-gru:2 loaded")
                await asyncio.sleep(POLL_S * 4)  # a few more rescans: still refused once, not once per scan
            try:
                await stub.GetModel(pb.GetModelRequest(model="broken"))
            except grpc.aio.AioRpcError as error:
                refused = error.code()
            return refused, await _whole_stream(stub, "jv-gru", x)

    refused, (version, _) = server.call(run())
    assert refused == grpc.StatusCode.NOT_FOUND and version == 2
    lines = [
        r
        for r in caplog.records
        if r.name == "seqserve.service.engine.repository" and r.levelno >= logging.WARNING
    ]
    assert len(lines) == 1 and "refused broken:1" in lines[0].getMessage() and lines[0].exc_info is None
    events = _events(server)
    assert events["refused"] == 1 and events["loaded"] == 1
