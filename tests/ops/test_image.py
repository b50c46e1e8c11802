"""The images really built and run with podman (`make image-test`; .ci/run runs it after `make test`).

The train image trains and exports into a volume; the serving image serves that volume mounted read-only,
as its non-root user; its HEALTHCHECK passes; streams from the host get the accuracy training measured
offline; `podman stop` sends SIGTERM and the server drains an open stream and exits 0; torch is absent.
Base images cannot be pulled here, so scripts/build_local_base.sh builds the Python base from Debian.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from seqserve.service.client.health_probe import HealthProbeError, check_health
from seqserve.service.client.load import on_dataset, stream_load
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1.seqserve_pb2_grpc import InferenceServiceStub

from .podman import (
    SERVE_IMAGE,
    TRAIN_IMAGE,
    ScriptFailed,
    Stopwatch,
    image_size_mb,
    podman,
    run_script,
    unique,
)
from .test_entrypoint import steps_counted

pytestmark = pytest.mark.skipif(
    os.environ.get("SEQSERVE_IMAGE_TEST") != "1",
    reason="builds and runs the images with podman (minutes): `make image-test`, which .ci/run runs",
)

# Models of docker/train-and-export.sh, and the data set each streams.
MODELS = {"jv-gru": "japanese_vowels", "bms-gru": "basic_motions_stream"}
# Short training: the test proves the image's pipeline, not the model's best accuracy.
TRAIN_ENV = {"SEQSERVE_TRAIN_EPOCHS": "4", "SEQSERVE_TRAIN_HIDDEN": "32"}
GRACE_S = 10
START_TIMEOUT_S = 120


def health(target: str) -> str:
    """The server's overall status, or "" while nothing answers (still starting, or gone)."""
    try:
        return check_health(target)
    except HealthProbeError:
        return ""


@pytest.fixture(scope="module")
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    yield watch
    sizes = {image: f"{image_size_mb(image):.0f} MB" for image in (SERVE_IMAGE, TRAIN_IMAGE)}
    stages = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in watch.stages.items())
    print(f"\nimage test: {stages}; total {sum(watch.stages.values()):.0f} s; sizes {sizes}")


@pytest.fixture(scope="module")
def images(stopwatch: Stopwatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """podman installed and configured, the local base built, both images built (all cached on reruns)."""
    logs = tmp_path_factory.mktemp("image-build")
    try:
        run_script("install_podman.sh", logs, timeout_s=600)
    except ScriptFailed as failure:
        pytest.skip(f"podman cannot run here: {failure}")
    stopwatch.lap("podman")
    try:
        run_script("build_local_base.sh", logs, timeout_s=600)
    except ScriptFailed as failure:
        pytest.skip(f"no local base image (debootstrap of Debian bookworm failed): {failure}")
    stopwatch.lap("base")
    run_script("build_images.sh", logs, timeout_s=900)
    stopwatch.lap("images")


@pytest.fixture(scope="module")
def model_volume(images: None, stopwatch: Stopwatch) -> Iterator[tuple[str, Path]]:
    """(volume name, its folder on the host) holding what the train image trained and exported."""
    volume, runs = unique("seqserve-models"), unique("seqserve-runs")
    podman("volume", "create", volume)
    podman("volume", "create", runs)
    env = [arg for key, value in TRAIN_ENV.items() for arg in ("-e", f"{key}={value}")]
    try:
        podman(
            "run", "--rm", *env, "-v", f"{volume}:/models", "-v", f"{runs}:/runs", TRAIN_IMAGE, timeout_s=900
        )
        stopwatch.lap("train+export")
        yield volume, Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
    finally:
        podman("volume", "rm", "-f", volume, runs, check=False)


@pytest.fixture(scope="module")
def server(model_volume: tuple[str, Path]) -> Iterator[dict[str, str]]:
    """The serving image on the volume (read-only), ports published on 127.0.0.1; waits for its health."""
    volume, _ = model_volume
    name = unique("seqserve-serve")
    podman(
        "run", "-d", "--name", name, "-v", f"{volume}:/models:ro", "-e", f"SEQSERVE_SERVE_GRACE_S={GRACE_S}",
        "-p", "127.0.0.1::50051", "-p", "127.0.0.1::9090", SERVE_IMAGE,
    )  # fmt: skip
    try:
        target = podman("port", name, "50051").stdout.strip().splitlines()[0]
        deadline = time.monotonic() + START_TIMEOUT_S
        while health(target) != "SERVING":
            running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                pytest.fail(f"{SERVE_IMAGE} did not serve:\n{podman('logs', name, check=False).stdout}")
            time.sleep(0.5)
        metrics = podman("port", name, "9090").stdout.strip().splitlines()[0]
        yield {"name": name, "target": target, "metrics": metrics}
    finally:
        podman("rm", "-f", name, check=False)


def test_serving_image_has_no_torch(images: None) -> None:
    probe = podman("run", "--rm", "--entrypoint", "python", SERVE_IMAGE, "-c", "import torch", check=False)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr, probe.stdout + probe.stderr


def test_serves_the_trained_volume_read_only_as_its_user(server: dict[str, str], model_volume) -> None:
    inspect = json.loads(podman("inspect", server["name"]).stdout)[0]
    (mount,) = [m for m in inspect["Mounts"] if m["Destination"] == "/models"]
    assert mount["RW"] is False
    assert podman("exec", server["name"], "id", "-u").stdout.strip() == "10001"
    assert podman("healthcheck", "run", server["name"]).returncode == 0
    _, folder = model_volume
    assert sorted(path.name for path in folder.iterdir()) == sorted(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_streams_from_the_host_get_the_offline_accuracy(
    server: dict[str, str], model_volume, model: str
) -> None:
    _, folder = model_volume
    steps_before = steps_counted(f"http://{server['metrics']}/metrics", model)
    offline = json.loads((folder / model / "1" / "model.json").read_text())["test_metrics"]["test_accuracy"]
    report = asyncio.run(
        on_dataset(stream_load, server["target"], model, MODELS[model], chunk=4, concurrency=8)
    )
    assert report.scored > 0
    assert report.accuracy == pytest.approx(offline, abs=1e-9)
    # /metrics listens on 0.0.0.0 in the image (SEQSERVE_SERVE_METRICS_HOST), so the published port answers.
    assert steps_counted(f"http://{server['metrics']}/metrics", model) - steps_before == report.steps


def test_podman_stop_drains_an_open_stream_and_exits_0(server: dict[str, str], stopwatch: Stopwatch) -> None:
    name, target = server["name"], server["target"]
    chunk = pb.StreamChunk(steps=2, values=bytes(2 * 12 * 4))
    with grpc.insecure_channel(target) as channel:
        requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
        responses = InferenceServiceStub(channel).Stream(iter(requests.get, None), timeout=60)
        requests.put(pb.StreamRequest(open=pb.StreamOpen(model="jv-gru")))
        assert next(responses).HasField("opened")
        requests.put(pb.StreamRequest(chunk=chunk))
        next(responses)

        stopping = threading.Thread(target=podman, args=("stop", "-t", str(GRACE_S + 20), name))
        stopping.start()
        deadline = time.monotonic() + 30
        while health(target) == "SERVING":  # SIGTERM arrived: the server says NOT_SERVING
            assert time.monotonic() < deadline, "still SERVING 30 s after podman stop"
            time.sleep(0.05)
        requests.put(pb.StreamRequest(chunk=chunk))
        assert next(responses).HasField("chunk")
        requests.put(pb.StreamRequest(end=pb.StreamEnd()))
        ended = next(responses).ended
        requests.put(None)
    stopping.join(timeout=GRACE_S + 30)
    assert (ended.reason, ended.steps) == (pb.END_REASON_COMPLETED, 4)
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), podman("logs", name, check=False).stdout
    stopwatch.lap("serve+stream+stop")
