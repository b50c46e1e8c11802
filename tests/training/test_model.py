import itertools

import pytest
import torch

from seqserve.contract import CELLS, TASKS
from seqserve.training.model import ModelConfig, SequenceClassifier, chrono_init

FEATURES, CLASSES, HIDDEN = 4, 3, 5


def make(
    cell: str, layers: int = 1, bidirectional: bool = False, task: str = "many_to_one"
) -> SequenceClassifier:
    torch.manual_seed(0)
    config = ModelConfig(cell, FEATURES, CLASSES, task, HIDDEN, layers, bidirectional, layer_norm=True)
    model = SequenceClassifier(config).eval()
    model.set_standardisation(torch.randn(FEATURES), torch.rand(FEATURES) + 0.5)
    return model


@pytest.mark.parametrize(
    ("cell", "layers", "bidirectional", "task"),
    list(itertools.product(CELLS, (1, 2, 3), (False, True), TASKS)),
)
def test_shapes(cell: str, layers: int, bidirectional: bool, task: str) -> None:
    model = make(cell, layers, bidirectional, task)
    logits, state = model(torch.randn(2, 7, FEATURES), torch.tensor([7, 4]))
    assert logits.shape == ((2, 7, CLASSES) if task == "many_to_many" else (2, CLASSES))
    directions = 2 if bidirectional else 1
    assert [s.shape for s in state] == [(layers * directions, 2, HIDDEN)] * (2 if cell == "lstm" else 1)


@pytest.mark.parametrize(
    ("cell", "bidirectional", "task"), list(itertools.product(CELLS, (False, True), TASKS))
)
def test_padding_never_changes_a_result(cell: str, bidirectional: bool, task: str) -> None:
    model = make(cell, 2, bidirectional, task)
    sequences = [torch.randn(n, FEATURES) for n in (6, 3, 1)]
    padded = torch.zeros(3, 9, FEATURES).fill_(1e3)  # loud padding: any leak would show
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    with torch.no_grad():
        batch_logits, batch_state = model(padded, torch.tensor([6, 3, 1]))
        for row, sequence in enumerate(sequences):
            alone, alone_state = model(sequence[None], torch.tensor([len(sequence)]))
            expected = alone[0] if task == "many_to_one" else alone[0, : len(sequence)]
            got = batch_logits[row] if task == "many_to_one" else batch_logits[row, : len(sequence)]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            for batch_part, alone_part in zip(batch_state, alone_state, strict=True):
                torch.testing.assert_close(batch_part[:, row], alone_part[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_equal_lengths_skip_packing_with_the_same_result(cell: str) -> None:
    model = make(cell, 2, task="many_to_many")
    x = torch.randn(3, 5, FEATURES)
    with torch.no_grad():
        whole, _ = model(x, torch.tensor([5, 5, 5]))
        # One row one step shorter forces the packed path; the other rows must not change.
        extended = torch.cat([x, torch.zeros(3, 1, FEATURES)], dim=1)
        packed, _ = model(extended, torch.tensor([5, 5, 6]))
    torch.testing.assert_close(packed[:2, :5], whole[:2], atol=1e-6, rtol=1e-6)


def test_chrono_init_sets_gate_biases() -> None:
    lstm, gru = make("lstm"), make("gru")
    chrono_init(lstm, 100)
    chrono_init(gru, 100)
    forget = lstm.rnn.bias_hh_l0[HIDDEN : 2 * HIDDEN]
    assert ((forget >= 0) & (forget <= torch.log(torch.tensor(99.0)))).all()
    torch.testing.assert_close(lstm.rnn.bias_hh_l0[:HIDDEN], -forget)
    assert (lstm.rnn.bias_ih_l0 == 0).all()
    assert (gru.rnn.bias_hh_l0[HIDDEN : 2 * HIDDEN] >= 0).all() and gru.rnn.bias_hh_l0[
        HIDDEN:
    ].abs().sum() > 0
