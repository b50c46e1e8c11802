"""KServe V2 / Triton messages <-> numpy arrays and domain records, from tritonclient's generated modules.

Tensors (docs/triton.md): input `x` FP32 [batch, steps, features] (batch 1 for a sequence request), in
`raw_input_contents` or typed `fp32_contents`; outputs `logits` FP32, `label` INT64 (class index) and
`scores` FP32 (softmax), per step for many-to-many models ([batch, steps, ...]), at the request's last step
for many-to-one models ([batch, ...]). Validation of what a client sent lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from seqserve.contract import INPUT_X, OUTPUT_LOGITS
from seqserve.service.batcher import RowResult
from seqserve.service.errors import InvalidChunk, LimitExceeded
from seqserve.service.metrics import ModelTotals
from seqserve.service.repository import ServedModel
from seqserve.service.sequences import SequenceId

OUTPUT_LABEL = "label"
OUTPUT_SCORES = "scores"
OUTPUTS = (OUTPUT_LOGITS, OUTPUT_LABEL, OUTPUT_SCORES)
PLATFORM = "onnxruntime_onnx"
_FLOAT32 = np.dtype("<f4")
_DATATYPES = {OUTPUT_LOGITS: "FP32", OUTPUT_LABEL: "INT64", OUTPUT_SCORES: "FP32"}
_CONFIG_TYPES = {"FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64}


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """The sequence extension's request parameters; `sequence_id` None is a stateless, whole sequence."""

    sequence_id: SequenceId | None
    start: bool
    end: bool


def version_number(text: str) -> int:
    """Triton's version string: "" is the served default (0 for the repository), else a positive number."""
    if text == "":
        return 0
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise InvalidChunk(f"model_version {text!r} is not a version number; expected '' or a positive integer")


def sequence_control(request: pb.ModelInferRequest) -> SequenceControl:
    params = request.parameters
    sequence_id: SequenceId | None = None
    if "sequence_id" in params:
        param = params["sequence_id"]
        kind = param.WhichOneof("parameter_choice")
        if kind in ("int64_param", "uint64_param"):
            sequence_id = getattr(param, kind) or None  # 0 is Triton's "no sequence"
        elif kind == "string_param":
            sequence_id = param.string_param or None
        else:
            raise InvalidChunk(f"parameter sequence_id is a {kind}; expected an unsigned integer or a string")
    start, end = _flag(params, "sequence_start"), _flag(params, "sequence_end")
    if sequence_id is None and (start or end):
        raise InvalidChunk("sequence_start or sequence_end without a sequence_id; name the sequence")
    return SequenceControl(sequence_id, start, end)


def _flag(params, name: str) -> bool:
    if name not in params:
        return False
    kind = params[name].WhichOneof("parameter_choice")
    if kind != "bool_param":
        raise InvalidChunk(f"parameter {name} is a {kind}; expected a bool")
    return params[name].bool_param


def input_array(
    request: pb.ModelInferRequest, model: ServedModel, in_sequence: bool, max_steps: int | None
) -> np.ndarray:
    """float32 [batch, steps, features] from the request's one input; anything off raises what and why."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_X:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InvalidChunk(f"request has inputs {names}; model {model.key} takes one input {INPUT_X!r}")
    tensor = request.inputs[0]
    features = model.runtime.info.features
    shape = list(tensor.shape)
    if tensor.datatype != "FP32":
        raise InvalidChunk(f"input x has datatype {tensor.datatype}; model {model.key} expects FP32")
    if len(shape) != 3 or shape[2] != features or min(shape) < 1:
        raise InvalidChunk(
            f"input x has shape {shape}; model {model.key} expects [batch, steps, {features}] "
            "with batch and steps >= 1"
        )
    if in_sequence and shape[0] != 1:
        raise InvalidChunk(
            f"input x has batch {shape[0]} in a sequence request; a sequence is one row, batch 1"
        )
    if max_steps is not None and shape[1] > max_steps:
        raise LimitExceeded(f"input x has {shape[1]} steps, the server's limit per request is {max_steps}")
    x = _values(request, tensor, shape)
    if not np.isfinite(x).all():
        row, step, feature = np.argwhere(~np.isfinite(x))[0].tolist()
        raise InvalidChunk(
            f"input x has {x[row, step, feature]} at batch {row}, step {step}, feature {feature}; "
            "expected finite values"
        )
    return x


def _values(request: pb.ModelInferRequest, tensor, shape: list[int]) -> np.ndarray:
    count = shape[0] * shape[1] * shape[2]
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        if len(request.raw_input_contents) != 1 or len(raw) != 4 * count:
            raise InvalidChunk(
                f"input x has {len(raw)} bytes of raw_input_contents; shape {shape} FP32 needs {4 * count}"
            )
        return np.frombuffer(raw, dtype=_FLOAT32).reshape(shape)
    values = tensor.contents.fp32_contents
    if len(values) != count:
        raise InvalidChunk(f"input x has {len(values)} fp32_contents; shape {shape} needs {count}")
    return np.asarray(values, dtype=np.float32).reshape(shape)


def requested_outputs(request: pb.ModelInferRequest, model: ServedModel) -> list[str]:
    """The outputs the client named, in its order; none named means all of them, as Triton does."""
    names = [output.name for output in request.outputs] or list(OUTPUTS)
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise InvalidChunk(
            f"requested output {unknown[0]!r} is not one of model {model.key}'s outputs {', '.join(OUTPUTS)}"
        )
    return names


def output_arrays(model: ServedModel, rows: list[RowResult]) -> dict[str, np.ndarray]:
    """Stack the rows: many-to-many [batch, steps, ...], many-to-one (one answer per row) [batch, ...]."""
    join = np.stack if model.runtime.info.task == "many_to_many" else np.concatenate
    return {
        OUTPUT_LOGITS: join([row.logits for row in rows]).astype(np.float32, copy=False),
        OUTPUT_LABEL: join([row.labels for row in rows]).astype(np.int64, copy=False),
        OUTPUT_SCORES: join([row.scores for row in rows]).astype(np.float32, copy=False),
    }


def infer_response(
    request: pb.ModelInferRequest, model: ServedModel, rows: list[RowResult], names: list[str]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model.runtime.info.name, model_version=str(model.runtime.info.version), id=request.id
    )
    arrays = output_arrays(model, rows)
    for name in names:
        array = arrays[name]
        response.outputs.add(name=name, datatype=_DATATYPES[name], shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response


def stream_error(request: pb.ModelInferRequest, code_name: str, message: str) -> pb.ModelStreamInferResponse:
    """Triton's way on a stream: the error in the response, the request's id kept so it can be matched."""
    response = pb.ModelStreamInferResponse(error_message=f"{code_name}: {message}")
    response.infer_response.model_name = request.model_name
    response.infer_response.model_version = request.model_version
    response.infer_response.id = request.id
    return response


def _output_dims(model: ServedModel) -> dict[str, list[int]]:
    classes = model.runtime.info.classes
    if model.runtime.info.task == "many_to_many":
        return {OUTPUT_LOGITS: [-1, -1, classes], OUTPUT_LABEL: [-1, -1], OUTPUT_SCORES: [-1, -1, classes]}
    return {OUTPUT_LOGITS: [-1, classes], OUTPUT_LABEL: [-1], OUTPUT_SCORES: [-1, classes]}


def model_metadata(model: ServedModel, versions: list[int]) -> pb.ModelMetadataResponse:
    info = model.runtime.info
    response = pb.ModelMetadataResponse(
        name=info.name, versions=[str(v) for v in versions], platform=PLATFORM
    )
    response.inputs.add(name=INPUT_X, datatype="FP32", shape=[-1, -1, info.features])
    for name, dims in _output_dims(model).items():
        response.outputs.add(name=name, datatype=_DATATYPES[name], shape=dims)
    return response


def model_config(model: ServedModel, idle_timeout_s: float) -> mc.ModelConfig:
    """What a Triton user would have written in config.pbtxt; `sequence_batching` marks a sequence model.

    max_batch_size 0: the batch dimension is the client's own (1 for a sequence request); seqserve batches
    across sequences itself, so no Triton tool should add one.
    """
    info = model.runtime.info
    config = mc.ModelConfig(
        name=info.name, platform=PLATFORM, backend="onnxruntime", max_batch_size=0,
        default_model_filename="model.onnx",
    )  # fmt: skip
    config.input.add(name=INPUT_X, data_type=mc.TYPE_FP32, dims=[-1, -1, info.features])
    for name, dims in _output_dims(model).items():
        config.output.add(name=name, data_type=_CONFIG_TYPES[_DATATYPES[name]], dims=dims)
    if model.streamable:
        config.sequence_batching.max_sequence_idle_microseconds = round(idle_timeout_s * 1_000_000)
    config.parameters["seqserve.task"].string_value = info.task
    config.parameters["seqserve.cell"].string_value = info.cell
    config.parameters["seqserve.labels"].string_value = ",".join(info.labels)
    return config


def model_statistics(model: ServedModel, totals: ModelTotals) -> pb.ModelStatistics:
    """Per-row counts and durations; success is queue + compute (the protocol's conversion is not timed)."""
    info = model.runtime.info
    stats = pb.ModelStatistics(
        name=info.name, version=str(info.version), inference_count=totals.rows, execution_count=totals.calls
    )
    queue_ns, compute_ns = round(totals.queue_s * 1e9), round(totals.compute_s * 1e9)
    inference = stats.inference_stats
    inference.success.count, inference.success.ns = totals.rows, queue_ns + compute_ns
    inference.queue.count, inference.queue.ns = totals.rows, queue_ns
    inference.compute_infer.count, inference.compute_infer.ns = totals.rows, compute_ns
    inference.compute_input.count = inference.compute_output.count = totals.rows
    return stats
