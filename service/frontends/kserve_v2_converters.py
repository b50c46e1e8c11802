"""KServe V2 / Triton messages <-> numpy arrays and domain records, from tritonclient's generated modules.

Tensors (docs/triton.md): input `x` FP32 [batch, steps, features] (batch 1 for a sequence request), in
`raw_input_contents` or typed `fp32_contents`; outputs `logits` FP32, `label` INT64 (class index) and
`scores` FP32 (softmax), per step for many-to-many models ([batch, steps, ...]), at the request's last step
for many-to-one models ([batch, ...]). `logits` and `scores` may instead be asked for through Triton's
classification extension (the output's `classification` parameter, tritonclient's `class_count`): BYTES
[..., count], the top `count` classes of each row (and step) as "<value>:<index>:<label>". Validation of
what a client sent lives here.
"""

from __future__ import annotations

import functools
import json
from typing import NamedTuple

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from seqserve.contract import INPUT_X, OUTPUT_LOGITS, SEQ2SEQ
from seqserve.declaration import V2_DATATYPES
from seqserve.service.engine import InvalidChunk, LimitExceeded, ModelTotals, SequenceId, ServedModel
from seqserve.service.frontends import tensors
from seqserve.service.frontends.values import all_finite
from seqserve.service.kinds import forecaster as forecasting
from seqserve.service.kinds import seq2seq
from seqserve.service.kinds.classifier import RowResult
from seqserve.service.kinds.tensors import check_inputs
from seqserve.vocabularies import Translation

OUTPUT_LABEL = "label"
OUTPUT_SCORES = "scores"
OUTPUTS = (OUTPUT_LOGITS, OUTPUT_LABEL, OUTPUT_SCORES)
PLATFORM = "onnxruntime_onnx"
FINAL_RESPONSE_ASKED = "triton_enable_empty_final_response"
FINAL_RESPONSE = "triton_final_response"
_FLOAT32 = np.dtype("<f4")
_DATATYPES = {OUTPUT_LOGITS: "FP32", OUTPUT_LABEL: "INT64", OUTPUT_SCORES: "FP32"}
# Raw contents are little-endian (KServe V2); `astype(..., copy=False)` is free when the array already is.
_WIRE_DTYPES = {OUTPUT_LOGITS: np.dtype("<f4"), OUTPUT_LABEL: np.dtype("<i8"), OUTPUT_SCORES: np.dtype("<f4")}
_ROW_FIELDS = {OUTPUT_LOGITS: "logits", OUTPUT_LABEL: "labels", OUTPUT_SCORES: "scores"}
_CONFIG_TYPES = {"FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64}


class Classified(NamedTuple):
    """An output asked for through the classification extension: its top `count` classes."""

    name: str
    count: int


# What `requested_outputs` gives: output names, and Classified for the classification extension's.
Requested = tuple[str | Classified, ...]
_CLASSIFIABLE = (OUTPUT_LOGITS, OUTPUT_SCORES)
# Output parameters for data the server would place in shared memory, which seqserve does not have.
_SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class SequenceControl(NamedTuple):
    """The sequence extension's request parameters; `sequence_id` None is a stateless, whole sequence."""

    sequence_id: SequenceId | None
    start: bool
    end: bool


_STATELESS = SequenceControl(None, False, False)


def version_number(text: str) -> int:
    """Triton's version string: "" is the served default (0 for the repository), else a positive number."""
    if text == "":
        return 0
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise InvalidChunk(f"model_version {text!r} is not a version number; expected '' or a positive integer")


def sequence_control(request: pb.ModelInferRequest) -> SequenceControl:
    # One map lookup per parameter (`get`): each lookup on a protobuf map builds a wrapper object.
    params = request.parameters
    if not params:
        return _STATELESS
    sequence_id: SequenceId | None = None
    param = params.get("sequence_id")
    if param is not None:
        kind = param.WhichOneof("parameter_choice")
        if kind == "int64_param":
            sequence_id = param.int64_param or None  # 0 is Triton's "no sequence"
        elif kind == "uint64_param":
            sequence_id = param.uint64_param or None
        elif kind == "string_param":
            sequence_id = param.string_param or None
        else:
            raise InvalidChunk(f"parameter sequence_id is a {kind}; expected an unsigned integer or a string")
    start, end = _flag(params, "sequence_start"), _flag(params, "sequence_end")
    if sequence_id is None and (start or end):
        raise InvalidChunk("sequence_start or sequence_end without a sequence_id; name the sequence")
    return SequenceControl(sequence_id, start, end)


def _flag(params, name: str) -> bool:
    param = params.get(name)
    if param is None:
        return False
    kind = param.WhichOneof("parameter_choice")
    if kind != "bool_param":
        raise InvalidChunk(f"parameter {name} is a {kind}; expected a bool")
    return param.bool_param


def input_array(
    request: pb.ModelInferRequest, model: ServedModel, in_sequence: bool, max_steps: int | None
) -> np.ndarray | list[tuple[np.ndarray, ...]]:
    """float32 [batch, steps, features] from the request's one input; anything off raises what and why.
    A declared graph's request carries its named inputs: one chunk per batch row (`declared_rows`)."""
    if model.named_tensors:
        return declared_rows(request, model, in_sequence, max_steps)
    inputs = request.inputs
    tensor = inputs[0] if len(inputs) == 1 else None
    if tensor is None or tensor.name != INPUT_X:
        names = ", ".join(repr(t.name) for t in inputs) or "none"
        raise InvalidChunk(f"request has inputs {names}; model {model.key} takes one input {INPUT_X!r}")
    features = model.runtime.info.features
    shape = tensor.shape[:]  # a list: a slice copies the repeated field at once, not value by value
    if tensor.datatype != "FP32":
        raise InvalidChunk(f"input x has datatype {tensor.datatype}; model {model.key} expects FP32")
    if len(shape) != 3 or shape[2] != features or shape[0] < 1 or shape[1] < 1:
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
    if not all_finite(x):
        row, step, feature = np.argwhere(~np.isfinite(x))[0].tolist()
        raise InvalidChunk(
            f"input x has {x[row, step, feature]} at batch {row}, step {step}, feature {feature}; "
            "expected finite values"
        )
    return x


def declared_rows(
    request: pb.ModelInferRequest, model: ServedModel, in_sequence: bool, max_steps: int | None
) -> list[tuple[np.ndarray, ...]]:
    """A declared graph's inputs, batch first ([batch, steps, ...] or a frame model's [batch, ...]), as one
    chunk per row: [steps, ...] each, or one frame [1, ...]."""
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidChunk(
            f"request has {len(request.inputs)} inputs and {len(raw_contents)} raw_input_contents; expected "
            "one each"
        )
    arrays = {}
    for index, tensor in enumerate(request.inputs):
        if not raw_contents:
            raise InvalidChunk(f"input {tensor.name} has no raw_input_contents; send the tensors' bytes raw")
        arrays[tensor.name] = tensors.to_array(
            tensor.name, tensor.datatype, list(tensor.shape), raw_contents[index], "request"
        )
    batches = {name: array.shape[0] if array.ndim else 0 for name, array in arrays.items()}
    batch = next(iter(batches.values()), 0)
    if batch < 1 or any(b != batch for b in batches.values()) or (in_sequence and batch != 1):
        want = "1 in a sequence request" if in_sequence else "the same >= 1 for every input"
        raise InvalidChunk(f"request inputs have batch sizes {batches}; expected {want}")
    frames = model.frames
    declaration = model.runtime.declaration
    return [
        check_inputs(
            declaration,
            {name: array[row : row + 1] if frames else array[row] for name, array in arrays.items()},
            model.key,
            "request" if batch == 1 else f"request row {row}",
            max_steps,
        )
        for row in range(batch)
    ]


def _values(request: pb.ModelInferRequest, tensor, shape: list[int]) -> np.ndarray:
    count = shape[0] * shape[1] * shape[2]
    raw_contents = request.raw_input_contents
    if raw_contents:
        raw = raw_contents[0]
        if len(raw_contents) != 1 or len(raw) != 4 * count:
            raise InvalidChunk(
                f"input x has {len(raw)} bytes of raw_input_contents; shape {shape} FP32 needs {4 * count}"
            )
        return np.frombuffer(raw, dtype=_FLOAT32).reshape(shape)
    values = tensor.contents.fp32_contents
    if len(values) != count:
        raise InvalidChunk(f"input x has {len(values)} fp32_contents; shape {shape} needs {count}")
    return np.asarray(values, dtype=np.float32).reshape(shape)


def requested_outputs(
    request: pb.ModelInferRequest,
    model: ServedModel,
    ask: forecasting.ForecastAsk | None = None,
    in_sequence: bool = False,
) -> Requested:
    """The outputs the client named, in its order; none named means all of them, as Triton does. A forecast
    request's are the forecast's (after the chunk's own, in a sequence)."""
    outputs = request.outputs
    if is_translator(model):
        unknown = [o.name for o in outputs if o.name not in TRANSLATE_OUTPUTS]
        if unknown:
            raise InvalidChunk(
                f"requested output(s) {unknown} are not among model {model.key}'s outputs "
                f"{list(TRANSLATE_OUTPUTS)}"
            )
        return tuple(o.name for o in outputs) or TRANSLATE_OUTPUTS
    if model.named_tensors:
        names = model.runtime.answer_names
        if ask is not None:
            names = (*names, *FORECAST_OUTPUTS) if in_sequence else FORECAST_OUTPUTS
        unknown = [o.name for o in outputs if o.name not in names]
        if unknown:
            raise InvalidChunk(
                f"requested output(s) {unknown} are not among model {model.key}'s outputs {list(names)}"
            )
        return tuple(o.name for o in outputs) or names
    if not outputs:
        return OUTPUTS
    requested = []
    for output in outputs:
        name = output.name
        if name not in _DATATYPES:
            raise InvalidChunk(
                f"requested output {name!r} is not one of model {model.key}'s outputs {', '.join(OUTPUTS)}"
            )
        requested.append(_classified(output, model) if output.parameters else name)
    return tuple(requested)


# A forecaster's forecast on the V2 door: request parameters in, these outputs back (docs/triton.md).
FORECAST_HORIZON, FORECAST_QUANTILES, FORECAST_START = (
    "forecast_horizon",
    "forecast_quantiles",
    "start_unix_s",
)
FORECAST_OUTPUTS = ("forecast_mean", "forecast_scale", "forecast_quantiles")


def forecast_ask(
    request: pb.ModelInferRequest, model: ServedModel, in_sequence: bool = False
) -> forecasting.ForecastAsk | None:
    """The request's forecast parameters (None when it asks none); a bad one raises what and why. In a
    sequence, `start_unix_s` stands alone: it sets the sequence's calendar phase, not a forecast's."""
    params = request.parameters
    horizon = params.get(FORECAST_HORIZON)
    if horizon is None:
        for name in (FORECAST_QUANTILES,) if in_sequence else (FORECAST_QUANTILES, FORECAST_START):
            if name in params:
                raise InvalidChunk(f"parameter {name} without {FORECAST_HORIZON}; give the horizon too")
        return None
    kind = horizon.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidChunk(f"parameter {FORECAST_HORIZON} is a {kind}; expected an integer")
    levels: tuple[float, ...] = ()
    quantiles = params.get(FORECAST_QUANTILES)
    if quantiles is not None:
        if quantiles.WhichOneof("parameter_choice") != "string_param":
            raise InvalidChunk(f'parameter {FORECAST_QUANTILES} must be a string such as "0.1,0.5,0.9"')
        try:
            levels = tuple(float(p) for p in quantiles.string_param.split(",") if p.strip())
        except ValueError as exc:
            raise InvalidChunk(
                f"parameter {FORECAST_QUANTILES} is {quantiles.string_param!r}; expected numbers separated "
                "by commas, such as 0.1,0.5,0.9"
            ) from exc
    return forecasting.ForecastAsk(int(getattr(horizon, kind)), levels)


def forecast_start(request: pb.ModelInferRequest) -> float | None:
    start = request.parameters.get(FORECAST_START)
    if start is None:
        return None
    kind = start.WhichOneof("parameter_choice")
    if kind not in ("double_param", "int64_param", "uint64_param"):
        raise InvalidChunk(f"parameter {FORECAST_START} is a {kind}; expected a number (Unix seconds)")
    return float(getattr(start, kind))


def forecast_tensors(answer: forecasting.ForecastAnswer) -> dict[str, np.ndarray]:
    """A forecast as named outputs: mean and scale [horizon], quantiles [horizon, levels]."""
    return dict(zip(FORECAST_OUTPUTS, (answer.mean, answer.scale, answer.quantiles.T.copy()), strict=True))


# A seq2seq model on the V2 door (docs/triton.md): one text a row in, each row's n best out (the output
# symbols joined by spaces, and their scores), the search's options as request parameters.
TEXT_INPUT, TEXT_OUTPUT, SCORE_OUTPUT = "text", "output", "score"
TRANSLATE_OUTPUTS = (TEXT_OUTPUT, SCORE_OUTPUT)
_TRANSLATE_PARAMETERS = {
    "beam_width": "beam",
    "nbest": "nbest",
    "max_steps": "max_steps",
    "length_penalty": "length_penalty",
}


def is_translator(model: ServedModel) -> bool:
    return model.runtime.info.task == SEQ2SEQ


def translate_texts(request: pb.ModelInferRequest, model: ServedModel) -> list[str]:
    """The request's `text` input: BYTES [batch], one UTF-8 text a row."""
    inputs = request.inputs
    tensor = inputs[0] if len(inputs) == 1 else None
    if tensor is None or tensor.name != TEXT_INPUT or tensor.datatype != "BYTES" or len(tensor.shape) != 1:
        given = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in inputs) or "none"
        raise InvalidChunk(
            f"request has inputs {given}; model {model.key} is a seq2seq model and takes one input "
            f"{TEXT_INPUT!r} BYTES [batch], one text a row"
        )
    raw_contents = request.raw_input_contents
    if raw_contents:
        elements = _byte_elements(raw_contents[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    if len(elements) != tensor.shape[0]:
        raise InvalidChunk(
            f"input {TEXT_INPUT} has {len(elements)} elements for shape {list(tensor.shape)}; expected one "
            "text a row"
        )
    texts = []
    for row, element in enumerate(elements):
        try:
            texts.append(element.decode())
        except UnicodeDecodeError as error:
            raise InvalidChunk(f"input {TEXT_INPUT} row {row} is not UTF-8 text ({error})") from None
    return texts


def _byte_elements(raw: bytes) -> list[bytes]:
    """A raw BYTES tensor: each element as a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        if offset + 4 + size > len(raw):
            raise InvalidChunk(
                f"input {TEXT_INPUT}'s raw contents end inside element {len(elements)} (its length says "
                f"{size} bytes, {len(raw) - offset - 4} are left); expected each element as a 4-byte "
                "little-endian length, then its bytes"
            )
        elements.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return elements


def translate_options(request: pb.ModelInferRequest) -> seq2seq.TranslateOptions:
    """The search's request parameters; one left out takes TranslateOptions' default. length_penalty may
    come as a string ("0.6"): tritonclient sends no float parameters."""
    chosen: dict[str, float] = {}
    for name, field in _TRANSLATE_PARAMETERS.items():
        param = request.parameters.get(name)
        if param is None:
            continue
        kind = param.WhichOneof("parameter_choice")
        if kind in ("int64_param", "uint64_param"):
            chosen[field] = getattr(param, kind)
        elif name == "length_penalty" and kind in ("double_param", "string_param"):
            try:
                chosen[field] = float(getattr(param, kind))
            except ValueError:
                raise InvalidChunk(
                    f"parameter {name} is {param.string_param!r}; expected a number such as 0.6"
                ) from None
        else:
            want = "a number (or a string holding one)" if name == "length_penalty" else "an integer"
            raise InvalidChunk(f"parameter {name} is a {kind}; expected {want}")
    return seq2seq.TranslateOptions(**chosen)  # type: ignore[arg-type]


def _fill_translations(
    response: pb.ModelInferResponse,
    request: pb.ModelInferRequest,
    model: ServedModel,
    found: list[list[Translation]],
    names: Requested,
) -> None:
    """`output` BYTES [batch, nbest] (each hypothesis's symbols joined by spaces) and `score` FP32
    [batch, nbest]."""
    info = model.runtime.info
    response.model_name, response.model_version, response.id = info.name, str(info.version), request.id
    # A row with fewer hypotheses than the rest (its search ended with fewer than nbest) is padded with
    # empty texts scored -inf.
    nbest = max(len(row) for row in found)
    rows = [
        [(" ".join(h.output), h.score) for h in row] + [("", -np.inf)] * (nbest - len(row)) for row in found
    ]
    shape = (len(found), nbest)
    for name in names:
        if name == TEXT_OUTPUT:
            texts = np.array([text.encode() for row in rows for text, _ in row], dtype=np.object_)
            data = serialize_byte_tensor(texts).item()
            datatype = "BYTES"
        else:
            data = np.array([score for row in rows for _, score in row], dtype="<f4").tobytes()
            datatype = "FP32"
        response.outputs.add(name=str(name), datatype=datatype, shape=shape)
        response.raw_output_contents.append(data)


def _classified(
    output: pb.ModelInferRequest.InferRequestedOutputTensor, model: ServedModel
) -> str | Classified:
    """An output with parameters: the classification extension's, or a refusal of what seqserve lacks."""
    params = output.parameters
    for name in _SHARED_MEMORY_PARAMETERS:
        if name in params:
            raise InvalidChunk(
                f"output {output.name!r} asks for shared memory ({name}); seqserve has no shared memory, "
                "leave the output's shared memory parameters out to get it in the response"
            )
    param = params.get("classification")
    if param is None:
        return output.name
    kind = param.WhichOneof("parameter_choice")
    count = getattr(param, kind) if kind in ("int64_param", "uint64_param") else 0
    if count < 1:
        raise InvalidChunk(
            f"output {output.name!r} has classification {getattr(param, kind) if kind else None!r}; "
            "expected a class count >= 1"
        )
    if output.name not in _CLASSIFIABLE:
        raise InvalidChunk(
            f"output {output.name!r} has no class dimension to classify; ask classification of "
            f"{' or '.join(repr(n) for n in _CLASSIFIABLE)}"
        )
    return Classified(output.name, min(count, model.runtime.info.classes))


@functools.lru_cache(maxsize=1024)
def _answer_layout(
    model_name: str,
    version: str,
    many_to_many: bool,
    classes: int,
    names: Requested,
    rows: int,
    steps: int,
) -> pb.ModelInferResponse:
    """What an answer holds besides its id and bytes (names, datatypes, shapes): it depends only on the
    model, the outputs asked for and the request's shape, so it is built once and copied into each answer.
    Never modified after it is built."""
    layout = pb.ModelInferResponse(model_name=model_name, model_version=version)
    leading = (rows, steps) if many_to_many else (rows,)
    for name in names:
        if isinstance(name, Classified):
            layout.outputs.add(name=name.name, datatype="BYTES", shape=(*leading, name.count))
            continue
        shape = leading if name == OUTPUT_LABEL else (*leading, classes)
        layout.outputs.add(name=name, datatype=_DATATYPES[name], shape=shape)
    return layout


def fill_infer_response(
    response: pb.ModelInferResponse,
    request: pb.ModelInferRequest,
    model: ServedModel,
    rows: list[RowResult],
    names: Requested,
) -> None:
    """The rows' outputs into `response`: many-to-many [batch, steps, ...] (the rows stacked), else the
    rows' answers one after another [batch, ...]. Raw bytes are the rows' arrays back to back, which is
    the stacked array's C order, so nothing is stacked. A declared graph's: its named outputs, batch first."""
    info = model.runtime.info
    if is_translator(model):
        _fill_translations(response, request, model, rows, names)  # type: ignore[arg-type]
        return
    if model.named_tensors:
        _fill_tensors(response, request, model, rows, names)
        return
    many_to_many = info.task == "many_to_many"
    if many_to_many:
        count, steps = len(rows), len(rows[0].labels)
    else:
        count, steps = sum(len(row.labels) for row in rows), 0
    layout = _answer_layout(info.name, str(info.version), many_to_many, info.classes, names, count, steps)
    response.CopyFrom(layout)
    response.id = request.id
    contents = response.raw_output_contents
    for name in names:
        if isinstance(name, Classified):
            contents.append(_classes(rows, name, info.labels))
            continue
        field, wire = _ROW_FIELDS[name], _WIRE_DTYPES[name]
        if len(rows) == 1:
            contents.append(getattr(rows[0], field).astype(wire, copy=False).tobytes())
        else:
            contents.append(b"".join(getattr(row, field).astype(wire, copy=False).tobytes() for row in rows))


def _fill_tensors(
    response: pb.ModelInferResponse,
    request: pb.ModelInferRequest,
    model: ServedModel,
    rows: list,
    names: Requested,
) -> None:
    info = model.runtime.info
    response.model_name, response.model_version, response.id = info.name, str(info.version), request.id
    for name in names:
        parts = [row.tensors[name] for row in rows]
        if model.frames:  # each row answered one frame: [1, ...] -> the batch's [batch, ...]
            parts = [part[0] for part in parts]
        if any(part.shape != parts[0].shape for part in parts):
            raise InvalidChunk(
                f"output {name} differs in shape between the request's rows; send them one a request"
            )
        first = parts[0]
        response.outputs.add(name=name, datatype=tensors.datatype(first), shape=(len(parts), *first.shape))
        response.raw_output_contents.append(b"".join(tensors.to_bytes(part) for part in parts))


def _classes(rows: list[RowResult], classified: Classified, labels: list[str]) -> bytes:
    """The top classes of every row (and step) as Triton's classification extension writes them, "%f" value
    first, highest first, ties to the lower index; raw BYTES (each element's length, then the element)."""
    values = np.concatenate([getattr(row, _ROW_FIELDS[classified.name]) for row in rows])
    top = np.argsort(-values, axis=-1, kind="stable")[..., : classified.count]
    picked = np.take_along_axis(values, top, axis=-1)
    texts = [
        f"{value:f}:{index}:{labels[index]}".encode()
        for value, index in zip(picked.reshape(-1).tolist(), top.reshape(-1).tolist(), strict=True)
    ]
    return serialize_byte_tensor(np.array(texts, dtype=np.object_)).item()  # a 0-d array holding the bytes


def infer_response(
    request: pb.ModelInferRequest, model: ServedModel, rows: list[RowResult], names: Requested
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse()
    fill_infer_response(response, request, model, rows, names)
    return response


def stream_response(
    request: pb.ModelInferRequest, model: ServedModel, rows: list[RowResult], names: Requested
) -> pb.ModelStreamInferResponse:
    """The answer on ModelStreamInfer, filled in place (wrapping a finished answer would copy it)."""
    response = pb.ModelStreamInferResponse()
    fill_infer_response(response.infer_response, request, model, rows, names)
    return response


def mark_final(request: pb.ModelInferRequest, response: pb.ModelStreamInferResponse) -> None:
    """Triton's `triton_enable_empty_final_response`: a client that asks for it (written for decoupled
    models too) waits for a response flagged `triton_final_response`; a request here has one response, so
    that is it, and no empty one follows."""
    params = request.parameters
    if params:
        asked = params.get(FINAL_RESPONSE_ASKED)
        if asked is not None and asked.bool_param:
            response.infer_response.parameters[FINAL_RESPONSE].bool_param = True


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


def _declared_dims(
    model: ServedModel,
) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """A declared graph's inputs and outputs as V2 shows them, batch first: [-1, -1 (steps), ...] or a
    frame model's [-1, ...]; a seq2seq model's text in, n-best texts and scores out."""
    if is_translator(model):
        return [(TEXT_INPUT, "BYTES", [-1])], [
            (TEXT_OUTPUT, "BYTES", [-1, -1]),
            (SCORE_OUTPUT, "FP32", [-1, -1]),
        ]
    declaration = model.runtime.declaration
    inputs = [
        (i.name, V2_DATATYPES[i.dtype], [-1, *([] if i.time_axis is None else [-1]), *i.sent_shape])
        for i in declaration.inputs
    ]
    outputs = [
        (o.name, V2_DATATYPES[o.dtype], [-1, *model.output_shapes[o.name]]) for o in declaration.outputs
    ]
    return inputs, outputs


def model_metadata(model: ServedModel, versions: list[int]) -> pb.ModelMetadataResponse:
    info = model.runtime.info
    response = pb.ModelMetadataResponse(
        name=info.name, versions=[str(v) for v in versions], platform=PLATFORM
    )
    if model.named_tensors or is_translator(model):
        inputs, outputs = _declared_dims(model)
        for name, datatype, dims in inputs:
            response.inputs.add(name=name, datatype=datatype, shape=dims)
        for name, datatype, dims in outputs:
            response.outputs.add(name=name, datatype=datatype, shape=dims)
        return response
    response.inputs.add(name=INPUT_X, datatype="FP32", shape=[-1, -1, info.features])
    for name, dims in _output_dims(model).items():
        response.outputs.add(name=name, datatype=_DATATYPES[name], shape=dims)
    return response


def _config_type(datatype: str) -> int:
    """A V2 datatype as config.pbtxt spells it: BYTES is TYPE_STRING there."""
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


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
    if model.named_tensors or is_translator(model):
        inputs, outputs = _declared_dims(model)
        for name, datatype, dims in inputs:
            config.input.add(name=name, data_type=_config_type(datatype), dims=dims)
        for name, datatype, dims in outputs:
            config.output.add(name=name, data_type=_config_type(datatype), dims=dims)
    else:
        config.input.add(name=INPUT_X, data_type=mc.TYPE_FP32, dims=[-1, -1, info.features])
        for name, dims in _output_dims(model).items():
            config.output.add(name=name, data_type=_CONFIG_TYPES[_DATATYPES[name]], dims=dims)
    if model.streamable:
        config.sequence_batching.max_sequence_idle_microseconds = round(idle_timeout_s * 1_000_000)
    config.parameters["seqserve.task"].string_value = info.task
    if model.runtime.batch_note:  # a declared graph that cannot share calls, and why
        config.parameters["seqserve.batch_note"].string_value = model.runtime.batch_note
    config.parameters["seqserve.cell"].string_value = info.cell
    # JSON, not a comma-joined string: a label may hold a comma.
    config.parameters["seqserve.labels"].string_value = json.dumps(info.labels, ensure_ascii=False)
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
