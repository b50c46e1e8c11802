"""Forecaster -> ONNX graph, built node by node with `onnx.helper` as the classifiers' graph is.

One graph answers a chunk of observations and is the rollout's step too (a chunk of one step): every piece
of the past the model uses is a state, given and returned, so the server batches many streams' chunks and
many forecasts' steps into one call. It computes `training/forecaster.py`'s forward pass:

    inputs    y [B, T] raw values, h0 (, c0) [layers, B, H], lags [B, L], count, clock, level [B, 1],
              lengths [B] int32
    full      = Concat(lags, y)                                  [B, L + T]
    seen      = count + t + 1;  s = Max((count * level + CumSum(|y|)) / seen, 1e-6);  unit = s * u
    lag(l)    = full[:, L + 1 - l : -(l - 1)]                    a static Slice per lag
    d_l       = Where(seen >= l + m, lag(l) - lag(l + m), 0) / unit   for l = 1 and each extra lag
    calendar  = Sin, Cos of Mod(clock + t + 1, p) * 2 pi / p     (fmod, as torch.fmod)
    rnn       = the classifiers' GRU/LSTM/RNN node (export/graph.py), sequence_lens = lengths
    head      = Concat(rnn out, features) W^T + b
    loc       = Where(seen >= m, lag(m), y) + unit * head_loc;  scale = unit * (Softplus(head_scale) + 1e-3)
    lags_out  = GatherElements(full, lengths + [0 .. L-1])       the last L values of each row
    count_out = count + lengths;  clock_out = Mod(clock + lengths, cycle)
    level_out = (count * level + sum of valid |y|) / count_out

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
# The forecaster's state inputs beside h0 (, c0), with their outputs, in the graph's order.
FORECAST_STATES = (
    (contract.INPUT_LAGS, contract.OUTPUT_LAGS),
    (contract.INPUT_COUNT, contract.OUTPUT_COUNT),
    (contract.INPUT_CLOCK, contract.OUTPUT_CLOCK),
    (contract.INPUT_LEVEL, contract.OUTPUT_LEVEL),
)


def _scalar(g: _GraphBuilder, name: str, value: np.ndarray) -> str:
    """A 0-d initializer (`_GraphBuilder.const` stores at least one dimension)."""
    if name not in g.initializers:
        g.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
    return name


def _float(g: _GraphBuilder, name: str, value: float) -> str:
    return g.const(name, np.array(value, np.float32))


def _lag(g: _GraphBuilder, full: str, memory: int, lag: int) -> str:
    """full[:, L + 1 - lag : L + 1 - lag + T]: the value `lag` steps before each target (lag 1 is y)."""
    if lag == 1:
        return contract.INPUT_Y
    name = f"lag{lag}"
    if any(node.output[0] == name for node in g.nodes):
        return name
    start = g.const(f"lag{lag}_start", np.array([memory + 1 - lag], dtype=np.int64))
    end = g.const(f"lag{lag}_end", np.array([-(lag - 1)], dtype=np.int64))
    return g.node("Slice", [full, start, end, g.const("axis1", np.array([1], dtype=np.int64))], name)


def _seen_at_least(g: _GraphBuilder, seen: str, values: int) -> str:
    return g.node("GreaterOrEqual", [seen, _float(g, f"seen{values}", float(values))], f"has{values}")


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


def _features(
    g: _GraphBuilder, model: Forecaster, full: str, seen: str, t1: str, scale: str, unit: str
) -> list[str]:
    """y / s, the seasonal naive's errors d_l and the calendar's sin/cos, each [B, T]."""
    config = model.config
    memory, season = config.memory, config.season
    features = [g.node("Div", [contract.INPUT_Y, scale], "y_scaled")]
    zero = _float(g, "zero_error", 0.0)
    for lag in (1, *config.lags):
        difference = g.node(
            "Sub", [_lag(g, full, memory, lag), _lag(g, full, memory, lag + season)], f"naive_error{lag}"
        )
        known = g.node("Where", [_seen_at_least(g, seen, lag + season), difference, zero], f"known{lag}")
        features.append(g.node("Div", [known, unit], f"d{lag}"))
    target = g.node("Add", [contract.INPUT_CLOCK, t1], "target_clock")
    for i, period in enumerate(config.periods):
        phase = g.node("Mod", [target, _float(g, f"period{i}", period)], f"phase{i}", fmod=1)
        angle = g.node("Mul", [phase, _float(g, f"radians{i}", 2 * math.pi / period)], f"angle{i}")
        features += [g.node("Sin", [angle], f"sin{i}"), g.node("Cos", [angle], f"cos{i}")]
    return features


def build_forecaster(
    model: Forecaster, info: ModelInfo, opset: int = contract.DEFAULT_OPSET
) -> onnx.ModelProto:
    config = model.config
    memory, season = config.memory, config.season
    g = _GraphBuilder()
    y, count, level = contract.INPUT_Y, contract.INPUT_COUNT, contract.INPUT_LEVEL
    full = g.node("Concat", [contract.INPUT_LAGS, y], "full", axis=1)
    t1, t0 = _steps(g)
    absy = g.node("Abs", [y], "abs_y")
    cumulative = g.node("CumSum", [absy, _scalar(g, "axis1_scalar", np.array(1, dtype=np.int64))], "cum_abs")
    seen_total = g.node("Mul", [count, level], "seen_total")
    running = g.node("Add", [seen_total, cumulative], "running")
    seen = g.node("Add", [count, t1], "seen")
    ratio = g.node("Div", [running, seen], "ratio")
    scale = g.node("Max", [ratio, _float(g, "scale_floor", SCALE_FLOOR)], "series_scale")
    unit = g.node("Mul", [scale, _float(g, "unit", config.unit)], "unit_scale")
    features = _features(g, model, full, seen, t1, scale, unit)
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
    head_in = g.node("Concat", [out_bth, x], "head_in", axis=2)
    weight_t = g.const("head_weight_t", model.head.weight.detach().numpy().T)
    head = g.node(
        "Add",
        [
            g.node("MatMul", [head_in, weight_t], "head_matmul"),
            g.const("head_bias", model.head.bias.detach().numpy()),
        ],
        "head",
    )
    head_loc = g.node("Gather", [head, _scalar(g, "index0", np.array(0, dtype=np.int64))], "head_loc", axis=2)
    head_scale = g.node(
        "Gather", [head, _scalar(g, "index1", np.array(1, dtype=np.int64))], "head_scale", axis=2
    )
    naive = g.node(
        "Where", [_seen_at_least(g, seen, season), _lag(g, full, memory, season), y], "seasonal_naive"
    )
    g.node("Add", [naive, g.node("Mul", [unit, head_loc], "loc_delta")], contract.OUTPUT_LOC)
    spread = g.node(
        "Add", [g.node("Softplus", [head_scale], "softplus"), _float(g, "sigma_floor", SIGMA_FLOOR)], "spread"
    )
    g.node("Mul", [unit, spread], contract.OUTPUT_SCALE)
    _advance(g, full, absy, t0, seen_total, memory, config.cycle)
    return _finish(g, info, opset)


def _advance(
    g: _GraphBuilder, full: str, absy: str, t0: str, seen_total: str, memory: int, cycle: int
) -> None:
    """lags_out, count_out, clock_out and level_out after each row's last valid step."""
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    n = g.node(
        "Unsqueeze", [g.node("Cast", [contract.INPUT_LENGTHS], "n_f", to=TensorProto.FLOAT), axis1], "n"
    )
    valid = g.node("Cast", [g.node("Less", [t0, n], "valid_b")], "valid", to=TensorProto.FLOAT)
    total = g.node("ReduceSum", [g.node("Mul", [absy, valid], "abs_valid"), axis1], "total_abs", keepdims=1)
    count_out = g.node("Add", [contract.INPUT_COUNT, n], contract.OUTPUT_COUNT)
    g.node("Div", [g.node("Add", [seen_total, total], "new_total"), count_out], contract.OUTPUT_LEVEL)
    if cycle:
        clock = g.node("Add", [contract.INPUT_CLOCK, n], "clock_advanced")
        g.node("Mod", [clock, _float(g, "cycle", float(cycle))], contract.OUTPUT_CLOCK, fmod=1)
    else:
        g.node("Add", [contract.INPUT_CLOCK, n], contract.OUTPUT_CLOCK)
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
    shapes = {contract.INPUT_LAGS: ["batch", memory]}
    float_io = [(contract.INPUT_Y, ["batch", "time"])]
    float_io += [(name, state) for name in contract.state_inputs(info.cell)]
    float_io += [(name, shapes.get(name, ["batch", 1])) for name, _ in FORECAST_STATES]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in float_io]
    inputs.append(helper.make_tensor_value_info(contract.INPUT_LENGTHS, TensorProto.INT32, ["batch"]))
    outs = [(contract.OUTPUT_LOC, ["batch", "time"]), (contract.OUTPUT_SCALE, ["batch", "time"])]
    outs += [(name, state) for name in contract.state_outputs(info.cell)]
    outs += [(output, shapes.get(name, ["batch", 1])) for name, output in FORECAST_STATES]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outs]
    description = (
        f"seqserve {info.cell} forecaster: {info.layers} layer(s) x {info.hidden} hidden, lags "
        f"{info.forecast['lags']}, periods {info.forecast['periods']}, season {info.forecast['season']}"
    )
    return finish_model(g, info, inputs, outputs, opset, description)
