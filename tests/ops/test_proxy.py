"""Three `seqserve serve` replicas behind a real HAProxy running docker/haproxy.cfg, on loopback.

Streams spread over the replicas through the proxy's one address; a replica killed mid-stream (SIGKILL)
or restarted (SIGTERM, one after another) costs no step: every stream resumes through the same address
from its latest checkpoint, and every step is answered exactly once and equal to offline. Triton/KServe
sequences of unary ModelInfer calls stick to one replica by the `seqserve-sequence` header. The proxy
keeps a replica under its --max-streams, so a burst larger than one replica takes is served by three.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.haproxy_server import (
    HAProxy,
    HAProxyStartError,
    Replicas,
    haproxy_binary,
    start_haproxy,
)
from seqserve.service.client.load import LoadReport, stream_load
from seqserve.service.server.launch import ServerProcess, background_loop
from seqserve.training.datasets import load_dataset

from ..service.reference import Offline

MODEL = "bms-gru"
CHUNK = 4
REPLICAS = 3
STATE_KEY = "test-proxy-state-key-0123456789abcdef"


@pytest.fixture(scope="module")
def haproxy() -> str:
    """The haproxy binary, installed by scripts/install_haproxy.sh where it is missing and can be."""
    found = haproxy_binary()
    if found is None:
        script = Path(__file__).resolve().parents[2] / "scripts" / "install_haproxy.sh"
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
        found = haproxy_binary()
        if found is None:
            pytest.skip(
                f"haproxy is not installed and {script.name} could not install it: {done.stderr.strip()}"
            )
    return found


@pytest.fixture
def cluster(
    haproxy: str, model_repository: Path, tmp_path: Path
) -> Iterator[Callable[..., tuple[Replicas, HAProxy]]]:
    """`cluster(*flags)`: REPLICAS servers sharing a state key (and `flags`) behind HAProxy; every process
    still up is stopped at teardown."""
    key = tmp_path / "state-key"
    key.write_text(STATE_KEY + "\n")
    started: list[tuple[Replicas, HAProxy | None]] = []

    def start(*flags: str, count: int = REPLICAS, max_streams: int | None = None) -> tuple[Replicas, HAProxy]:
        replicas = Replicas(model_repository, ("--state-key-file", str(key), *flags), tmp_path)
        started.append((replicas, None))
        replicas.start_all(count)
        try:
            proxy = start_haproxy(replicas.targets, tmp_path / "haproxy", max_streams)
        except HAProxyStartError as error:
            pytest.fail(str(error))
        started[-1] = (replicas, proxy)
        return replicas, proxy

    yield start
    for replicas, proxy in started:
        if proxy is not None:
            proxy.stop()
        replicas.stop_all()


@pytest.fixture(scope="module")
def motion_streams() -> list[np.ndarray]:
    """96 basic-motions test streams of 400 steps (100 chunks of 4)."""
    streams = load_dataset(dataset="basic_motions_stream").test.sequences
    return [np.concatenate([streams[i % len(streams)]] * 2)[:400] for i in range(96)]


@pytest.fixture(scope="module")
def offline(model_repository: Path) -> Offline:
    return Offline(model_repository)


def metric(server: ServerProcess, name: str) -> float:
    """The sum of a family's samples named `name` on a server's /metrics."""
    with urllib.request.urlopen(f"http://{server.metrics_target}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def start_load(proxy: HAProxy, xs: list[np.ndarray], **options) -> asyncio.Future:  # noqa: ANN003
    """Every stream at once through the proxy's one address, a checkpoint every 4 chunks."""
    load = stream_load(
        proxy.target, MODEL, xs, chunk=CHUNK, concurrency=len(xs), checkpoint_every_chunks=4, **options
    )
    return asyncio.run_coroutine_threadsafe(load, background_loop())


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_streams(proxy: HAProxy) -> dict[str, int]:
    """{server: calls open through it now} of the proxy's `streams` backend."""
    rows = proxy.stats()
    return {
        row["svname"]: int(row["scur"])
        for row in rows
        if row["pxname"] == "streams" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def check_every_step_once(report: LoadReport, xs: list[np.ndarray], offline: Offline) -> int:
    """Every step answered exactly once and equal to offline; the number of resumes."""
    for x, result in zip(xs, report.results, strict=True):
        assert result.step_indexes == list(range(len(x))), "an answered step was lost or answered twice"
        assert result.labels.tolist() == offline.scores(MODEL, x).argmax(axis=-1).tolist()
    return report.resumes


def test_streams_spread_and_survive_a_replica_killed_mid_stream(
    cluster, motion_streams: list[np.ndarray], offline: Offline
) -> None:
    replicas, proxy = cluster()
    future = start_load(proxy, motion_streams)
    victim = replicas.processes[1]
    wait_for(lambda: sum(open_streams(proxy).values()) == len(motion_streams), "every stream to open")
    spread = open_streams(proxy)
    wait_for(
        lambda: metric(victim, "seqserve_chunks_total") >= 10 * spread["seqserve-1"], "10 chunks a stream"
    )
    victim.kill()
    report = future.result(timeout=120)
    assert max(spread.values()) <= len(motion_streams) // 2, spread
    assert min(spread.values()) >= 1, spread
    resumes = check_every_step_once(report, motion_streams, offline)
    moved = sum(result.resumes >= 1 for result in report.results)
    assert moved == spread["seqserve-1"], (moved, spread)  # exactly the victim's streams moved
    assert resumes == moved
    survivors = [replicas.processes[0], replicas.processes[2]]
    assert sum(metric(s, "seqserve_resumes_total") for s in survivors) == moved
    assert all(metric(s, "seqserve_streams_active") == 0 for s in survivors)


def test_a_rolling_restart_of_every_replica_loses_no_step(
    cluster, motion_streams: list[np.ndarray], offline: Offline
) -> None:
    # Each replica leaves the proxy's rotation before its SIGTERM, so only its own streams move, each once,
    # from the checkpoint its drain hands out; paced streams outlast three restarts on a fast machine too.
    replicas, proxy = cluster("--grace-s", "0.5")
    xs = [np.concatenate([x] * 8) for x in motion_streams[:48]]  # 3,200 steps: 800 chunks, 48 s at the pace
    future = start_load(proxy, xs, chunk_interval_s=0.06)
    wait_for(lambda: sum(open_streams(proxy).values()) == len(xs), "every stream to open")
    stopped = []
    for index in range(REPLICAS):
        name, old = f"seqserve-{index}", replicas.processes[index]
        proxy.set_state(name, "drain")  # what Kubernetes' endpoint removal and the preStop sleep give
        time.sleep(0.5)
        assert old.terminate(timeout_s=20) == 0
        stopped.append(old.output())
        replicas.start(index)
        proxy.set_state(name, "ready")
        proxy.wait_status({name: "UP"})
        assert not future.done(), "the streams ended before every replica restarted: make them longer"
    report = future.result(timeout=120)
    check_every_step_once(report, xs, offline)
    moved = sum(result.resumes >= 1 for result in report.results)
    assert moved >= len(xs) // 2, moved
    for output in stopped:
        assert "seqserve stopped open_streams=0" in output, output[-2000:]


def sequence_inputs(x: np.ndarray):  # noqa: ANN201 - tritonclient's InferInput
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))
    return [tensor]


def test_sequences_of_unary_calls_stick_to_one_replica_by_header(cluster, offline: Offline) -> None:
    import tritonclient.grpc as grpcclient

    replicas, proxy = cluster()
    xs = load_dataset(dataset="japanese_vowels").test.sequences[:32]
    client = grpcclient.InferenceServerClient(url=proxy.target)
    running: dict[int, np.ndarray] = {}
    try:
        for start in range(0, 30, 3):  # the 32 sequences interleaved, 3 steps a request
            for index, x in enumerate(xs):
                if start >= len(x):
                    continue
                part = x[start : start + 3]
                result = client.infer(
                    "jv-gru",
                    sequence_inputs(part),
                    sequence_id=1000 + index,
                    sequence_start=start == 0,
                    sequence_end=start + 3 >= len(x),
                    headers={"seqserve-sequence": str(1000 + index)},
                )
                running[index] = result.as_numpy("scores")[0]
    finally:
        client.close()
    for index, x in enumerate(xs):
        np.testing.assert_allclose(running[index], offline.scores("jv-gru", x)[0], atol=1e-5)
    served = [metric(server, "seqserve_streams_total") for server in replicas.processes]
    assert sum(served) == len(xs) and min(served) >= 1, served  # spread over every replica, each whole


def test_a_replica_refuses_a_sequence_it_does_not_hold_naming_itself(cluster) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    replicas, proxy = cluster(count=1)
    x = load_dataset(dataset="japanese_vowels").test.sequences[0]
    client = grpcclient.InferenceServerClient(url=replicas.targets[0])
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("jv-gru", sequence_inputs(x[:3]), sequence_id=4242, sequence_start=False)
    finally:
        client.close()
    message = refused.value.message()
    assert refused.value.status() == "StatusCode.FAILED_PRECONDITION", refused.value
    assert "sequence 4242 of model jv-gru:1 is not open on replica" in message, message
    assert f"pid {replicas.processes[0].pid}" in message, message
    assert "seqserve-sequence" in message


async def open_at_once(target: str, count: int, x: np.ndarray) -> tuple[int, list[float], list[str]]:
    """`count` streams opened at once on one connection. Each opened one waits until every open is
    decided, then streams `x` and ends; (streams served whole, seconds to each refusal, refusal codes)."""
    import grpc

    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

    decided = asyncio.Event()
    pending = [count]
    refusals: list[float] = []
    codes: list[str] = []

    def settle() -> None:
        pending[0] -= 1
        if pending[0] == 0:
            decided.set()

    async def one(stub: InferenceServiceStub) -> bool:
        call = stub.Stream()
        sent = time.perf_counter()
        await call.write(pb.StreamRequest(open=pb.StreamOpen(model=MODEL)))
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            refusals.append(time.perf_counter() - sent)
            codes.append(error.code().name)
            settle()
            return False
        assert first.HasField("opened")
        settle()
        await decided.wait()
        steps = 0
        for start in range(0, len(x), CHUNK):
            await call.write(
                pb.StreamRequest(chunk=pb.StreamChunk(steps=CHUNK, values=x[start : start + CHUNK].tobytes()))
            )
            steps += len((await call.read()).chunk.results)
        await call.write(pb.StreamRequest(end=pb.StreamEnd()))
        await call.done_writing()
        ended = await call.read()
        return steps == len(x) and ended.ended.steps == len(x)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = InferenceServiceStub(channel)
        served = await asyncio.gather(*(one(stub) for _ in range(count)))
    return sum(served), refusals, codes


def test_overload_is_refused_at_once_and_the_proxy_spreads_it(cluster) -> None:
    x = np.ascontiguousarray(load_dataset(dataset="basic_motions_stream").test.sequences[0][:16], np.float32)
    replicas, proxy = cluster("--max-streams", "200", max_streams=200)
    direct = asyncio.run_coroutine_threadsafe(open_at_once(replicas.targets[0], 600, x), background_loop())
    served, refusals, codes = direct.result(timeout=60)
    assert served == 200
    assert len(refusals) == 400 and set(codes) == {"RESOURCE_EXHAUSTED"}, set(codes)
    # A refusal cannot wait for a slot: the admitted streams keep theirs until every refusal is in, so a
    # wait would hang until the 60-s timeout. The bound only says refusals are not slow either, with room
    # for a loaded 2-core machine (about 0.5 s each there, the slowest seen 1.1 s).
    assert max(refusals) < 5.0, f"slowest refusal {max(refusals):.2f} s"
    through = asyncio.run_coroutine_threadsafe(open_at_once(proxy.target, 600, x), background_loop())
    served, refusals, codes = through.result(timeout=60)
    assert (served, len(refusals)) == (600, 0), (served, codes[:3])


async def _opens(target: str, count: int, options: list) -> tuple[object, list, list[str]]:
    """`count` streams opened one after another on a new connection and held: (channel, calls, codes)."""
    import grpc

    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

    channel = grpc.aio.insecure_channel(target, options=options)
    stub, calls, codes = InferenceServiceStub(channel), [], []
    for _ in range(count):
        calls.append(stub.Stream())
        await calls[-1].write(pb.StreamRequest(open=pb.StreamOpen(model=MODEL)))
        try:
            await calls[-1].read()
            codes.append("OK")
        except grpc.aio.AioRpcError as error:
            codes.append(error.code().name)
    return channel, calls, codes


async def _with_first_replica_full(replicas: Replicas, proxy: HAProxy, options: list) -> list[str]:
    """Two streams held straight on the first replica (its --max-streams), then four opened through the
    proxy with `options`; their codes. Every stream is cancelled after."""
    direct, held, codes = await _opens(replicas.targets[0], 2, [])
    assert codes == ["OK", "OK"], codes
    through, calls, codes = await _opens(proxy.target, 4, options)
    for call in (*held, *calls):
        call.cancel()
    for channel in (direct, through):
        await channel.close()
    return codes


def test_a_refused_open_is_retried_on_another_replica_by_the_client_retry_policy(cluster) -> None:
    """HAProxy cannot retry a gRPC refusal (an HTTP 200); the client's documented retry policy does, through
    the same address, and round robin sends the next attempt to the next replica."""
    from seqserve.service.client.channels import STREAM_RETRY_POLICY

    replicas, proxy = cluster("--max-streams", "2")  # the proxy's maxconn (200) lets a full replica refuse

    def run(options: list) -> list[str]:
        codes = asyncio.run_coroutine_threadsafe(
            _with_first_replica_full(replicas, proxy, options), background_loop()
        ).result(timeout=60)
        for server in replicas.processes:
            wait_for(lambda s=server: metric(s, "seqserve_streams_active") == 0, "every stream freed")
        return codes

    plain = run([])
    assert "OK" in plain and set(plain) - {"OK"} and set(plain) <= {"OK", "RESOURCE_EXHAUSTED", "CANCELLED"}
    assert run([("grpc.service_config", STREAM_RETRY_POLICY)]) == ["OK"] * 4
