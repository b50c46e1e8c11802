"""int8: its own version, accuracy within a point of fp32 on JapaneseVowels, and what got quantized."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from seqserve import contract
from seqserve.export import job
from seqserve.export.errors import ExportError
from seqserve.export.job import export_run

from .test_repository import tree


def test_int8_is_the_next_version_within_a_point_of_fp32(trained_runs, tmp_path: Path) -> None:
    fp32, int8 = export_run(trained_runs["jv-lstm"], tmp_path, quantize="int8")
    assert (fp32.info.version, fp32.info.precision, int8.info.version, int8.info.precision) == (
        1,
        "fp32",
        2,
        "int8",
    )
    assert fp32.accuracy > 0.9
    assert fp32.accuracy - int8.accuracy <= 0.01
    on_disk = contract.read_model_info(int8.path)
    assert on_disk.test_metrics["onnx_accuracy"] == int8.accuracy
    assert on_disk.test_metrics["fp32_onnx_accuracy"] == fp32.accuracy
    assert on_disk.parity["reference"] == "fp32 version 1" and on_disk.parity["prediction_agreement"] > 0.98
    # Quantization error is recorded, not hidden: above fp32's 1e-5, yet small against logits of a few units.
    assert contract.PARITY_TOLERANCE < on_disk.parity["vs_pytorch"]["batch"] < 1.0
    # onnxruntime quantizes the LSTM itself and the head's MatMul.
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= set(on_disk.test_metrics["quantized_ops"])
    props = {p.key: p.value for p in onnx.load(int8.path / contract.MODEL_FILE).metadata_props}
    assert contract.ModelInfo.from_metadata_props(props).precision == "int8"


def test_gru_int8_quantizes_only_the_head(trained_runs, tmp_path: Path) -> None:
    _, int8 = export_run(trained_runs["jv-gru"], tmp_path, quantize="int8")
    ops = {node.op_type for node in onnx.load(int8.path / contract.MODEL_FILE).graph.node}
    assert "GRU" in ops and "MatMulInteger" in ops and "MatMul" not in ops
    assert int8.info.test_metrics["quantized_ops"] == {"DynamicQuantizeLinear": 1, "MatMulInteger": 1}


def test_int8_below_the_accuracy_target_fails_the_model_and_writes_nothing(
    trained_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job, "INT8_MAX_ACCURACY_DROP", -1.0)  # no int8 model can meet this
    export_run(trained_runs["jv-gru"], tmp_path)
    before = tree(tmp_path)
    with pytest.raises(ExportError, match=r"jv-gru: int8 test accuracy .* points below fp32"):
        export_run(trained_runs["jv-gru"], tmp_path, quantize="int8")
    assert tree(tmp_path) == before
