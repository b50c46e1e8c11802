"""A declared stateful graph: which inputs and outputs of an ONNX graph are recurrent state, which carry a
stream's data, which are constants, and what comes back. The engine serves any graph through this one
map; seqserve's own exports are graphs whose declaration `contract.declaration_for` derives from
model.json (and the exporter writes beside it).

The file is `declaration.json` beside `model.onnx` in `<repo>/<model>/<version>/`; its JSON Schema is
`docs/declaration.schema.json` and its reference `docs/declared_models.md`. Every refusal names the field,
the value and what the graph has. Axes are the graph tensor's own axes; a *row* is one stream's slice of
a tensor: the tensor with its batch axis removed. Standard library and numpy only (the serving image).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DECLARATION_FILE = "declaration.json"
# Float32 graphs: a row run in a batch must equal the row run alone to this (the load-time probe).
DEFAULT_TOLERANCE = 1e-6

# KServe V2 datatype names (what the wire carries) by numpy dtype name, and ONNX type strings as
# onnxruntime reports them.
V2_DATATYPES = {
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
    "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL",
}  # fmt: skip
NUMPY_DTYPES = {v2: name for name, v2 in V2_DATATYPES.items()}
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}  # fmt: skip

# What an answer is made of: named tensors (any graph), or a classifier's labels and scores, or a
# language model's next-token logits (seqserve's own exports; a seq2seq's decoder step answers tensors that
# its kind searches over).
RENDERINGS = ("tensors", "classifier", "language_model", "forecaster", "seq2seq")
# The renderings a frame model (no time axis) may have: its answers are tensors.
FRAME_RENDERINGS = ("tensors", "seq2seq")


class DeclarationError(ValueError):
    """A declaration that is malformed or disagrees with its graph; the message says what and where."""


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as onnxruntime reports it: dims are ints, or None/str for free dims."""

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class StateDecl:
    input: str
    output: str
    batch_axis: int
    dtype: str
    row_shape: tuple[int, ...]  # the tensor's shape without its batch axis
    initial: str = "zeros"  # or a .npy file in the version folder holding one row

    def zero_row(self, folder: Path | None = None) -> np.ndarray:
        if self.initial == "zeros":
            row = np.zeros(self.row_shape, dtype=self.dtype)
        else:
            row = _initial_from_file(self, folder)
        row.flags.writeable = False
        return row


@dataclass(frozen=True)
class StreamInputDecl:
    """An input that carries the client's data. With a time axis a chunk of n steps is one call over n
    steps; without one (a frame model) each step of a chunk is one frame, run as its own call."""

    name: str
    dtype: str
    batch_axis: int
    time_axis: int | None
    # One step's shape as the client sends it (the tensor less batch and time); -1 marks a dim that differs
    # between rows, which only a seq2seq decoder's contract-made declaration has (`resolve`).
    step_shape: tuple[int, ...]
    # The last `context` items of the previous chunk along `context_axis` (of the graph tensor) are put
    # before the next one's: the graph sees context + new items (audio models: 64 + 512 samples).
    context: int = 0
    context_axis: int | None = None

    def row_axis(self, axis: int) -> int:
        """Where a graph axis of this input lies in a row: [steps, *step_shape], or a frame [*step_shape]."""
        if self.time_axis is not None and axis == self.time_axis:
            return 0
        skipped = sum(a < axis for a in (self.batch_axis, self.time_axis) if a is not None)
        return axis - skipped + (self.time_axis is not None)

    @functools.cached_property
    def sent_shape(self) -> tuple[int, ...]:
        """One step as the client sends it: step_shape less the carried context (which the server adds)."""
        if not self.context or self.context_axis == self.time_axis:
            return self.step_shape
        axis = self.row_axis(self.context_axis) - (self.time_axis is not None)
        return tuple(d - self.context if i == axis else d for i, d in enumerate(self.step_shape))

    @functools.cached_property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def zero_carry(self) -> np.ndarray | None:
        """What a stream carries before its first chunk: `context` zero items along the context axis."""
        if not self.context:
            return None
        shape = list((1, *self.sent_shape) if self.time_axis is not None else self.sent_shape)
        shape[self.row_axis(self.context_axis)] = self.context
        return np.zeros(shape, dtype=self.dtype)


@dataclass(frozen=True)
class ConstantDecl:
    """A graph input that is not data: one value for every stream, or one per stream chosen at open."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    choices: tuple[Any, ...]  # the first is the default; one choice means fixed

    def value(self, choice: Any = None) -> np.ndarray:
        picked = self.choices[0] if choice is None else choice
        return np.asarray(picked, dtype=self.dtype).reshape(self.shape)


@dataclass(frozen=True)
class OutputDecl:
    name: str
    dtype: str
    batch_axis: int
    time_axis: int | None = None  # an output per step, sliced to each row's valid steps
    labels: tuple[str, ...] = ()  # class scores: the classifier rendering (label, probability) applies


@dataclass(frozen=True)
class Declaration:
    states: tuple[StateDecl, ...]
    inputs: tuple[StreamInputDecl, ...]
    outputs: tuple[OutputDecl, ...]
    constants: tuple[ConstantDecl, ...] = ()
    lengths: str | None = None  # an int32/int64 [batch] input of valid steps per row: rows of different
    #                             lengths then share a call, padded; without it only equal lengths do
    rendering: str = "tensors"
    tolerance: float = DEFAULT_TOLERANCE
    # False for a graph whose batch axis is fixed at 1, or one that failed the load-time probe: one row
    # per call.
    batchable: bool = True

    @property
    def frame_model(self) -> bool:
        return self.inputs[0].time_axis is None

    def constant_key(self, chosen: dict[str, Any]) -> tuple:
        """What tells apart streams that may not share a call: their constants."""
        return tuple(chosen.get(c.name, c.choices[0]) for c in self.constants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rendering": self.rendering,
            "states": [
                {"input": s.input, "output": s.output, "batch_axis": s.batch_axis, "dtype": s.dtype,
                 "row_shape": list(s.row_shape), **({} if s.initial == "zeros" else {"initial": s.initial})}
                for s in self.states
            ],
            "inputs": [
                {"name": i.name, "dtype": i.dtype, "batch_axis": i.batch_axis, "time_axis": i.time_axis,
                 "step_shape": list(i.step_shape),
                 **({"context": i.context, "context_axis": i.context_axis} if i.context else {})}
                for i in self.inputs
            ],
            "outputs": [
                {"name": o.name, "dtype": o.dtype, "batch_axis": o.batch_axis, "time_axis": o.time_axis,
                 **({"labels": list(o.labels)} if o.labels else {})}
                for o in self.outputs
            ],
            "constants": [
                {"name": c.name, "dtype": c.dtype, "shape": list(c.shape), "choices": list(c.choices)}
                for c in self.constants
            ],
            "lengths": self.lengths,
            "tolerance": self.tolerance,
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _initial_from_file(state: StateDecl, folder: Path | None) -> np.ndarray:
    path = Path(folder or ".") / state.initial
    try:
        row = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DeclarationError(
            f"state {state.input}: initial {state.initial!r} cannot be read: {error}"
        ) from error
    if row.shape != state.row_shape:
        raise DeclarationError(
            f"state {state.input}: initial {state.initial!r} has shape {list(row.shape)}, the state's row "
            f"is {list(state.row_shape)}"
        )
    return row.astype(state.dtype)


# --- Resolving a declaration against its graph -------------------------------------------------------
#
# A declaration may leave out what the graph says itself (dtypes, shapes, the batch axis of a dim named
# batch, every output): `resolve` fills those in and checks every field it was given against the graph.

_BATCH_NAMES = re.compile(r"batch|^[nb]$", re.IGNORECASE)
_LENGTH_NAMES = re.compile(r"^(lengths?|seq_lens?|sequence_lens?|seq_lengths?)$", re.IGNORECASE)
# How an output is named after the state input it continues: hN/h_out/new_h/next_h, and h0 -> hn.
STATE_OUTPUT_PATTERNS = ("{input}N", "{input}n", "{input}_out", "{input}_new", "new_{input}", "next_{input}")
KNOWN_FIELDS = {
    "rendering", "states", "state_patterns", "inputs", "outputs", "constants", "lengths", "tolerance",
}  # fmt: skip


def is_batch_dim(dim: int | str | None) -> bool:
    """A free dim whose name says batch (`batch`, `batch_size`, `N`, `b`...)."""
    return isinstance(dim, str) and bool(_BATCH_NAMES.search(dim))


def _shown(tensor: GraphTensor) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in tensor.shape)
    return f"{tensor.name} {tensor.dtype} [{dims}]"


def _object(value: Any, where: str, known: frozenset[str] | None = None) -> dict[str, Any]:
    """`value` as a JSON object; with `known`, a key outside it (a typo such as "batch_axes") is refused."""
    if not isinstance(value, dict):
        raise DeclarationError(f"{where}: expected a JSON object, got {value!r}")
    unknown = sorted(set(value) - known) if known is not None else []
    if unknown:
        raise DeclarationError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return value


# The fields each entry takes (step_shape and shape are what `Declaration.to_dict` writes; the graph says
# them, so they are read only to be accepted).
_STATE_FIELDS = frozenset({"input", "output", "batch_axis", "dtype", "row_shape", "initial"})
_PATTERN_FIELDS = _STATE_FIELDS - {"input", "row_shape"}
_INPUT_FIELDS = frozenset(
    {"name", "dtype", "batch_axis", "time_axis", "step_shape", "context", "context_axis"}
)
_CONSTANT_FIELDS = frozenset({"name", "dtype", "shape", "value", "choices"})
_OUTPUT_FIELDS = frozenset({"name", "dtype", "batch_axis", "time_axis", "labels"})


def _field(
    data: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    if key not in data:
        if default is ...:
            raise DeclarationError(f"{where}: missing field {key!r}")
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise DeclarationError(f"{where}: field {key!r} is {value!r}, expected {expected}")
    return value


def _list(data: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    return [_object(item, f"{where}.{key}[{i}]") for i, item in enumerate(_field(data, key, where, list, []))]


class _Graph:
    """The graph's inputs and outputs by name, and which inputs the declaration has claimed."""

    def __init__(self, inputs: list[GraphTensor], outputs: list[GraphTensor], source: str) -> None:
        self.inputs = {t.name: t for t in inputs}
        self.outputs = {t.name: t for t in outputs}
        self.source = source
        self.claimed: dict[str, str] = {}

    def claim(self, name: str, what: str) -> GraphTensor:
        if name not in self.inputs:
            raise DeclarationError(
                f"{self.source}: {what} {name!r} is not a graph input; the graph's inputs are "
                f"{', '.join(_shown(t) for t in self.inputs.values())}"
            )
        if name in self.claimed:
            raise DeclarationError(
                f"{self.source}: graph input {name!r} is declared twice ({self.claimed[name]} and {what})"
            )
        self.claimed[name] = what
        return self.inputs[name]

    def output(self, name: str, what: str) -> GraphTensor:
        if name not in self.outputs:
            raise DeclarationError(
                f"{self.source}: {what} {name!r} is not a graph output; the graph's outputs are "
                f"{', '.join(_shown(t) for t in self.outputs.values())}"
            )
        return self.outputs[name]

    def dtype(self, given: Any, tensor: GraphTensor, where: str) -> str:
        if given is None:
            if tensor.dtype not in V2_DATATYPES:
                raise DeclarationError(
                    f"{where}: the graph's {_shown(tensor)} has a dtype seqserve cannot serve"
                )
            return tensor.dtype
        if given not in V2_DATATYPES:
            raise DeclarationError(f"{where}: dtype {given!r} is not one of {', '.join(V2_DATATYPES)}")
        if given != tensor.dtype:
            raise DeclarationError(f"{where}: dtype {given}, the graph has {_shown(tensor)}")
        return str(given)

    def axis(self, given: Any, tensor: GraphTensor, where: str, name: str = "batch_axis") -> int:
        rank = len(tensor.shape)
        if given is None:
            named = [axis for axis, dim in enumerate(tensor.shape) if is_batch_dim(dim)]
            if len(named) != 1:
                raise DeclarationError(
                    f"{where}: which axis of the graph's {_shown(tensor)} is the batch? No single dim is "
                    f'named like batch; add "{name}": <0 to {rank - 1}>'
                )
            return named[0]
        if not isinstance(given, int) or isinstance(given, bool) or not 0 <= given < rank:
            raise DeclarationError(
                f"{where}: {name} {given!r} is outside the graph's {_shown(tensor)} (rank {rank})"
            )
        dim = tensor.shape[given]
        if name == "batch_axis" and isinstance(dim, int) and dim != 1:
            named = [axis for axis, d in enumerate(tensor.shape) if is_batch_dim(d)]
            hint = f"; the graph names axis {named[0]} batch" if len(named) == 1 else ""
            raise DeclarationError(
                f"{where}: batch_axis {given} of the graph's {_shown(tensor)} is fixed at {dim}; a batch "
                f"axis is free or 1{hint}"
            )
        return given

    def fixed_dims(self, tensor: GraphTensor, skip: tuple[int, ...], where: str) -> tuple[int, ...]:
        dims = [dim for axis, dim in enumerate(tensor.shape) if axis not in skip]
        if not all(isinstance(dim, int) for dim in dims):
            raise DeclarationError(
                f"{where}: the graph's {_shown(tensor)} has free dims other than batch and time; seqserve "
                "needs every other dim fixed (export the graph with them fixed)"
            )
        return tuple(dims)  # type: ignore[arg-type]


def resolve(
    data: dict[str, Any] | None,
    inputs: list[GraphTensor],
    outputs: list[GraphTensor],
    source: str = DECLARATION_FILE,
    free_frame_dims: bool = False,
) -> Declaration:
    """The declaration of a graph: `data` (a declaration.json's object) with what it leaves out taken from
    the graph, or inferred whole from the graph when `data` is None. Every mistake raises
    DeclarationError naming the field, the value and what the graph has. `free_frame_dims` lets a frame
    input keep free dims (-1 in its step_shape): only for a declaration the contract makes, whose rows the
    server makes itself (a seq2seq decoder's memory, as long as each word); a client's frames are fixed."""
    if data is None:
        data = infer(inputs, outputs, source)
    data = _object(data, source)
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise DeclarationError(
            f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_FIELDS))}"
        )
    graph = _Graph(inputs, outputs, source)
    rendering = _field(data, "rendering", source, str, "tensors")
    if rendering not in RENDERINGS:
        raise DeclarationError(f"{source}: rendering {rendering!r} is not one of {', '.join(RENDERINGS)}")
    states = [
        _state(item, graph, f"{source}: states[{i}]") for i, item in enumerate(_list(data, "states", source))
    ]
    for i, pattern in enumerate(_list(data, "state_patterns", source)):
        states += _pattern_states(pattern, graph, f"{source}: state_patterns[{i}]")
    constants = [
        _constant(item, graph, f"{source}: constants[{i}]")
        for i, item in enumerate(_list(data, "constants", source))
    ]
    lengths = _field(data, "lengths", source, (str, type(None)), None)
    if lengths is not None:
        tensor = graph.claim(lengths, "lengths")
        if tensor.dtype not in ("int32", "int64") or len(tensor.shape) != 1:
            raise DeclarationError(
                f"{source}: lengths {lengths!r} is the graph's {_shown(tensor)}; expected int32 or int64 "
                "[batch]"
            )
    stream_inputs = [
        _stream_input(item, graph, f"{source}: inputs[{i}]", free_frame_dims)
        for i, item in enumerate(_list(data, "inputs", source))
    ]
    if not stream_inputs:
        raise DeclarationError(
            f"{source}: inputs is empty; expected at least one input that carries the stream's data"
        )
    if stream_inputs[0].time_axis is None and rendering not in FRAME_RENDERINGS:
        raise DeclarationError(
            f"{source}: a frame model (no time axis) answers with tensors, not {rendering!r}"
        )
    if len({i.time_axis is None for i in stream_inputs}) > 1:
        raise DeclarationError(
            f"{source}: inputs mix a time axis and frames; all stream inputs have one or none do"
        )
    undeclared = sorted(set(graph.inputs) - set(graph.claimed))
    if undeclared:
        raise DeclarationError(
            f"{source}: graph input(s) {', '.join(_shown(graph.inputs[n]) for n in undeclared)} are not "
            "declared; declare each as a state, a stream input, a constant or lengths"
        )
    state_outputs = {s.output for s in states}
    declared_outputs = _list(data, "outputs", source) or [
        {"name": name} for name in graph.outputs if name not in state_outputs
    ]
    answer_outputs = [
        _output(item, graph, state_outputs, f"{source}: outputs[{i}]")
        for i, item in enumerate(declared_outputs)
    ]
    tolerance = _field(data, "tolerance", source, (int, float), DEFAULT_TOLERANCE)
    if tolerance < 0:
        raise DeclarationError(f"{source}: tolerance {tolerance} is negative; expected >= 0")
    fixed_one = any(graph.inputs[s.input].shape[s.batch_axis] == 1 for s in states) or any(
        graph.inputs[i.name].shape[i.batch_axis] == 1 for i in stream_inputs
    )
    return Declaration(
        tuple(states), tuple(stream_inputs), tuple(answer_outputs), tuple(constants), lengths, rendering,
        float(tolerance), batchable=not fixed_one,
    )  # fmt: skip


def _state(data: dict[str, Any], graph: _Graph, where: str) -> StateDecl:
    _object(data, where, _STATE_FIELDS)
    name = _field(data, "input", where, str)
    tensor = graph.claim(name, "state input")
    output = graph.output(_field(data, "output", where, str), f"state {name}'s output")
    batch_axis = graph.axis(data.get("batch_axis"), tensor, f"{where} (state {name})")
    dtype = graph.dtype(data.get("dtype"), tensor, f"{where} (state {name})")
    row_shape = graph.fixed_dims(tensor, (batch_axis,), f"{where} (state {name})")
    if not _continues(tensor, output):
        raise DeclarationError(
            f"{where}: state {name} pairs {_shown(tensor)} with {_shown(output)}; a state's output must have "
            "its input's dtype, rank and fixed dims"
        )
    given = data.get("row_shape")
    if given is not None and tuple(given) != row_shape:
        raise DeclarationError(
            f"{where} (state {name}): row_shape {given}, the graph's {_shown(tensor)} less axis "
            f"{batch_axis} is {list(row_shape)}"
        )
    return StateDecl(
        name, output.name, batch_axis, dtype, row_shape, _field(data, "initial", where, str, "zeros")
    )


def _pattern_states(data: dict[str, Any], graph: _Graph, where: str) -> list[StateDecl]:
    """Every unclaimed input X with an output named `output` (with {input} for X) is a state."""
    _object(data, where, _PATTERN_FIELDS)
    pattern = _field(data, "output", where, str)
    if "{input}" not in pattern:
        raise DeclarationError(
            f'{where}: output pattern {pattern!r} must contain {{input}}, e.g. "{{input}}_out"'
        )
    found = [
        _state({**data, "input": name, "output": pattern.format(input=name)}, graph, where)
        for name in list(graph.inputs)
        if name not in graph.claimed and pattern.format(input=name) in graph.outputs
    ]
    if not found:
        raise DeclarationError(f"{where}: output pattern {pattern!r} pairs no graph input with an output")
    return found


def _stream_input(data: dict[str, Any], graph: _Graph, where: str, free_frame_dims: bool) -> StreamInputDecl:
    _object(data, where, _INPUT_FIELDS)
    name = _field(data, "name", where, str)
    tensor = graph.claim(name, "stream input")
    where = f"{where} (input {name})"
    batch_axis = graph.axis(data.get("batch_axis", 0), tensor, where)
    free = [a for a, dim in enumerate(tensor.shape) if a != batch_axis and not isinstance(dim, int)]
    time_axis = data["time_axis"] if "time_axis" in data else (free[0] if free else None)
    if time_axis is not None:
        time_axis = graph.axis(time_axis, tensor, where, "time_axis")
        if time_axis == batch_axis:
            raise DeclarationError(f"{where}: time_axis and batch_axis are both {batch_axis}")
    skip = (batch_axis,) if time_axis is None else (batch_axis, time_axis)
    if free_frame_dims and time_axis is None:
        kept = [dim for axis, dim in enumerate(tensor.shape) if axis not in skip]
        step_shape = tuple(dim if isinstance(dim, int) else -1 for dim in kept)
    else:
        step_shape = graph.fixed_dims(tensor, skip, where)
    context = _field(data, "context", where, int, 0)
    context_axis = data.get("context_axis")
    if context:
        if context < 0:
            raise DeclarationError(f"{where}: context {context} is negative; expected items to carry, >= 1")
        if context_axis is None:
            context_axis = time_axis
        context_axis = graph.axis(context_axis, tensor, where, "context_axis")
        if context_axis == batch_axis:
            raise DeclarationError(f"{where}: context_axis {context_axis} is the batch axis")
        if time_axis is not None and context_axis != time_axis:
            raise DeclarationError(
                f"{where}: context_axis {context_axis} is not the time axis {time_axis}; a graph with a time "
                "axis carries whole steps"
            )
        if context_axis != time_axis and context >= tensor.shape[context_axis]:  # type: ignore[operator]
            raise DeclarationError(
                f"{where}: context {context} is not less than the graph's {_shown(tensor)} along axis "
                f"{context_axis}"
            )
    return StreamInputDecl(
        name, graph.dtype(data.get("dtype"), tensor, where), batch_axis, time_axis, step_shape,
        context, context_axis if context else None,
    )  # fmt: skip


def _constant(data: dict[str, Any], graph: _Graph, where: str) -> ConstantDecl:
    _object(data, where, _CONSTANT_FIELDS)
    name = _field(data, "name", where, str)
    tensor = graph.claim(name, "constant")
    where = f"{where} (constant {name})"
    if ("value" in data) == ("choices" in data):
        raise DeclarationError(
            f'{where}: give exactly one of "value" (fixed) or "choices" (chosen per stream)'
        )
    choices = (data["value"],) if "value" in data else tuple(_field(data, "choices", where, list))
    if not choices:
        raise DeclarationError(f"{where}: choices is empty; expected at least one value")
    shape = graph.fixed_dims(tensor, (), where)
    dtype = graph.dtype(data.get("dtype"), tensor, where)
    for choice in choices:
        value = np.asarray(choice)
        if value.size != int(np.prod(shape)) or not np.can_cast(value.dtype, dtype, "same_kind"):
            raise DeclarationError(f"{where}: value {choice!r} does not fit the graph's {_shown(tensor)}")
    return ConstantDecl(name, dtype, shape, tuple(hashable(choice) for choice in choices))


def hashable(value: Any) -> Any:
    """A constant's value as a key: nested lists become tuples (a stream's constants key its calls)."""
    return tuple(hashable(v) for v in value) if isinstance(value, list | tuple) else value


def _output(data: dict[str, Any], graph: _Graph, state_outputs: set[str], where: str) -> OutputDecl:
    _object(data, where, _OUTPUT_FIELDS)
    name = _field(data, "name", where, str)
    tensor = graph.output(name, "output")
    if name in state_outputs:
        raise DeclarationError(f"{where}: output {name!r} is a state's output; the server keeps it")
    where = f"{where} (output {name})"
    batch_axis = data.get("batch_axis")
    if batch_axis is None:
        named = [a for a, dim in enumerate(tensor.shape) if is_batch_dim(dim)]
        batch_axis = named[0] if len(named) == 1 else 0
    time_axis = data.get("time_axis")
    return OutputDecl(
        name,
        graph.dtype(data.get("dtype"), tensor, where),
        graph.axis(batch_axis, tensor, where),
        None if time_axis is None else graph.axis(time_axis, tensor, where, "time_axis"),
        tuple(str(label) for label in _field(data, "labels", where, list, [])),
    )


def read(folder: Path) -> dict[str, Any] | None:
    """The declaration.json object beside a version's graph, or None when there is none."""
    path = Path(folder) / DECLARATION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DeclarationError(f"{path}: not valid JSON ({error})") from error


# --- Inference: the declaration a graph needs when it has none ---------------------------------------


def infer(inputs: list[GraphTensor], outputs: list[GraphTensor], source: str = "graph") -> dict[str, Any]:
    """The declaration `seqserve inspect` would write: states paired by name (STATE_OUTPUT_PATTERNS, and
    h0 -> hn), lengths by name, stream inputs from the rest; anything it cannot decide raises with the
    tensors and the one line to add."""
    by_out = {t.name: t for t in outputs}
    states, rest = [], []
    for tensor in inputs:
        paired = [name for name in _state_output_names(tensor.name) if _continues(tensor, by_out.get(name))]
        if paired:
            states.append({"input": tensor.name, "output": paired[0]})
        else:
            rest.append(tensor)
    lengths = [
        t for t in rest if _LENGTH_NAMES.match(t.name) and len(t.shape) == 1 and t.dtype in ("int32", "int64")
    ]
    constants = [t for t in rest if len(t.shape) == 0]
    stream = [t for t in rest if t not in lengths and t not in constants]
    if constants:
        tensor = constants[0]
        raise DeclarationError(
            f"{source}: input {_shown(tensor)} looks like a constant (no batch axis); say its value: add "
            f'{{"constants": [{{"name": "{tensor.name}", "value": ...}}]}} (or "choices": [...] to '
            "pick one per stream)"
        )
    if not states:
        raise DeclarationError(
            f"{source}: no graph input pairs with an output by name (tried "
            f"{', '.join(STATE_OUTPUT_PATTERNS)} "
            f"and h0 -> hn) among inputs {', '.join(_shown(t) for t in inputs)} and outputs "
            f'{", ".join(_shown(t) for t in outputs)}; add {{"states": [{{"input": ..., "output": ...}}]}}'
        )
    if not stream:
        raise DeclarationError(
            f"{source}: every graph input is a state or lengths; expected one that carries the data"
        )
    declaration: dict[str, Any] = {
        "states": states,
        "inputs": [{"name": t.name, "batch_axis": _inferred_batch_axis(t, source)} for t in stream],
    }
    if len(lengths) == 1:
        declaration["lengths"] = lengths[0].name
    return declaration


def _continues(state: GraphTensor, output: GraphTensor | None) -> bool:
    """Whether `output` can be `state`'s next value: same dtype, rank, and every dim both fix equal."""
    if output is None or output.dtype != state.dtype or len(output.shape) != len(state.shape):
        return False
    return all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b
        for a, b in zip(state.shape, output.shape, strict=True)
    )


def _state_output_names(name: str) -> list[str]:
    names = [pattern.format(input=name) for pattern in STATE_OUTPUT_PATTERNS]
    if name.endswith("0"):
        names.append(name[:-1] + "n")  # h0 -> hn, c0 -> cn
    if "_in" in name:
        names.append(name.replace("_in", "_out"))
    return names


def _inferred_batch_axis(tensor: GraphTensor, source: str) -> int:
    named = [axis for axis, dim in enumerate(tensor.shape) if is_batch_dim(dim)]
    if len(named) == 1:
        return named[0]
    if tensor.shape and not isinstance(tensor.shape[0], int) or (tensor.shape and tensor.shape[0] == 1):
        return 0
    raise DeclarationError(
        f"{source}: which axis of input {_shown(tensor)} is the batch? Add "
        f'{{"inputs": [{{"name": "{tensor.name}", "batch_axis": ...}}]}}'
    )
