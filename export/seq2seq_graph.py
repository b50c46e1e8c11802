"""Seq2Seq -> its two ONNX graphs, built node by node with `onnx.helper` as the classifiers' graph is.

Why not `torch.onnx.export`: the encoder's packed bidirectional RNN traces to a graph without
`sequence_lens` (the classifiers' reason, export/graph.py), and building both graphs from the weights names
every tensor as `seqserve.contract` spells it. The decoder step measured both ways in export/README.md.

Encoder (training/seq2seq.py `encode`):

    tokens [B, T] int64, lengths [B] int32
    x        = Gather(letter_embedding, tokens)                   [B, T, E] -> [T, B, E]
    Y, Y_h   = GRU/LSTM(x, sequence_lens=lengths), bidirectional   Y [T, 2, B, He], Y_h [2, B, He]
               (each further encoder layer reads the one before's Y as [T, B, 2 He])
    memory   = Y as [B, T, 2 He]                                  (zero past a row's length, as PyTorch pads)
    hn (cn)  = Tanh(MatMul([Y_h fwd; Y_h bwd], bridge^T) + b)     [1, B, H]

Decoder step (`step`):

    previous [B] int64, h0 (c0) [1, B, H], memory [B, T, 2He], lengths [B] int32
    hn (cn)  = GRU/LSTM(Gather(phoneme_embedding, previous) as [1, B, E], initial_h=h0)
    scores   = MatMul(memory, MatMul(hn, query^T) as [B, 2He, 1])  [B, T]
    attention = Softmax(Where(t < lengths, scores, -1e9))          [B, T]
    context  = MatMul(attention as [B, 1, T], memory)              [B, 2He]
    log_probs = LogSoftmax(MatMul(Tanh(MatMul([hn; context], combine^T) + b), out^T) + b)   [B, V]
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from torch import nn

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export.graph import _GraphBuilder, finish_model, rnn_attributes, rnn_weights
from seqserve.training.seq2seq import MASKED, Seq2Seq

_OP_TYPE = {"gru": "GRU", "lstm": "LSTM"}


def _linear(g: _GraphBuilder, x: str, name: str, linear: nn.Linear, output: str) -> str:
    """x W^T (+ b), as PyTorch's Linear."""
    weight = g.const(f"{name}_weight_t", linear.weight.detach().numpy().T)
    if linear.bias is None:
        return g.node("MatMul", [x, weight], output)
    bias = g.const(f"{name}_bias", linear.bias.detach().numpy())
    return g.node("Add", [g.node("MatMul", [x, weight], f"{output}_matmul"), bias], output)


def _rnn(g: _GraphBuilder, model: Seq2Seq, which: str, x: str, extra: list[str], layer: int = 0) -> list[str]:
    """One layer of the encoder's or the decoder's RNN as a node; outputs Y, Y_h (, Y_c)."""
    rnn = getattr(model, which)
    cell = model.config.cell
    weights = rnn_weights(rnn, cell, layer)
    name = f"{which}_l{layer}" if layer else which
    inputs = [x, *(g.const(f"{name}_{k}", getattr(weights, k)) for k in ("W", "R", "B")), *extra]
    outputs = [f"{name}_Y", f"{name}_Y_h"] + ([f"{name}_Y_c"] if cell == "lstm" else [])
    g.node(_OP_TYPE[cell], inputs, outputs, **rnn_attributes(cell, rnn.hidden_size, rnn.bidirectional))
    return outputs


def build_encoder(model: Seq2Seq, info: ModelInfo, opset: int = contract.DEFAULT_OPSET) -> onnx.ModelProto:
    config = model.config
    g = _GraphBuilder()
    table = g.const("letter_embedding", model.letter_embedding.weight.detach().numpy())
    embedded = g.node("Gather", [table, contract.INPUT_TOKENS], "embedded", axis=0)
    x = g.node("Transpose", [embedded], "x_tbe", perm=[1, 0, 2])
    outputs = _rnn(g, model, "encoder", x, [contract.INPUT_LENGTHS])
    for layer in range(1, config.encoder_layers):
        # Y [T, 2, B, He] -> [T, B, 2 He]: both directions side by side, as PyTorch feeds the next layer.
        y_tbdh = g.node("Transpose", [outputs[0]], f"encoder_Y_tbdh_l{layer - 1}", perm=[0, 2, 1, 3])
        x = g.flatten_tail(y_tbdh, 2, f"x_l{layer}")
        outputs = _rnn(g, model, "encoder", x, [contract.INPUT_LENGTHS], layer)
    y_btdh = g.node("Transpose", [outputs[0]], "encoder_Y_btdh", perm=[2, 0, 1, 3])
    g.node(
        "Reshape", [y_btdh, g.const("shape_b_t_flat", np.array([0, 0, -1], np.int64))], contract.OUTPUT_MEMORY
    )
    bridges = [model.bridge] + ([model.bridge_c] if model.bridge_c is not None else [])
    names = contract.state_outputs(config.cell)
    for final, bridge, name in zip(outputs[1:], bridges, names, strict=True):
        joined = g.flatten_tail(
            g.node("Transpose", [final], f"{final}_bdh", perm=[1, 0, 2]), 1, f"{name}_joined"
        )
        bridged = g.node(
            "Tanh", [_linear(g, joined, f"bridge_{name}", bridge, f"{name}_linear")], f"{name}_2d"
        )
        g.node("Unsqueeze", [bridged, g.const("axes0", np.array([0], np.int64))], name)
    inputs = [
        helper.make_tensor_value_info(contract.INPUT_TOKENS, TensorProto.INT64, ["batch", "time"]),
        helper.make_tensor_value_info(contract.INPUT_LENGTHS, TensorProto.INT32, ["batch"]),
    ]
    state = [1, "batch", config.hidden]
    values = [
        helper.make_tensor_value_info(
            contract.OUTPUT_MEMORY, TensorProto.FLOAT, ["batch", "time", config.memory]
        ),
        *(helper.make_tensor_value_info(name, TensorProto.FLOAT, state) for name in names),
    ]
    description = (
        f"seqserve seq2seq {config.cell} encoder: {len(config.letters)} input tokens, "
        f"{config.encoder_layers} bidirectional layer(s) of {config.encoder_hidden} per direction; memory "
        f"{config.memory}, decoder state {config.hidden}"
    )
    return finish_model(g, info, inputs, values, opset, description)


def _attention(g: _GraphBuilder, model: Seq2Seq, state: str) -> tuple[str, str]:
    """Attention weights [B, T] and context [B, 2He] of the decoder state [B, H] over the memory."""
    memory, lengths = contract.INPUT_MEMORY, contract.INPUT_LENGTHS
    query = _linear(g, state, "query", model.query, "query")
    column = g.node("Unsqueeze", [query, g.const("axes2", np.array([2], np.int64))], "query_column")
    scores = g.node("Squeeze", [g.node("MatMul", [memory, column], "scores_btl"), "axes2"], "scores")
    steps = g.node(
        "Gather",
        [g.node("Shape", [memory], "memory_shape"), g.const("index1", np.array(1, np.int64))],
        "steps",
        axis=0,
    )
    positions = g.node(
        "Range", [g.const("zero", np.array(0, np.int64)), steps, g.const("one", np.array(1, np.int64))], "t"
    )
    limits = g.node(
        "Unsqueeze", [g.node("Cast", [lengths], "lengths64", to=TensorProto.INT64), "axes1"], "limits"
    )
    valid = g.node("Less", [g.node("Unsqueeze", [positions, "axes0"], "t_row"), limits], "valid")
    masked = g.node(
        "Where", [valid, scores, g.const("masked", np.array(MASKED, np.float32))], "scores_masked"
    )
    weights = g.node("Softmax", [masked], contract.OUTPUT_ATTENTION, axis=-1)
    row = g.node("Unsqueeze", [weights, "axes1"], "attention_row")
    context = g.node("Squeeze", [g.node("MatMul", [row, memory], "context_b1m"), "axes1"], "context")
    return weights, context


def build_decoder_step(
    model: Seq2Seq, info: ModelInfo, opset: int = contract.DEFAULT_OPSET
) -> onnx.ModelProto:
    config = model.config
    g = _GraphBuilder()
    g.const("axes0", np.array([0], np.int64))
    g.const("axes1", np.array([1], np.int64))
    table = g.const("phoneme_embedding", model.phoneme_embedding.weight.detach().numpy())
    embedded = g.node("Gather", [table, contract.INPUT_PREVIOUS], "embedded", axis=0)
    x = g.node("Unsqueeze", [embedded, "axes0"], "x_1be")
    initial = list(contract.state_inputs(config.cell))
    outputs = _rnn(g, model, "decoder", x, ["", *initial])
    for final, name in zip(outputs[1:], contract.state_outputs(config.cell), strict=True):
        g.node("Identity", [final], name)
    state = g.node("Squeeze", [outputs[1], "axes0"], "state")
    _, context = _attention(g, model, state)
    joined = g.node("Concat", [state, context], "state_context", axis=1)
    attentional = g.node("Tanh", [_linear(g, joined, "combine", model.combine, "combined")], "attentional")
    logits = _linear(g, attentional, "out", model.out, "logits")
    g.node("LogSoftmax", [logits], contract.OUTPUT_LOG_PROBS, axis=-1)
    state_shape = [1, "batch", config.hidden]
    inputs = [
        helper.make_tensor_value_info(contract.INPUT_PREVIOUS, TensorProto.INT64, ["batch"]),
        *(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in initial),
        helper.make_tensor_value_info(
            contract.INPUT_MEMORY, TensorProto.FLOAT, ["batch", "time", config.memory]
        ),
        helper.make_tensor_value_info(contract.INPUT_LENGTHS, TensorProto.INT32, ["batch"]),
    ]
    values = [
        helper.make_tensor_value_info(
            contract.OUTPUT_LOG_PROBS, TensorProto.FLOAT, ["batch", len(config.phonemes)]
        ),
        *(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape)
            for name in contract.state_outputs(config.cell)
        ),
        helper.make_tensor_value_info(contract.OUTPUT_ATTENTION, TensorProto.FLOAT, ["batch", "time"]),
    ]
    description = (
        f"seqserve seq2seq {config.cell} decoder step: previous token and state in, log-probabilities over "
        f"{len(config.phonemes)} output tokens, new state and attention out"
    )
    return finish_model(g, info, inputs, values, opset, description)
