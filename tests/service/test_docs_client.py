"""The Python examples in docs/client.md run as printed, against a real server: the client's leading
example (a file streamed), its tour, and the generated stubs' program."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqserve import Client
from seqserve.service.server.launch import ServerThread

from .docs_examples import code_blocks, run_python_example
from .reference import Offline


def test_the_leading_example_streams_a_file(server: ServerThread, offline: Offline, tmp_path: Path) -> None:
    code = code_blocks("client.md", "python")[0]
    assert code.count("\n") <= 12, "the leading example is meant to be about ten lines"
    x = np.random.default_rng(3).normal(size=(17, 12)).astype(np.float32)
    np.savetxt(tmp_path / "my_sequence.csv", x, delimiter=",")
    lines = run_python_example(code, server.target, tmp_path / "stream_a_file.py")
    with Client(server.target) as client:
        labels = client.model("jv-gru").labels
    steps = [4, 9, 14, 16]  # chunks of 5 steps: the label after each chunk's last step
    running = [labels[int(offline.scores("jv-gru", x[: n + 1]).argmax())] for n in steps]
    assert lines == [f"after step {n}: {label}" for n, label in zip(steps, running, strict=True)] + [
        f"final label: {running[-1]}"
    ]


def test_the_client_tour_runs(server: ServerThread, tmp_path: Path) -> None:
    lines = run_python_example(code_blocks("client.md", "python")[1], server.target, tmp_path / "tour.py")
    assert lines[0].startswith("jv-gru:1 many_to_one, 12 features")
    assert sum(line.startswith("classified as ") for line in lines) == 3
    assert any(line.startswith("running labels ") for line in lines)
    assert any(
        line.startswith("refused: INVALID_ARGUMENT: ") and "expects 12 features" in line for line in lines
    )
    assert lines[-1].startswith("async: final label ")


def test_the_documented_stubs_program_runs(server: ServerThread, tmp_path: Path) -> None:
    code = code_blocks("client.md", "python")[2]
    lines = run_python_example(code, server.target, tmp_path / "client_example.py")
    assert lines[0].startswith("jv-gru:1 many_to_one, 12 features")
    assert sum(line.startswith("chunk ") for line in lines) == 4  # 20 steps in chunks of 5
    assert any(line.startswith("final label ") and "after 20 steps" in line for line in lines)
    assert sum(line.startswith("classified as ") for line in lines) == 2
