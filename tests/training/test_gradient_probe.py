import numpy as np
import pytest
import torch

from seqserve.contract import CELLS
from seqserve.training.gradient_probe import hidden_gradient_norms, unrolled_cell
from seqserve.training.model import ModelConfig, SequenceClassifier


def make(cell: str, **overrides) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(ModelConfig(cell=cell, features=3, classes=2, hidden=6, **overrides))


@pytest.mark.parametrize("cell", CELLS)
def test_unrolled_cell_reproduces_the_layer(cell: str) -> None:
    model = make(cell)
    x = torch.randn(2, 5, 3)
    _, state = model(x, torch.tensor([5, 5]))
    step = unrolled_cell(model)
    h = torch.zeros(2, 6)
    c = torch.zeros(2, 6)
    for t in range(5):
        if cell == "lstm":
            h, c = step(x[:, t], (h, c))
        else:
            h = step(x[:, t], h)
    torch.testing.assert_close(h, state[0][0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_probe_on_tiny_t(cell: str) -> None:
    model = make(cell)
    x, targets = torch.randn(4, 6, 3), torch.tensor([0, 1, 0, 1])
    norms = hidden_gradient_norms(model, x, targets)
    assert norms.shape == (6,)
    assert (norms > 0).all() and np.isfinite(norms).all()
    # Gradient flows backwards from the loss at the last step and shrinks on the way (default init).
    assert norms[0] < norms[-1]
    assert all(p.grad is None for p in model.parameters())  # probing leaves the model untouched


def test_probe_rejects_models_it_cannot_unroll() -> None:
    with pytest.raises(ValueError, match="1-layer unidirectional many_to_one"):
        unrolled_cell(make("gru", layers=2))
