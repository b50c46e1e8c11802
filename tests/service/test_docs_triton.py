"""docs/triton.md's tritonclient programs run as printed against a real server, and what they print is the
offline onnxruntime answer for the same data (perf_analyzer's documented command: test_perf_analyzer.py)."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from seqserve.contract import ModelInfo, read_model_info, version_dir
from seqserve.service.frontends.kserve_v2_converters import model_config
from seqserve.service.server.launch import ServerThread

from .docs_examples import code_blocks, run_python_example
from .reference import Offline

MODEL = "jv-gru"
# The examples' data, rebuilt here; each recipe must stay verbatim in the doc, so that an edited example
# fails here by name rather than as a mismatch of numbers.
SYNC_RECIPE = "x = np.random.default_rng(0).normal(size=(20, features)).astype(np.float32)"
AIO_RECIPE = (
    "rng = np.random.default_rng(1)\n"
    'sequences = {f"sensor-{i}": rng.normal(size=(10 + 5 * i, 12)).astype(np.float32) for i in range(3)}\n'
)


@pytest.fixture(scope="module")
def examples() -> list[str]:
    blocks = code_blocks("triton.md", "python")
    # The third, a forecast, runs in tests/service/test_forecast.py beside a forecaster; the fourth, a
    # translation, in tests/service/test_translate.py beside a seq2seq model.
    assert len(blocks) == 4, (
        "docs/triton.md should hold the sync, the aio, the forecast and the translation example"
    )
    return blocks


@pytest.fixture(scope="module")
def info(service_repository: Path) -> ModelInfo:
    return read_model_info(version_dir(service_repository, MODEL, 1))


def _assert_offline(offline: Offline, x: np.ndarray, label: int, scores: list[float]) -> None:
    expected = offline.scores(MODEL, x)[-1]  # many-to-one: the whole sequence's answer
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert label == int(np.argmax(expected))


def test_the_documented_tritonclient_stream_prints_the_offline_answer(
    server: ServerThread, offline: Offline, info: ModelInfo, examples: list[str], tmp_path: Path
) -> None:
    code = examples[0]
    assert SYNC_RECIPE in code
    lines = run_python_example(code, server.target, tmp_path / "triton_example.py")
    answered = [re.fullmatch(r"request (\d+): label (\d+) \((.*)\)", line) for line in lines[:-2]]
    assert answered and all(answered), lines
    assert [int(m[1]) for m in answered] == [0, 1, 2, 3]  # 20 steps in chunks of 5, answered in order
    assert all(info.labels[int(m[2])] == m[3] for m in answered)  # the names it read from ModelConfig
    final = re.fullmatch(r"final label (\d+) \((.*)\) after 20 steps", lines[-2])
    assert final and info.labels[int(final[1])] == final[2], lines
    x = np.random.default_rng(0).normal(size=(20, info.features)).astype(np.float32)
    _assert_offline(offline, x, int(final[1]), ast.literal_eval(lines[-1].removeprefix("scores ")))
    assert server.running.store.open_count == 0  # sequence_end freed sequence 42


def test_the_documented_aio_stream_prints_each_sequences_offline_answer(
    server: ServerThread, offline: Offline, examples: list[str], tmp_path: Path
) -> None:
    code = examples[1]
    assert AIO_RECIPE in code
    lines = run_python_example(code, server.target, tmp_path / "triton_aio_example.py")
    printed = [re.fullmatch(r"(sensor-\d) label (\d+) scores (\[.*\])", line) for line in lines]
    assert printed and all(printed), lines
    rng = np.random.default_rng(1)
    sequences = {f"sensor-{i}": rng.normal(size=(10 + 5 * i, 12)).astype(np.float32) for i in range(3)}
    assert [m[1] for m in printed] == list(sequences)  # one final answer per interleaved sequence
    for m in printed:
        _assert_offline(offline, sequences[m[1]], int(m[2]), ast.literal_eval(m[3]))
    assert server.running.store.open_count == 0  # every sequence_end freed its state


def test_model_config_labels_are_a_json_list_that_keeps_commas(info: ModelInfo) -> None:
    """The example reads the names with json.loads: a label with a comma in it stays one label."""
    labels = ["walking, fast", *info.labels[1:]]
    runtime = SimpleNamespace(info=replace(info, labels=labels), batch_note="")
    model = SimpleNamespace(runtime=runtime, streamable=True, declared=False, named_tensors=False)
    config = model_config(model, idle_timeout_s=30.0)
    assert json.loads(config.parameters["seqserve.labels"].string_value) == labels
