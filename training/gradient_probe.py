"""How much of the loss's gradient reaches each time step: ||dloss/dh_t|| for t = 0..T-1.

`nn.GRU`/`nn.LSTM` run the whole sequence in one fused call, so their per-step outputs are not nodes that
later steps depend on. The probe unrolls the same weights step by step with the matching cell module
(`nn.RNNCell`/`GRUCell`/`LSTMCell` share the layer's gate layout, torch/nn/modules/rnn.py), keeps every
h_t, and backpropagates the many-to-one loss through them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from seqserve.training.model import SequenceClassifier

_CELLS: dict[str, type[nn.Module]] = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}


def unrolled_cell(model: SequenceClassifier) -> nn.Module:
    """The first layer's weights as a single-step cell module."""
    config = model.config
    if config.layers != 1 or config.bidirectional or config.task != "many_to_one":
        raise ValueError(
            f"the probe needs a 1-layer unidirectional many_to_one model, got layers={config.layers}, "
            f"bidirectional={config.bidirectional}, task={config.task}"
        )
    cell = _CELLS[config.cell](config.features, config.hidden, dtype=model.head.weight.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(model.rnn, f"{name}_l0"))
    return cell


def hidden_gradient_norms(model: SequenceClassifier, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Mean over the batch of ||dloss/dh_t||, shape [T]; x is raw [B, T, F] of equal lengths.

    Computed in float64 on a copy of the model: over a few hundred steps the gradient of a vanilla RNN
    falls below float32's smallest number, and the point is to see how far it falls.
    """
    model = copy.deepcopy(model).double()
    cell = unrolled_cell(model)
    inputs = (x.double() - model.feature_mean) / model.feature_std
    batch = x.shape[0]
    h = torch.zeros(batch, model.config.hidden, dtype=torch.float64)
    c = torch.zeros_like(h)
    states = []
    for t in range(x.shape[1]):
        if model.config.cell == "lstm":
            h, c = cell(inputs[:, t], (h, c))
        else:
            h = cell(inputs[:, t], h)
        states.append(h)
    loss = functional.cross_entropy(model.head(model.norm(h)), targets)
    gradients = torch.autograd.grad(loss, states)
    return np.asarray([float(g.norm(dim=1).mean()) for g in gradients])
