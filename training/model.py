"""SequenceClassifier: a recurrent classifier over variable-length sequences, and nothing else.

It imports nothing from the training loop. The exporter maps its weights onto ONNX's RNN/GRU/LSTM
operators, so what this forward pass computes is exactly what the exported graph must compute:

    x_std  = (x - feature_mean) / feature_std            (buffers, learned from the training split)
    out, h = rnn(pack(x_std, lengths), h0)               (padding never reaches the cell)
    many_to_many: logits[b, t] = head(norm(out[b, t]))
    many_to_one:  logits[b]    = head(norm(concat over directions of the last layer's h_n))

For a unidirectional model the last layer's h_n is the output at each row's last valid step, so
many-to-one logits are the last valid step's. For a bidirectional one it is [forward at the last valid
step, backward at step 0], the usual summary of a whole sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqserve.contract import CELLS, LANGUAGE_MODEL, TASKS

_RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

State = tuple[torch.Tensor, ...]  # (h,) or (h, c) for LSTM, each [layers * directions, batch, hidden]


@dataclass(frozen=True)
class ModelConfig:
    """Plain values that rebuild the model; stored in the checkpoint beside the state dict."""

    cell: str
    features: int
    classes: int
    task: str = "many_to_one"
    hidden: int = 64
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.features < 1 or self.classes < 2 or self.hidden < 1 or self.layers < 1:
            raise ValueError(
                f"need features >= 1, classes >= 2, hidden >= 1, layers >= 1; got {self.features}, "
                f"{self.classes}, {self.hidden}, {self.layers}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def to_dict(self) -> dict:
        return asdict(self)


def recurrent_layers(
    cell: str, features: int, hidden: int, layers: int, dropout: float, bidirectional: bool = False
) -> nn.Module:
    """PyTorch's RNN, GRU or LSTM, batch first, as every model here stacks it (and the exporter maps it)."""
    extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    return _RNN_CLASSES[cell](
        input_size=features,
        hidden_size=hidden,
        num_layers=layers,
        batch_first=True,
        bidirectional=bidirectional,
        # PyTorch applies dropout between stacked layers only, never after the last.
        dropout=dropout if layers > 1 else 0.0,
        **extra,
    )


class SequenceClassifier(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = recurrent_layers(
            config.cell, config.features, config.hidden, config.layers, config.dropout, config.bidirectional
        )
        summary = config.hidden * config.directions
        self.norm: nn.Module = nn.LayerNorm(summary) if config.layer_norm else nn.Identity()
        self.head = nn.Linear(summary, config.classes)
        self.register_buffer("feature_mean", torch.zeros(config.features))
        self.register_buffer("feature_std", torch.ones(config.features))

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store training-split statistics so the model (and its ONNX graph) take raw features."""
        self.feature_mean.copy_(mean)
        # A constant feature would divide by zero; treat it as already unit-scaled.
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def initial_state(self, batch: int) -> State:
        shape = (self.config.layers * self.config.directions, batch, self.config.hidden)
        zeros = torch.zeros(shape, device=self.head.weight.device)
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else (zeros,)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """x [B, T, F] raw, lengths [B] (>= 1); returns logits and the state at each row's last step."""
        batch, steps, _ = x.shape
        state = state if state is not None else self.initial_state(batch)
        x = (x - self.feature_mean) / self.feature_std
        rnn_state = state if self.config.cell == "lstm" else state[0]
        if bool((lengths == steps).all()):
            # No padding to skip: the unpacked call computes the same thing, several times faster on CPU.
            out, new_state = self.rnn(x, rnn_state)
        else:
            packed = pack_padded_sequence(x, lengths.cpu().long(), batch_first=True, enforce_sorted=False)
            packed_out, new_state = self.rnn(packed, rnn_state)
            out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
        new_state = tuple(new_state) if self.config.cell == "lstm" else (new_state,)
        if self.config.task == "many_to_many":
            return self.head(self.norm(out)), new_state
        last_layer = new_state[0][-self.config.directions :]  # [directions, B, H]
        summary = last_layer.transpose(0, 1).reshape(batch, -1)  # [B, directions * H]
        return self.head(self.norm(summary)), new_state


def chrono_init(model: SequenceClassifier, max_dependency: int) -> None:
    """Chrono initialisation (Tallec & Ollivier, 2018, "Can recurrent neural networks warp time?").

    Gated cells start by keeping their state: an LSTM's forget-gate bias and a GRU's update-gate bias are
    drawn as log(U(1, max_dependency - 1)), so information survives about `max_dependency` steps before any
    learning; the LSTM input-gate bias is its negative. A vanilla RNN has no gate, so it is left as is.
    Gate order in PyTorch's weights: LSTM [i, f, g, o], GRU [r, z, n] (torch/nn/modules/rnn.py).
    """
    cell, hidden = model.config.cell, model.config.hidden
    if cell == "rnn":
        return
    upper = max(float(max_dependency) - 1.0, 1.0 + 1e-3)
    with torch.no_grad():
        for name, bias in model.rnn.named_parameters():
            if not name.startswith("bias_"):
                continue
            bias.zero_()
            if not name.startswith("bias_hh"):
                continue
            keep = torch.log(torch.empty(hidden).uniform_(1.0, upper))
            if cell == "lstm":
                bias[hidden : 2 * hidden] = keep  # forget gate
                bias[0:hidden] = -keep  # input gate
            else:
                bias[hidden : 2 * hidden] = keep  # update gate z: h' = (1 - z) * n + z * h


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_payload(model: SequenceClassifier, labels: list[str], extra: dict | None = None) -> dict:
    """What `checkpoint.pt` holds: tensors and plain values only, so `weights_only=True` loads it."""
    return {
        "format": "seqserve.checkpoint/1",
        "config": model.config.to_dict(),
        "labels": list(labels),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }


def load_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """Rebuild a model from `checkpoint.pt`; returns the model (eval mode) and the whole payload.
    The model is a SequenceClassifier, or a CharLanguageModel when payload["kind"] says language_model."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "seqserve.checkpoint/1":
        raise ValueError(f"{path}: not a seqserve checkpoint (expected format 'seqserve.checkpoint/1')")
    if payload.get("kind") == LANGUAGE_MODEL:
        from seqserve.training.language_model import from_payload  # it builds on this module

        return from_payload(payload), payload
    model = SequenceClassifier(ModelConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload
