"""Forecaster -> ONNX graph, built node by node with `onnx.helper` as the classifiers' graph is.

One graph answers a chunk of observations and is the rollout's step too (a chunk of one step): every piece
of the past the model uses is a state, given and returned, so the server batches many streams' chunks and
many forecasts' steps into one call. It computes `training/forecaster.py`'s forward pass:

    inputs   y [B, T] raw values, h0 (, c0) [layers, B, H], lags [B, L], clock [B, 1], level [B, 1],
             lengths [B] int32
    full     = Concat(lags, y)                                  [B, L + T]
    s        = Max((clock * level + CumSum(|y|)) / (clock + t + 1), 1e-6)
    lag l    = full[:, L + 1 - l : -(l - 1)]                   a static Slice per lag (and the season)
    calendar = Sin, Cos of Mod(clock + t + 1, p) * 2 pi / p     (fmod, as torch.fmod)
    rnn      = the classifiers' GRU/LSTM/RNN node (export/graph.py), sequence_lens = lengths
    loc      = lag m + s * head_loc;  scale = s * (Softplus(head_scale) + 1e-3)
    lags_out = GatherElements(full, lengths + [0 .. L-1])       the last L values of each row
    clock_out = clock + lengths; level_out = (clock * level + sum of valid |y|) / clock_out

Padded steps (past a row's length) answer values nobody reads, as a padded classifier step does.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export.graph import _GraphBuilder, _recurrent_layers, finish_model
from seqserve.training.forecaster import SCALE_FLOOR, SIGMA_FLOOR, Forecaster

_INT64_MAX = np.iinfo(np.int64).max


def _scalar(g: _GraphBuilder, name: str, value: np.ndarray) -> str:
    """A 0-d initializer (`_GraphBuilder.const` stores at least one dimension)."""
    if name not in g.initializers:
        g.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
    return name


def _slice_columns(g: _GraphBuilder, full: str, memory: int, lag: int) -> str:
    """full[:, L + 1 - lag : L + 1 - lag + T]: the value `lag` steps before each step's target."""
    start = g.const(f"lag{lag}_start", np.array([memory + 1 - lag], dtype=np.int64))
    end = g.const(f"lag{lag}_end", np.array([-(lag - 1) if lag > 1 else _INT64_MAX], dtype=np.int64))
    return g.node("Slice", [full, start, end, g.const("axis1", np.array([1], dtype=np.int64))], f"lag{lag}")


def _steps(g: _GraphBuilder) -> tuple[str, str]:
    """t + 1 for every step as float [T], and 0 .. T-1 as float [T]."""
    shape = g.node("Shape", [contract.INPUT_Y], "y_shape")
    steps = g.node("Gather", [shape, _scalar(g, "index1", np.array(1, dtype=np.int64))], "steps", axis=0)
    steps_f = g.node("Cast", [steps], "steps_f", to=TensorProto.FLOAT)
    zero, one = (
        _scalar(g, "zero_f", np.array(0.0, np.float32)),
        _scalar(g, "one_f", np.array(1.0, np.float32)),
    )
    from_zero = g.node("Range", [zero, steps_f, one], "t0")
    return g.node("Add", [from_zero, one], "t1"), from_zero


def build_forecaster(
    model: Forecaster, info: ModelInfo, opset: int = contract.DEFAULT_OPSET
) -> onnx.ModelProto:
    config = model.config
    memory = config.memory
    g = _GraphBuilder()
    y, clock, level = contract.INPUT_Y, contract.INPUT_CLOCK, contract.INPUT_LEVEL
    full = g.node("Concat", [contract.INPUT_LAGS, y], "full", axis=1)
    t1, t0 = _steps(g)
    absy = g.node("Abs", [y], "abs_y")
    cumulative = g.node("CumSum", [absy, _scalar(g, "axis1_scalar", np.array(1, dtype=np.int64))], "cum_abs")
    seen = g.node("Mul", [clock, level], "seen_total")
    running = g.node("Add", [seen, cumulative], "running")
    count = g.node("Add", [clock, t1], "count")
    ratio = g.node("Div", [running, count], "ratio")
    scale = g.node("Max", [ratio, g.const("scale_floor", np.array(SCALE_FLOOR, np.float32))], "series_scale")
    features = [g.node("Div", [y, scale], "y_scaled")]
    features += [
        g.node("Div", [_slice_columns(g, full, memory, lag), scale], f"lag{lag}_scaled")
        for lag in config.lags
    ]
    for i, period in enumerate(config.periods):
        phase = g.node(
            "Mod", [count, g.const(f"period{i}", np.array(period, np.float32))], f"phase{i}", fmod=1
        )
        angle = g.node(
            "Mul", [phase, g.const(f"radians{i}", np.array(2 * math.pi / period, np.float32))], f"angle{i}"
        )
        features += [g.node("Sin", [angle], f"sin{i}"), g.node("Cos", [angle], f"cos{i}")]
    axis2 = g.const("axis2", np.array([2], dtype=np.int64))
    columns = [g.node("Unsqueeze", [f, axis2], f"{f}_col") for f in features]
    x = g.node("Concat", columns, "x_btf", axis=2)
    x_tbf = g.node("Transpose", [x], "x_tbf", perm=[1, 0, 2])
    out, _ = _recurrent_layers(g, model, x_tbf)
    out_bth = g.node(
        "Reshape",
        [
            g.node("Transpose", [out], "Y_bt1h", perm=[2, 0, 1, 3]),
            g.const("shape_bth", np.array([0, 0, -1], dtype=np.int64)),
        ],
        "out_bth",
    )
    weight_t = g.const("head_weight_t", model.head.weight.detach().numpy().T)
    head = g.node(
        "Add",
        [
            g.node("MatMul", [out_bth, weight_t], "head_matmul"),
            g.const("head_bias", model.head.bias.detach().numpy()),
        ],
        "head",
    )
    head_loc = g.node("Gather", [head, _scalar(g, "index0", np.array(0, dtype=np.int64))], "head_loc", axis=2)
    head_scale = g.node(
        "Gather", [head, _scalar(g, "index1", np.array(1, dtype=np.int64))], "head_scale", axis=2
    )
    skip = (
        _slice_columns(g, full, memory, config.season)
        if config.season not in config.lags
        else f"lag{config.season}"
    )
    g.node("Add", [skip, g.node("Mul", [scale, head_loc], "loc_delta")], contract.OUTPUT_LOC)
    spread = g.node(
        "Add",
        [
            g.node("Softplus", [head_scale], "softplus"),
            g.const("sigma_floor", np.array(SIGMA_FLOOR, np.float32)),
        ],
        "spread",
    )
    g.node("Mul", [scale, spread], contract.OUTPUT_SCALE)
    _advance(g, full, absy, t0, seen, memory)
    return _finish(g, info, opset)


def _advance(g: _GraphBuilder, full: str, absy: str, t0: str, seen: str, memory: int) -> None:
    """lags_out, clock_out and level_out after each row's last valid step."""
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    n = g.node(
        "Unsqueeze", [g.node("Cast", [contract.INPUT_LENGTHS], "n_f", to=TensorProto.FLOAT), axis1], "n"
    )
    valid = g.node("Cast", [g.node("Less", [t0, n], "valid_b")], "valid", to=TensorProto.FLOAT)
    total = g.node("ReduceSum", [g.node("Mul", [absy, valid], "abs_valid"), axis1], "total_abs", keepdims=1)
    clock_out = g.node("Add", [contract.INPUT_CLOCK, n], contract.OUTPUT_CLOCK)
    g.node("Div", [g.node("Add", [seen, total], "new_total"), clock_out], contract.OUTPUT_LEVEL)
    n_i = g.node(
        "Unsqueeze", [g.node("Cast", [contract.INPUT_LENGTHS], "n_i64", to=TensorProto.INT64), axis1], "n_i"
    )
    index = g.node(
        "Add", [n_i, g.const("memory_range", np.arange(memory, dtype=np.int64)[None, :])], "lag_index"
    )
    g.node("GatherElements", [full, index], contract.OUTPUT_LAGS, axis=1)


def _finish(g: _GraphBuilder, info: ModelInfo, opset: int) -> onnx.ModelProto:
    memory = info.forecast["memory"]
    state = [info.layers, "batch", info.hidden]
    float_io = [(contract.INPUT_Y, ["batch", "time"])]
    float_io += [(name, state) for name in contract.state_inputs(info.cell)]
    float_io += [
        (contract.INPUT_LAGS, ["batch", memory]),
        (contract.INPUT_CLOCK, ["batch", 1]),
        (contract.INPUT_LEVEL, ["batch", 1]),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in float_io]
    inputs.append(helper.make_tensor_value_info(contract.INPUT_LENGTHS, TensorProto.INT32, ["batch"]))
    outs = [(contract.OUTPUT_LOC, ["batch", "time"]), (contract.OUTPUT_SCALE, ["batch", "time"])]
    outs += [(name, state) for name in contract.state_outputs(info.cell)]
    outs += [
        (contract.OUTPUT_LAGS, ["batch", memory]),
        (contract.OUTPUT_CLOCK, ["batch", 1]),
        (contract.OUTPUT_LEVEL, ["batch", 1]),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outs]
    description = (
        f"seqserve {info.cell} forecaster: {info.layers} layer(s) x {info.hidden} hidden, lags "
        f"{info.forecast['lags']}, periods {info.forecast['periods']}, season {info.forecast['season']}"
    )
    return finish_model(g, info, inputs, outputs, opset, description)
