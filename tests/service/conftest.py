"""Service test fixtures: real servers on 127.0.0.1 port 0 over the shared exported models, and the
offline reference (one onnxruntime call over each whole sequence) that streamed results must equal.

Clients run on the servers' background loop (`ServerThread.call`): grpc.aio binds to one loop per process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from seqserve.service.config import ServerConfig
from seqserve.service.server.launch import ServerThread

from .reference import Offline

# bms-lstm: many-to-many LSTM, trained one epoch: parity needs a real exported graph, not accuracy.
EXTRA_RUNS = {"bms-lstm": {"dataset": "basic_motions_stream", "cell": "lstm", "epochs": 1, "hidden": 16}}


@pytest.fixture(scope="session")
def service_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared repository plus a many-to-many LSTM, so every cell x task pair is served."""
    import torch

    from seqserve.export.job import export_run
    from seqserve.training.loop import TrainConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("service")
    repository = Path(shutil.copytree(model_repository, root / "repository"))
    for name, flags in EXTRA_RUNS.items():
        run = train(TrainConfig(out=root / "runs" / name, seed=0, **flags), progress=False)
        export_run(Path(run.run_dir), repository)
    return repository


@pytest.fixture(scope="session")
def config(service_repository: Path) -> ServerConfig:
    return ServerConfig(repository=service_repository, port=0, metrics_port=-1, grace_s=1.0)


@pytest.fixture(scope="module")
def server(config: ServerConfig) -> Iterator[ServerThread]:
    with ServerThread(config) as running:
        yield running


@pytest.fixture
def make_server(config: ServerConfig) -> Iterator:
    """`make_server(**overrides)`: a server with changed limits, drained at teardown."""
    started: list[ServerThread] = []

    def make(**overrides: object) -> ServerThread:
        started.append(ServerThread(replace(config, **overrides)).start())
        return started[-1]

    yield make
    for running in started:
        running.stop()


STATE_KEYS = ("test-state-key-current-0123456789", "test-state-key-previous-0123456789")


@pytest.fixture(scope="session")
def state_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key every checkpointing test server signs with (one line: the current key)."""
    path = tmp_path_factory.mktemp("keys") / "state-keys"
    path.write_text(STATE_KEYS[0] + "\n")
    return path


@pytest.fixture(scope="module")
def keyed_server(config: ServerConfig, state_key_file: Path) -> Iterator[ServerThread]:
    """A server with a state key and one row per onnxruntime call, so a stream's answers do not depend on
    which other streams share its calls: resumed and uninterrupted answers compare exactly."""
    with ServerThread(replace(config, state_key_file=state_key_file, max_batch=1)) as running:
        yield running


@pytest.fixture(scope="session")
def offline(service_repository: Path) -> Offline:
    return Offline(service_repository)


@pytest.fixture(scope="session")
def sequences() -> dict[str, list[np.ndarray]]:
    """Real test sequences per data set: Japanese vowels whole, basic-motions streams cut to 40 steps."""
    from seqserve.training.datasets import load_dataset

    vowels = load_dataset(dataset="japanese_vowels").test.sequences
    motions = load_dataset(dataset="basic_motions_stream").test.sequences
    return {"japanese_vowels": vowels[:40], "basic_motions_stream": [x[:40] for x in motions[:8]]}
