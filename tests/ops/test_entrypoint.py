"""The serving images' entrypoints, run as Docker would run them (see conftest.py): they serve the mounted
repository, answer their own HEALTHCHECK, and stop on SIGTERM with exit status 0."""

from __future__ import annotations

import queue
import signal
import time
from pathlib import Path
from urllib.request import urlopen

import grpc
import numpy as np
import onnxruntime
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqserve.contract import list_models
from seqserve.service.client.health_probe import check_health
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

from .image_entrypoint import DOCKER_DIR

SEQUENCE_STEPS = (7, 20, 29)


def expected_provider(device: str) -> str:
    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


def steps_counted(metrics_url: str, model: str) -> float:
    text = urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "seqserve_steps_total" and sample.labels["model"] == model
    )


class OpenStream:
    """A Stream call driven one message at a time: each `send` returns the server's answer to it."""

    def __init__(self, stub: InferenceServiceStub, model: str) -> None:
        self.requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
        self.responses = stub.Stream(iter(self.requests.get, None), timeout=60)
        assert self.send(open=pb.StreamOpen(model=model)).HasField("opened")

    def send(self, **message: object) -> pb.StreamResponse:
        self.requests.put(pb.StreamRequest(**message))
        return next(self.responses)

    def close(self) -> None:
        self.requests.put(None)


def chunk_of(values: np.ndarray) -> pb.StreamChunk:
    return pb.StreamChunk(steps=len(values), values=np.ascontiguousarray(values, dtype="<f4").tobytes())


def wait_until_not_serving(target: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while check_health(target) == "SERVING":
        assert time.monotonic() < deadline, f"{target} still SERVING {timeout_s}s after SIGTERM"
        time.sleep(0.05)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_image_entrypoint_serves_and_drains_on_sigterm(
    dockerfile: str, start_image_server, model_repository: Path
) -> None:
    server = start_image_server(DOCKER_DIR / dockerfile)

    probe = server.run_healthcheck()
    assert probe.returncode == 0, f"HEALTHCHECK failed: {probe.stdout}{probe.stderr}\n{server.tail()}"
    for service in ("seqserve.v1.InferenceService", *list_models(model_repository)):
        assert check_health(server.target, service) == "SERVING", service

    with grpc.insecure_channel(server.target) as channel:
        stub = InferenceServiceStub(channel)
        served = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        assert {m.name for m in served} == set(list_models(model_repository))
        info = next(m for m in served if m.name == "jv-gru" and m.default_version)
        assert info.execution_provider == expected_provider(server.env["SEQSERVE_SERVE_DEVICE"])

        rng = np.random.default_rng(0)
        sequences = [rng.normal(size=(steps, info.features)).astype("<f4") for steps in SEQUENCE_STEPS]
        request = pb.ClassifyRequest(
            model="jv-gru", sequences=[pb.Sequence(steps=len(s), values=s.tobytes()) for s in sequences]
        )
        reply = stub.Classify(request, timeout=10)
        assert [len(result.results) for result in reply.results] == [1, 1, 1]
        assert all(result.results[0].label in info.labels for result in reply.results)
        assert steps_counted(server.metrics_url, "jv-gru") == sum(SEQUENCE_STEPS)

        # SIGTERM while a stream is open: health turns NOT_SERVING, the stream still finishes, exit 0.
        stream = OpenStream(stub, "jv-gru")
        stream.send(chunk=chunk_of(sequences[0][:4]))
        server.process.send_signal(signal.SIGTERM)
        wait_until_not_serving(server.target)
        stream.send(chunk=chunk_of(sequences[0][4:]))
        ended = stream.send(end=pb.StreamEnd()).ended
        stream.close()
    assert (ended.reason, ended.steps) == (pb.END_REASON_COMPLETED, SEQUENCE_STEPS[0])
    assert server.terminate() == 0, server.tail()
    assert server.run_healthcheck().returncode == 1
