"""int8: onnxruntime's static quantization of an fp32 export, calibrated on the run's training split.

Why static: dynamic quantization picks an activation scale per onnxruntime call from the whole input, so
a row's answer would depend on the other rows of its batch (other users' streams, on a server). Static
quantization fixes every scale once, from calibration data, so a row gets the same answer alone or in any
batch (`tests/export/test_quantize.py` proves exactly that).

What it reaches: onnxruntime has static int8 (QDQ) kernels for MatMul, not for `LSTM`, `GRU` or `RNN`
(those exist only as dynamic `DynamicQuantizeLSTM`), so the recurrent layers stay fp32 and only the head's
MatMul runs as int8 (`QLinearMatMul` once onnxruntime fuses the QDQ pairs). The recurrent state
outputs `hn`/`cn` stay fp32, so chunked streaming is as exact as fp32's. Expect little or no speed-up:
the export measures fp32 and int8 side by side and says so.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export.errors import ExportInputError
from seqserve.export.inference import pad_batch

log = logging.getLogger(__name__)

QUANTIZE_CHOICES: tuple[str, ...] = ("int8",)
# Most test accuracy an int8 version may lose against its fp32 twin, as a fraction (1 point).
INT8_MAX_ACCURACY_DROP = 0.01
# An int8 export is its own model, named so no one gets it without asking: jv-lstm -> jv-lstm-int8.
INT8_SUFFIX = "-int8"
# Only MatMul: the op types onnxruntime can run as static int8 in these graphs (see the module docstring).
STATIC_OP_TYPES = ["MatMul"]
# Calibration: this many training sequences, fed in batches like the server's.
CALIBRATION_SEQUENCES = 256
CALIBRATION_BATCH = 32
# Node types that only exist in a quantized graph; counted to say what int8 changed.
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMulInteger"}


def check_quantize(value: str | None) -> str | None:
    if value is not None and value not in QUANTIZE_CHOICES:
        raise ExportInputError(
            f"--quantize {value!r} is not supported; expected one of: {', '.join(QUANTIZE_CHOICES)}"
        )
    return value


def int8_name(name: str) -> str:
    return name + INT8_SUFFIX


class _TrainingBatches(CalibrationDataReader):
    """Feeds calibration batches under the contract's tensor names, zero initial state, zero padding."""

    def __init__(self, sequences: list[np.ndarray], info: ModelInfo) -> None:
        self._batches = iter(list(self._make(sequences, info)))

    @staticmethod
    def _make(sequences: list[np.ndarray], info: ModelInfo) -> Iterator[dict[str, np.ndarray]]:
        step = max(1, len(sequences) // CALIBRATION_SEQUENCES)
        chosen = sequences[::step][:CALIBRATION_SEQUENCES]
        for first in range(0, len(chosen), CALIBRATION_BATCH):
            x, lengths = pad_batch(chosen[first : first + CALIBRATION_BATCH])
            zeros = np.zeros(info.state_shape(len(lengths)), dtype=np.float32)
            yield {
                contract.INPUT_X: x,
                contract.INPUT_LENGTHS: lengths,
                **{name: zeros for name in contract.state_inputs(info.cell)},
            }

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32: onnx.ModelProto, info: ModelInfo, calibration: list[np.ndarray]) -> onnx.ModelProto:
    """Static int8 (QDQ, weights per channel, activations MinMax-calibrated on `calibration`)."""
    if not calibration:
        raise ExportInputError(f"{info.name}: int8 calibrates on the training split, which is empty")
    with tempfile.TemporaryDirectory(prefix="seqserve-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference only: graph optimizations would fuse ops and hide the contract's structure.
        quant_pre_process(fp32, prepared, skip_optimization=True)
        quantize_static(
            prepared,
            quantized,
            _TrainingBatches(calibration, info),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=STATIC_OP_TYPES,
        )
        model = onnx.load(quantized)
    log.debug("int8 graph ops: %s", quantized_ops(model))
    return model


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of the quantization node types in `model`, e.g. {'QuantizeLinear': 2, 'DequantizeLinear': 3}."""
    return dict(Counter(node.op_type for node in model.graph.node if node.op_type in _QUANTIZED_OPS))


def int8_op_types(model: onnx.ModelProto) -> list[str]:
    """The op types that compute in int8: every input comes through a DequantizeLinear (onnxruntime fuses
    such a node with its QDQ pairs into an integer kernel, e.g. MatMul -> QLinearMatMul)."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return sorted(
        {
            node.op_type
            for node in model.graph.node
            if node.op_type not in _QUANTIZED_OPS and node.input and all(i in dequantized for i in node.input)
        }
    )
