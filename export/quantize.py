"""int8: onnxruntime's own dynamic quantization of an fp32 export, and what it changed.

`quantize_dynamic` quantizes the op types in onnxruntime's IntegerOpsRegistry. For these models that means
the head's MatMul (-> DynamicQuantizeLinear + MatMulInteger) and an LSTM (-> com.microsoft
DynamicQuantizeLSTM); GRU and RNN are not in the registry and stay fp32, so a GRU or RNN model gains
little from int8: only the small head is quantized. Activations are quantized per call with one scale over
the whole input tensor, padding included, so an int8 row shifts with what else is in its batch: pad with
zeros (large padding values wreck the scale of a quantized LSTM's input), and expect int8 to agree with
fp32 on labels, not to 1e-5 on scores.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from seqserve.export.errors import ExportInputError

log = logging.getLogger(__name__)

QUANTIZE_CHOICES: tuple[str, ...] = ("int8",)
# Most test accuracy an int8 version may lose against its fp32 twin, as a fraction (1 point).
INT8_MAX_ACCURACY_DROP = 0.01
# Node types that only exist in a quantized graph; counted to say what int8 changed.
_QUANTIZED_OPS = {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}


def check_quantize(value: str | None) -> str | None:
    if value is not None and value not in QUANTIZE_CHOICES:
        raise ExportInputError(
            f"--quantize {value!r} is not supported; expected one of: {', '.join(QUANTIZE_CHOICES)}"
        )
    return value


def quantize_int8(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantization (weights QInt8, activations quantized per call); metadata is the caller's."""
    with tempfile.TemporaryDirectory(prefix="seqserve-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference only: graph optimizations would fuse ops and hide the contract's structure.
        quant_pre_process(fp32, prepared, skip_optimization=True)
        quantize_dynamic(prepared, quantized, weight_type=QuantType.QInt8)
        model = onnx.load(quantized)
    log.debug("int8 graph ops: %s", quantized_ops(model))
    return model


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of the quantized node types in `model`, e.g. {'DynamicQuantizeLSTM': 1, 'MatMulInteger': 1}."""
    return dict(Counter(node.op_type for node in model.graph.node if node.op_type in _QUANTIZED_OPS))
