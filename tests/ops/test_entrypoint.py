"""The serving images' entrypoints, run as Docker would run them (see conftest.py): they serve the mounted
repository, answer their own HEALTHCHECK, and stop on SIGTERM with exit status 0."""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.request import urlopen

import grpc
import numpy as np
import onnxruntime
import pytest
from image_entrypoint import DOCKER_DIR
from prometheus_client.parser import text_string_to_metric_families

from seqserve.contract import list_models
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

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


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_image_entrypoint_serves_and_drains_on_sigterm(
    dockerfile: str, start_image_server, model_repository: Path
) -> None:
    server = start_image_server(DOCKER_DIR / dockerfile)

    probe = server.run_healthcheck()
    assert probe.returncode == 0, f"HEALTHCHECK failed: {probe.stdout}{probe.stderr}\n{server.log()}"

    with grpc.insecure_channel(server.grpc_target) as channel:
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

    assert server.stop(signal.SIGTERM) == 0, server.log()
    assert server.run_healthcheck().returncode == 1
