"""SequenceClassifier -> ONNX graph under the model contract, built node by node with `onnx.helper`.

Why not `torch.onnx.export` plus a graph edit: it emits native GRU/LSTM nodes too, but traces packing away,
so `lengths` would have to be wired into every node's `sequence_lens` and its tensors renamed to the
contract's by editing the graph afterwards. Building the graph from the weights gives the same native nodes,
parity within ~3e-6 (tests/export), and every tensor named the way `seqserve.contract` spells it.

The graph computes what `training/model.py`'s `SequenceClassifier.forward` computes:

    x_std = (x - mean) / std                                 Sub, Div on [B, T, F]
    per layer: Y, Y_h (, Y_c) = GRU/LSTM/RNN(X [T, B, in], sequence_lens=lengths, initial_h=h0[layer])
    next layer's X = Y [T, D, B, H] -> [T, B, D*H]
    hn (, cn) = Concat of every layer's Y_h (, Y_c)          [layers * D, B, H], PyTorch's h_n layout
    many_to_many: logits = head(norm(Y of the last layer as [B, T, D*H]))
    many_to_one:  logits = head(norm(last layer's Y_h as [B, D*H]))

Past a row's length ONNX's Y is zero, as `pad_packed_sequence` pads, so padded many-to-many steps hold
head(norm(0)) in both. Dropout is a training-time op and has no node.

A language model (`training/language_model.py`) is an embedding in front of a many-to-many classifier:
its graph takes int64 `tokens` [B, T], looks them up (Gather on the embedding matrix, axis 0), and the
rest is the classifier's graph above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.training.language_model import CharLanguageModel
from seqserve.training.model import SequenceClassifier

log = logging.getLogger(__name__)

# Gate blocks of PyTorch's weight rows (torch/nn/modules/rnn.py: GRU [r, z, n], LSTM [i, f, g, o]) picked
# in ONNX's order (onnx docs/Operators.md: GRU [z, r, h], LSTM [i, o, f, c]).
_GATE_ORDER: dict[str, list[int]] = {"rnn": [0], "gru": [1, 0, 2], "lstm": [0, 3, 1, 2]}
_OP_TYPE = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


@dataclass
class _LayerWeights:
    """ONNX RNN-op initializers of one layer: W [D, G*H, in], R [D, G*H, H], B [D, 2*G*H]."""

    W: np.ndarray
    R: np.ndarray
    B: np.ndarray


def _reorder_gates(tensor: torch.Tensor, cell: str) -> np.ndarray:
    blocks = torch.chunk(tensor.detach().float(), len(_GATE_ORDER[cell]), dim=0)
    return torch.cat([blocks[i] for i in _GATE_ORDER[cell]], dim=0).numpy()


def _layer_weights(model: SequenceClassifier, layer: int) -> _LayerWeights:
    return rnn_weights(model.rnn, model.config.cell, layer)


def rnn_weights(rnn: torch.nn.RNNBase, cell: str, layer: int = 0) -> _LayerWeights:
    """ONNX initializers of one layer of a PyTorch RNN/GRU/LSTM module, both directions if it has two."""
    params = dict(rnn.named_parameters())
    suffixes = [f"_l{layer}", f"_l{layer}_reverse"][: 2 if rnn.bidirectional else 1]
    W = np.stack([_reorder_gates(params[f"weight_ih{s}"], cell) for s in suffixes])
    R = np.stack([_reorder_gates(params[f"weight_hh{s}"], cell) for s in suffixes])
    # ONNX's B is [Wb, Rb] per direction; PyTorch keeps the two biases apart, in the same roles.
    B = np.stack(
        [
            np.concatenate(
                [_reorder_gates(params[f"bias_ih{s}"], cell), _reorder_gates(params[f"bias_hh{s}"], cell)]
            )
            for s in suffixes
        ]
    )
    return _LayerWeights(W=W, R=R, B=B)


class _GraphBuilder:
    """Collects nodes and initializers; `const` and `node` return the name of what they add."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        """Adds an initializer once; a shared constant (a shape, an axis) is asked for by every user."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def flatten_tail(self, tensor: str, keep: int, output: str) -> str:
        """Reshape keeping the first `keep` dims and flattening the rest into one."""
        shape = self.const(f"shape_keep{keep}_flatten", np.array([0] * keep + [-1], dtype=np.int64))
        return self.node("Reshape", [tensor, shape], output)

    def node(self, op_type: str, inputs: list[str], output: str | list[str], **attrs: object) -> str:
        outputs = [output] if isinstance(output, str) else output
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{outputs[0]}", **attrs))
        return outputs[0]


def rnn_attributes(cell: str, hidden: int, bidirectional: bool) -> dict[str, object]:
    """Attributes of the ONNX RNN/GRU/LSTM node that computes what PyTorch's module of `cell` computes."""
    attrs: dict[str, object] = {
        "hidden_size": hidden,
        "direction": "bidirectional" if bidirectional else "forward",
    }
    if cell == "gru":
        # PyTorch resets after the recurrent matmul: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
        attrs["linear_before_reset"] = 1
    if cell == "rnn":
        attrs["activations"] = ["Tanh"] * (2 if bidirectional else 1)
    return attrs


def _recurrent_layers(g: _GraphBuilder, model: SequenceClassifier, x_tbf: str) -> tuple[str, str]:
    """Adds one RNN op per layer and the hn (, cn) outputs; returns the last layer's Y and Y_h."""
    config = model.config
    cell, d = config.cell, config.directions
    layer_input = x_tbf
    finals: dict[str, list[str]] = {name: [] for name in contract.state_inputs(cell)}
    y = y_h = ""
    for layer in range(config.layers):
        weights = _layer_weights(model, layer)
        w = g.const(f"W_l{layer}", weights.W)
        r = g.const(f"R_l{layer}", weights.R)
        b = g.const(f"B_l{layer}", weights.B)
        starts = g.const(f"state_start_l{layer}", np.array([layer * d], dtype=np.int64))
        ends = g.const(f"state_end_l{layer}", np.array([(layer + 1) * d], dtype=np.int64))
        axis0 = g.const("axis0", np.array([0], dtype=np.int64))
        initial = [
            g.node("Slice", [state, starts, ends, axis0], f"{state}_l{layer}")
            for state in contract.state_inputs(cell)
        ]
        outputs = [f"Y_l{layer}", f"Y_h_l{layer}"] + ([f"Y_c_l{layer}"] if cell == "lstm" else [])
        g.node(
            _OP_TYPE[cell],
            [layer_input, w, r, b, contract.INPUT_LENGTHS, *initial],
            outputs,
            **rnn_attributes(cell, config.hidden, config.bidirectional),
        )
        y, y_h = outputs[0], outputs[1]
        for state, final in zip(contract.state_inputs(cell), outputs[1:], strict=True):
            finals[state].append(final)
        if layer + 1 < config.layers:
            # Y [T, D, B, H] -> [T, B, D*H]: directions side by side, as PyTorch feeds the next layer.
            transposed = g.node("Transpose", [y], f"Y_tbdh_l{layer}", perm=[0, 2, 1, 3])
            layer_input = g.flatten_tail(transposed, 2, f"X_l{layer + 1}")
    for state, output in zip(contract.state_inputs(cell), contract.state_outputs(cell), strict=True):
        g.node("Concat", finals[state], output, axis=0)
    return y, y_h


def _summary(g: _GraphBuilder, model: SequenceClassifier, y: str, y_h: str) -> str:
    """The head's input: [B, T, D*H] per step (many_to_many) or [B, D*H] at the last step (many_to_one)."""
    if model.config.task == "many_to_many":
        transposed = g.node("Transpose", [y], "Y_btdh", perm=[2, 0, 1, 3])
        return g.flatten_tail(transposed, 2, "summary")
    transposed = g.node("Transpose", [y_h], "Y_h_bdh", perm=[1, 0, 2])
    return g.flatten_tail(transposed, 1, "summary")


def _head(g: _GraphBuilder, model: SequenceClassifier, summary: str) -> None:
    if isinstance(model.norm, torch.nn.LayerNorm):
        summary = g.node(
            "LayerNormalization",
            [
                summary,
                g.const("norm_weight", model.norm.weight.detach().numpy()),
                g.const("norm_bias", model.norm.bias.detach().numpy()),
            ],
            "normed",
            axis=-1,
            epsilon=float(model.norm.eps),
        )
    weight_t = g.const("head_weight_t", model.head.weight.detach().numpy().T)
    projected = g.node("MatMul", [summary, weight_t], "head_matmul")
    g.node("Add", [projected, g.const("head_bias", model.head.bias.detach().numpy())], contract.OUTPUT_LOGITS)


def _value_infos(info: ModelInfo) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    state = [info.layers * info.directions, "batch", info.hidden]
    if info.is_language_model:
        inputs = [helper.make_tensor_value_info(contract.INPUT_TOKENS, TensorProto.INT64, ["batch", "time"])]
    else:
        inputs = [
            helper.make_tensor_value_info(
                contract.INPUT_X, TensorProto.FLOAT, ["batch", "time", info.features]
            )
        ]
    inputs += [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, state)
        for name in contract.state_inputs(info.cell)
    ]
    inputs.append(helper.make_tensor_value_info(contract.INPUT_LENGTHS, TensorProto.INT32, ["batch"]))
    per_step = contract.per_step(info.task)
    logits_shape = ["batch", "time", info.classes] if per_step else ["batch", info.classes]
    outputs = [helper.make_tensor_value_info(contract.OUTPUT_LOGITS, TensorProto.FLOAT, logits_shape)]
    outputs += [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, state)
        for name in contract.state_outputs(info.cell)
    ]
    return inputs, outputs


def check_matches(model: SequenceClassifier | CharLanguageModel, info: ModelInfo) -> None:
    """The ModelInfo must describe this model; a mismatch would write a lying model.json."""
    config = model.config
    expected = {
        "task": config.task,
        "cell": config.cell,
        "layers": config.layers,
        "hidden": config.hidden,
        "bidirectional": config.bidirectional,
        "features": config.features,
        "classes": config.classes,
    }
    actual = {key: getattr(info, key) for key in expected}
    wrong = {key: (actual[key], value) for key, value in expected.items() if actual[key] != value}
    if wrong:
        detail = ", ".join(f"{key} {got!r} (model has {want!r})" for key, (got, want) in wrong.items())
        raise contract.ContractError(f"model info for {info.name} does not match the model: {detail}")


def _sequence_input(
    g: _GraphBuilder, model: SequenceClassifier | CharLanguageModel
) -> tuple[str, SequenceClassifier]:
    """The [B, T, F] features the recurrent body reads, and that body: `x`, or a language model's embedded
    `tokens`."""
    if isinstance(model, CharLanguageModel):
        table = g.const("embedding", model.embedding.weight.detach().float().numpy())
        return g.node("Gather", [table, contract.INPUT_TOKENS], "x_embedded", axis=0), model.body
    return contract.INPUT_X, model


def build_model(
    model: SequenceClassifier | CharLanguageModel, info: ModelInfo, opset: int = contract.DEFAULT_OPSET
) -> onnx.ModelProto:
    """The ONNX graph of `model` under the contract, with `info` in its metadata_props; checked in full."""
    check_matches(model, info)
    if opset < contract.MIN_OPSET:
        raise contract.ContractError(
            f"opset {opset} is too old: LayerNormalization needs >= {contract.MIN_OPSET}"
        )
    g = _GraphBuilder()
    x, body = _sequence_input(g, model)
    mean = g.const("feature_mean", body.feature_mean.detach().float().numpy())
    std = g.const("feature_std", body.feature_std.detach().float().numpy())
    centred = g.node("Sub", [x, mean], "x_centred")
    standardised = g.node("Div", [centred, std], "x_std")
    x_tbf = g.node("Transpose", [standardised], "x_tbf", perm=[1, 0, 2])
    y, y_h = _recurrent_layers(g, body, x_tbf)
    _head(g, body, _summary(g, body, y, y_h))

    inputs, outputs = _value_infos(info)
    kind = "language model" if info.is_language_model else "classifier"
    description = (
        f"seqserve {info.task} {info.cell} {kind}: {info.layers} layer(s) x {info.hidden} hidden, "
        f"{'bidirectional' if info.bidirectional else 'unidirectional'}, {info.features} features, "
        f"{info.classes} classes"
    )
    return finish_model(g, info, inputs, outputs, opset, description)


def finish_model(
    g: _GraphBuilder,
    info: ModelInfo,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opset: int,
    description: str,
) -> onnx.ModelProto:
    """The built nodes as a checked model with the contract's metadata, as every exported graph ends."""
    graph = helper.make_graph(
        g.nodes, f"seqserve_{info.name}", inputs, outputs, initializer=list(g.initializers.values())
    )
    opsets = [helper.make_opsetid("", opset)]
    onnx_model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="seqserve",
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    onnx_model.doc_string = description
    set_metadata(onnx_model, info)
    onnx.checker.check_model(onnx_model, full_check=True)
    log.debug("built %s: %d nodes, opset %d", info.name, len(g.nodes), opset)
    return onnx_model


def set_metadata(onnx_model: onnx.ModelProto, info: ModelInfo) -> None:
    """Replace the model's seqserve metadata_props with `info`'s, so a lone .onnx describes itself."""
    others = {
        p.key: p.value for p in onnx_model.metadata_props if not p.key.startswith(contract.METADATA_PREFIX)
    }
    del onnx_model.metadata_props[:]
    helper.set_model_props(onnx_model, {**others, **info.metadata_props()})
