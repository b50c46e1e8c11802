"""int8: its own model, static scales so a row's answer never depends on its batch, within a point of fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from seqserve import contract
from seqserve.export import job
from seqserve.export.errors import ExportError
from seqserve.export.inference import OnnxClassifier, pad_batch
from seqserve.export.job import export_run
from seqserve.training.datasets import load_dataset

from .test_repository import tree


@pytest.fixture(scope="module")
def lstm_int8(trained_runs, tmp_path_factory: pytest.TempPathFactory):
    return export_run(trained_runs["jv-lstm"], tmp_path_factory.mktemp("int8"), quantize="int8")


def test_int8_is_its_own_model_within_a_point_of_fp32(lstm_int8) -> None:
    fp32, int8 = lstm_int8
    assert (fp32.info.name, fp32.info.version, fp32.info.precision) == ("jv-lstm", 1, "fp32")
    assert (int8.info.name, int8.info.version, int8.info.precision) == ("jv-lstm-int8", 1, "int8")
    assert fp32.accuracy > 0.9
    assert fp32.accuracy - int8.accuracy <= 0.01
    on_disk = contract.read_model_info(int8.path)
    assert on_disk.test_metrics["onnx_accuracy"] == int8.accuracy
    assert on_disk.test_metrics["fp32_onnx_accuracy"] == fp32.accuracy
    assert on_disk.parity["reference"] == "jv-lstm version 1 (fp32)"
    assert on_disk.parity["prediction_agreement"] > 0.98
    # Quantization error is recorded, not hidden: above fp32's 1e-5, yet small against logits of a few units.
    assert contract.PARITY_TOLERANCE < on_disk.parity["vs_pytorch"]["batch"] < 1.0
    assert on_disk.parity["batch_invariance"]["passed"]
    # Both speed-ups come from the same side-by-side timing and agree with the latencies recorded.
    metrics = on_disk.test_metrics
    assert metrics["speedup"]["single"] == pytest.approx(
        metrics["fp32_latency_ms"]["single_ms"] / metrics["latency_ms"]["single_ms"]
    )
    props = {p.key: p.value for p in onnx.load(int8.path / contract.MODEL_FILE).metadata_props}
    assert contract.ModelInfo.from_metadata_props(props).precision == "int8"


def test_only_the_head_matmul_is_int8_and_the_lstm_and_state_stay_fp32(lstm_int8) -> None:
    _, int8 = lstm_int8
    graph = onnx.load(int8.path / contract.MODEL_FILE).graph
    ops = [node.op_type for node in graph.node]
    assert "LSTM" in ops and "DynamicQuantizeLSTM" not in ops and "DynamicQuantizeLinear" not in ops
    assert int8.info.test_metrics["int8_op_types"] == ["MatMul"]
    # hn/cn come straight from the LSTM, never through a quantize step: chunked streaming stays exact.
    producers = {out: node.op_type for node in graph.node for out in node.output}
    assert (
        producers[contract.OUTPUT_HN] != "DequantizeLinear"
        and producers[contract.OUTPUT_CN] != "DequantizeLinear"
    )


def test_an_int8_row_gets_the_same_answer_alone_and_in_any_batch(lstm_int8) -> None:
    """The promise: a stream's labels and scores never depend on other users' data beside it."""
    _, int8 = lstm_int8
    session = OnnxClassifier((int8.path / contract.MODEL_FILE).read_bytes(), int8.info)
    test = load_dataset(dataset="japanese_vowels").test.sequences
    probe = test[5]
    alone, _ = session.run(probe[None], np.array([len(probe)], dtype=np.int32))
    rng = np.random.default_rng(0)
    compositions = [
        [probe, *test[:3]],  # short neighbours
        [*test[100:131], probe],  # a full batch, the probe last
        [probe, probe * 50.0, probe * -20.0],  # neighbours far outside the calibrated range
        [test[int(i)] for i in rng.choice(len(test), 7)] + [probe],
    ]
    for pad in (0.0, 1e3):
        for rows in compositions:
            x, lengths = pad_batch(rows, pad_value=pad)
            logits, _ = session.run(x, lengths)
            row = next(i for i, r in enumerate(rows) if r is probe)
            np.testing.assert_array_equal(logits[row], alone[0])


def test_int8_below_the_accuracy_target_fails_the_model_and_writes_nothing(
    trained_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job, "INT8_MAX_ACCURACY_DROP", -1.0)  # no int8 model can meet this
    export_run(trained_runs["jv-gru"], tmp_path)
    before = tree(tmp_path)
    with pytest.raises(ExportError, match=r"jv-gru-int8: int8 test accuracy .* points below fp32"):
        export_run(trained_runs["jv-gru"], tmp_path, quantize="int8")
    assert tree(tmp_path) == before
