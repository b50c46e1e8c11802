"""Contract conformance of the built graph for every cell x 1-2 layers x task (and bidirectional)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export.graph import build_model
from seqserve.export.inference import OnnxClassifier

from .tiny_models import CASES, CLASSES, FEATURES, HIDDEN, make_model


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(("cell", "layers", "task"), CASES)
def test_graph_follows_the_contract(cell: str, layers: int, task: str) -> None:
    model, info = make_model(cell, layers, task)
    onnx_model = build_model(model, info)

    graph = onnx_model.graph
    assert [i.name for i in graph.input] == list(contract.input_names(cell))
    assert [o.name for o in graph.output] == list(contract.output_names(cell))
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    assert _dims(inputs["x"]) == ["batch", "time", FEATURES]
    assert inputs["lengths"].type.tensor_type.elem_type == onnx.TensorProto.INT32
    for state in (*contract.state_inputs(cell), *contract.state_outputs(cell)):
        value = inputs.get(state) or outputs[state]
        assert _dims(value) == [layers, "batch", HIDDEN]
    logits_dims = ["batch", "time", CLASSES] if task == "many_to_many" else ["batch", CLASSES]
    assert _dims(outputs["logits"]) == logits_dims

    recurrent = [n for n in graph.node if n.op_type in ("RNN", "GRU", "LSTM")]
    assert [n.op_type for n in recurrent] == [cell.upper()] * layers
    assert all(n.input[4] == contract.INPUT_LENGTHS for n in recurrent)  # sequence_lens
    assert not {n.op_type for n in graph.node} & {"Loop", "Scan", "If"}
    assert ModelInfo.from_metadata_props({p.key: p.value for p in onnx_model.metadata_props}) == info
    assert onnx_model.opset_import[0].version == contract.DEFAULT_OPSET


@pytest.mark.parametrize(("cell", "layers", "task"), CASES)
def test_dynamic_batch_and_time_match_pytorch(cell: str, layers: int, task: str) -> None:
    model, info = make_model(cell, layers, task, layer_norm=layers == 2)
    session = OnnxClassifier(build_model(model, info).SerializeToString(), info)
    rng = np.random.default_rng(1)
    for batch, steps in ((1, 1), (3, 7), (5, 12)):
        x = rng.normal(size=(batch, steps, FEATURES)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, size=batch).astype(np.int32)
        lengths[0] = steps
        state = tuple(
            rng.normal(size=info.state_shape(batch)).astype(np.float32) for _ in contract.state_inputs(cell)
        )
        logits, new_state = session.run(x, lengths, state)
        with torch.no_grad():
            want_logits, want_state = model(
                torch.from_numpy(x), torch.from_numpy(lengths), tuple(map(torch.from_numpy, state))
            )
        if task == "many_to_many":  # padded steps are not the contract's business; compare valid ones
            mask = np.arange(steps)[None, :] < lengths[:, None]
            logits, want = logits[mask], want_logits.numpy()[mask]
        else:
            want = want_logits.numpy()
        np.testing.assert_allclose(logits, want, atol=contract.PARITY_TOLERANCE, rtol=0)
        for got, expected in zip(new_state, want_state, strict=True):
            np.testing.assert_allclose(got, expected.numpy(), atol=contract.PARITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize("cell", contract.CELLS)
def test_bidirectional_graph_has_one_bidirectional_node_per_layer(cell: str) -> None:
    model, info = make_model(cell, 2, "many_to_one", bidirectional=True)
    onnx_model = build_model(model, info)
    recurrent = [n for n in onnx_model.graph.node if n.op_type == cell.upper()]
    directions = [
        onnx.helper.get_attribute_value(a) for n in recurrent for a in n.attribute if a.name == "direction"
    ]
    assert directions == [b"bidirectional", b"bidirectional"]
    props = {p.key: p.value for p in onnx_model.metadata_props}
    assert props["seqserve.streamable"] == "false"


def test_gru_uses_pytorchs_reset_placement() -> None:
    model, info = make_model("gru", 1, "many_to_one")
    (gru,) = [n for n in build_model(model, info).graph.node if n.op_type == "GRU"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}["linear_before_reset"] == 1


def test_info_that_does_not_describe_the_model_is_refused() -> None:
    model, info = make_model("gru", 1, "many_to_one")
    info.hidden = HIDDEN + 1
    with pytest.raises(contract.ContractError, match=r"hidden 7 \(model has 6\)"):
        build_model(model, info)


def test_opset_below_the_minimum_is_refused() -> None:
    model, info = make_model("gru", 1, "many_to_one")
    with pytest.raises(contract.ContractError, match="opset 16"):
        build_model(model, info, opset=16)
