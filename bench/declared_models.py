"""Stateful ONNX graphs seqserve did not write, built with onnx.helper (small, seeded), in the shapes
people bring; the bench's declared rows and the tests serve them. A voice-activity detector (frames with a
context carry, a GRU state [layers, batch, hidden] named state/stateN, a 0-d int64 sample rate), a model
with six states of mixed dtypes on axes 0 and 1 named by a pattern, a frame model with no time axis, and a
graph whose batch is fixed at 1. Each comes with the per-stream reference loop a user would write over
onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

RNG = np.random.default_rng(7)
HIDDEN = 8


def _save(graph: onnx.GraphProto, folder: Path, declaration: dict | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    if declaration is not None:
        (folder / "declaration.json").write_text(json.dumps(declaration, indent=2))
    return folder


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return helper.make_tensor(
        name, TensorProto.FLOAT, shape, (RNG.standard_normal(shape) * 0.3).astype(np.float32).ravel()
    )


def vad(folder: Path, batch: str | int = "batch", hidden: int = HIDDEN) -> Path:
    """input [batch, 576] (64 carried + 512 new samples), state [1, batch, hidden], sr int64 0-d ->
    output [batch, 1] (sigmoid), stateN. The frame feeds a GRU of one step; sr scales the output."""
    nodes = [
        helper.make_node("Unsqueeze", ["input", "zero_axis"], ["x_tbf"]),
        helper.make_node("GRU", ["x_tbf", "W", "R", "B", "", "state"], ["y", "stateN"], hidden_size=hidden,
                         linear_before_reset=1),
        helper.make_node("Squeeze", ["stateN", "zero_axis"], ["h"]),
        helper.make_node("MatMul", ["h", "W_out"], ["logit"]),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "sr_ref"], ["sr_scale"]),
        helper.make_node("Mul", ["logit", "sr_scale"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["output"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 576]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, batch, hidden]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, batch, hidden]),
        ],
        [
            helper.make_tensor("zero_axis", TensorProto.INT64, [1], [0]),
            _weight("W", 1, 3 * hidden, 576), _weight("R", 1, 3 * hidden, hidden),
            _weight("B", 1, 6 * hidden),
            _weight("W_out", hidden, 1),
            helper.make_tensor("sr_ref", TensorProto.FLOAT, [], [16000.0]),
        ],
    )  # fmt: skip
    declaration = {
        "states": [{"input": "state", "output": "stateN", **({} if batch == "batch" else {"batch_axis": 1})}],
        "inputs": [{"name": "input", "time_axis": None, "context": 64, "context_axis": 1}],
        "constants": [{"name": "sr", "choices": [16000, 8000]}],
    }
    return _save(graph, folder, declaration)


def vad_reference(folder: Path, frames: np.ndarray, sr: int = 16000) -> dict[str, np.ndarray]:
    """The loop a user writes: one frame at a time, the last 64 samples carried, the state fed back."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    state = np.zeros(session.get_inputs()[1].shape[:1] + [1] + session.get_inputs()[1].shape[2:], np.float32)
    context = np.zeros(64, np.float32)
    outputs = []
    for frame in frames:
        whole = np.concatenate([context, frame])
        out, state = session.run(None, {"input": whole[None], "state": state, "sr": np.array(sr, np.int64)})
        context = whole[-64:]
        outputs.append(out[0])
    return {"output": np.stack(outputs)}


def six_states(folder: Path) -> Path:
    """x [batch, time, 3] -> y [batch, time, 3]; six states named a, b, c, d, e, f with outputs `<name>_out`:
    float32 [batch, 3] (a, b), float32 [2, batch, 3] (c, d), int64 [batch] (e), int64 [2, batch] (f).
    Each state step depends on the previous state and the chunk, so a wrong carry shows."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "time_axis"], ["x_sum"], keepdims=0),  # [batch, 3]
        helper.make_node("Add", ["a", "x_sum"], ["a_out"]),
        helper.make_node("Mul", ["b", "half"], ["b_half"]),
        helper.make_node("Add", ["b_half", "a_out"], ["b_out"]),
        helper.make_node("Unsqueeze", ["x_sum", "zero_axis"], ["x_sum0"]),  # [1, batch, 3]
        helper.make_node("Add", ["c", "x_sum0"], ["c_out"]),
        helper.make_node("Sub", ["d", "c_out"], ["d_out"]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "one"], ["steps"]),  # int64 0-d
        helper.make_node("Add", ["e", "steps"], ["e_out"]),
        helper.make_node("Add", ["f", "e_out"], ["f_out"]),  # [2, batch] + [batch]
        helper.make_node("Unsqueeze", ["a", "time_axis"], ["a_t"]),
        helper.make_node("Mul", ["x", "a_t"], ["xa"]),
        helper.make_node("Cast", ["e"], ["e_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["e_f", "time_axis_2"], ["e_t"]),
        helper.make_node("Add", ["xa", "e_t"], ["y"]),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    shapes = {"a": (f32, ["batch", 3]), "b": (f32, ["batch", 3]), "c": (f32, [2, "batch", 3]),
              "d": (f32, [2, "batch", 3]), "e": (i64, ["batch"]), "f": (i64, [2, "batch"])}  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "six_states",
        [helper.make_tensor_value_info("x", f32, ["batch", "time", 3])]
        + [helper.make_tensor_value_info(name, kind, shape) for name, (kind, shape) in shapes.items()],
        [helper.make_tensor_value_info("y", f32, ["batch", "time", 3])]
        + [
            helper.make_tensor_value_info(f"{name}_out", kind, shape)
            for name, (kind, shape) in shapes.items()
        ],
        [
            helper.make_tensor("time_axis", i64, [1], [1]),
            helper.make_tensor("time_axis_2", i64, [2], [1, 2]),
            helper.make_tensor("zero_axis", i64, [1], [0]),
            helper.make_tensor("one", i64, [], [1]),
            helper.make_tensor("half", f32, [], [0.5]),
        ],
    )
    declaration = {"state_patterns": [{"output": "{input}_out"}], "inputs": [{"name": "x"}]}
    return _save(graph, folder, declaration)


# Each state's row shape, batch axis and dtype.
SIX_STATE_SHAPES = {
    "a": ((3,), 0, np.float32), "b": ((3,), 0, np.float32), "c": ((2, 3), 1, np.float32),
    "d": ((2, 3), 1, np.float32), "e": ((), 0, np.int64), "f": ((2,), 1, np.int64),
}  # fmt: skip


def six_states_reference(folder: Path, chunks: list[np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    states = {name: np.zeros(np.insert(np.array(shape, int), axis, 1), dtype) for name, (shape, axis, dtype)
              in SIX_STATE_SHAPES.items()}  # fmt: skip
    ys = []
    for chunk in chunks:
        y, *outs = session.run(["y", *(f"{n}_out" for n in states)], {"x": chunk[None], **states})
        states = dict(zip(states, outs, strict=True))
        ys.append(y[0])
    return {"y": np.concatenate(ys)}


def frame_model(folder: Path, batch: str | int = "batch") -> Path:
    """A frame model with no time axis and no declaration: frame [batch, 16], h [batch, 16] -> score
    [batch, 2], h_out = tanh(h @ R + frame)."""
    nodes = [
        helper.make_node("MatMul", ["h", "R"], ["hr"]),
        helper.make_node("Add", ["hr", "frame"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("MatMul", ["h_out", "W"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "frames",
        [
            helper.make_tensor_value_info("frame", TensorProto.FLOAT, [batch, 16]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [batch, 16]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 2]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [batch, 16]),
        ],
        [_weight("R", 16, 16), _weight("W", 16, 2)],
    )
    declaration = None if batch == "batch" else {
        "states": [{"input": "h", "output": "h_out", "batch_axis": 0}],
        "inputs": [{"name": "frame", "batch_axis": 0, "time_axis": None}],
    }  # fmt: skip
    return _save(graph, folder, declaration)


def frame_reference(folder: Path, frames: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    h = np.zeros((1, 16), np.float32)
    scores = []
    for frame in frames:
        score, h = session.run(None, {"frame": frame[None], "h": h})
        scores.append(score[0])
    return {"score": np.stack(scores)}
