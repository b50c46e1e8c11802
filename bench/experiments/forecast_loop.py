"""Where a forecast's rollout loops: the server looping the one-step graph (seqserve's choice) against an
ONNX `Loop` inside the graph, measured on the same forecaster.

Both start from the state after a history and feed each step's mean back. Compared per forecast of
`--horizon` steps, at batch 1 (one forecast alone) and at `--batch` (that many forecasts of the same
horizon that happen to start together, the best case for a graph-side loop):

- one-step graph, looped here in Python: `horizon - 1` onnxruntime calls, what the batcher does for
  every forecast in flight, whatever their horizons and start times;
- Loop graph: the one-step graph as the body of an ONNX Loop, one onnxruntime call per forecast (or per
  batch of forecasts that start together and ask the same horizon).

    python -m bench.experiments.forecast_loop [--horizon 48] [--batch 64] [--repeats 200]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from seqserve import contract


def loop_model(step: onnx.ModelProto, info: contract.ModelInfo) -> onnx.ModelProto:
    """The one-step graph as a Loop body: carried (y, states...), scanned (loc, scale) [steps, B, 1]."""
    declared = contract.declaration_for(info)
    states = [(s["input"], s["output"]) for s in declared["states"]]
    graph = step.graph
    by_name = {i.name: i for i in graph.input}
    body_nodes = list(graph.node)
    batch = helper.make_node("Shape", [contract.INPUT_Y], ["body_y_shape"], end=1)
    ones = helper.make_node(
        "ConstantOfShape", ["body_y_shape"], [contract.INPUT_LENGTHS],
        value=helper.make_tensor("one", TensorProto.INT32, [1], [1]),
    )  # fmt: skip
    carried_out = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", [contract.OUTPUT_LOC], ["y_next"]),
        helper.make_node("Identity", [contract.OUTPUT_LOC], ["loc_scan"]),
        helper.make_node("Identity", [contract.OUTPUT_SCALE], ["scale_scan"]),
    ]
    body = helper.make_graph(
        [batch, ones, *body_nodes, *carried_out],
        "rollout_step",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            by_name[contract.INPUT_Y],
            *(by_name[name] for name, _ in states),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_next", TensorProto.FLOAT, None),
            *(
                helper.make_tensor_value_info(out, by_name[name].type.tensor_type.elem_type, None)
                for name, out in states
            ),
            helper.make_tensor_value_info("loc_scan", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("scale_scan", TensorProto.FLOAT, None),
        ],  # fmt: skip
        initializer=list(graph.initializer),
    )
    outer_inputs = [
        helper.make_tensor_value_info("loop_steps", TensorProto.INT64, []),
        by_name[contract.INPUT_Y],
        *(by_name[name] for name, _ in states),
    ]
    finals = ["y_final", *(f"{out}_final" for _, out in states)]
    loop = helper.make_node(
        "Loop", ["loop_steps", "always", contract.INPUT_Y, *(name for name, _ in states)],
        [*finals, "locs", "scales"], body=body,
    )  # fmt: skip
    outer = helper.make_graph(
        [loop],
        "rollout",
        outer_inputs,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("locs", "scales")],
        initializer=[helper.make_tensor("always", TensorProto.BOOL, [], [True])],
    )
    model = helper.make_model(outer, opset_imports=list(step.opset_import))
    model.ir_version = step.ir_version
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _states(info: contract.ModelInfo, session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Zero states for `batch` rows, each input's shape with the batch axis filled in."""
    declared = contract.declaration_for(info)
    feeds = {}
    for state in declared["states"]:
        (spec,) = [i for i in session.get_inputs() if i.name == state["input"]]
        shape = [batch if axis == state["batch_axis"] else int(dim) for axis, dim in enumerate(spec.shape)]
        feeds[state["input"]] = np.zeros(shape, np.float32)
    return feeds


def _stepped(
    step: ort.InferenceSession,
    outputs: list[str],
    inputs: list[str],
    horizon: int,
    y: np.ndarray,
    states: dict[str, np.ndarray],
    ones: np.ndarray,
) -> np.ndarray:
    locs = []
    for _ in range(horizon - 1):
        out = step.run(outputs, {contract.INPUT_Y: y, contract.INPUT_LENGTHS: ones, **states})
        y = out[0]
        locs.append(y)
        states = dict(zip(inputs, out[2:], strict=True))
    return np.concatenate(locs, axis=1)


def _in_graph(
    looped: ort.InferenceSession, horizon: int, y: np.ndarray, states: dict[str, np.ndarray]
) -> np.ndarray:
    feeds = {"loop_steps": np.array(horizon - 1, np.int64), contract.INPUT_Y: y, **states}
    return looped.run(["locs"], feeds)[0][:, :, 0].T


def measure(horizon: int, batch: int, repeats: int) -> dict[str, float]:
    from bench.forecast import taylor_shaped_forecaster
    from seqserve.export.forecast_graph import build_forecaster

    model, info = taylor_shaped_forecaster("loop")
    step_model = build_forecaster(model, info)
    step, looped = _session(step_model), _session(loop_model(step_model, info))
    declared = contract.declaration_for(info)
    outputs = [contract.OUTPUT_LOC, contract.OUTPUT_SCALE, *(s["output"] for s in declared["states"])]
    inputs = [s["input"] for s in declared["states"]]
    results = {}
    for rows in (1, batch):
        start_states = _states(info, step, rows)
        y0 = np.full((rows, 1), 30_000.0, np.float32)
        ones = np.ones(rows, np.int32)

        stepped = functools.partial(_stepped, step, outputs, inputs, horizon, y0, start_states, ones)
        in_graph = functools.partial(_in_graph, looped, horizon, y0, start_states)
        np.testing.assert_allclose(stepped(), in_graph(), rtol=1e-5)  # the same rollout
        for name, run in (("one_step_looped", stepped), ("loop_graph", in_graph)):
            run()
            started = time.perf_counter()
            for _ in range(repeats):
                run()
            per_forecast = (time.perf_counter() - started) / repeats / rows
            results[f"{name}_batch{rows}_us_per_forecast"] = round(per_forecast * 1e6, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(measure(args.horizon, args.batch, args.repeats), indent=2))


if __name__ == "__main__":
    main()
