"""`export_module`: a user's own nn.Module (forward(x, *states) -> (output, *new_states)) exported with its
declaration, proven at export in random chunks against PyTorch whole, refused when it is not, and then
served: a stream's answers equal PyTorch's over the whole sequence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqserve.export.errors import ExportError, ExportInputError
from seqserve.export.stateful import ExportedModule, StateSpec, export_module
from seqserve.service.config import ServerConfig
from seqserve.service.server.launch import ServerThread

from .named_streams import stream

FEATURES, HIDDEN, CLASSES = 3, 8, 2


class Gru(torch.nn.Module):
    """Two GRU layers whose state is [layers, batch, hidden]; a score per step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.gru(x, state)
        return self.head(y), state


class Lstm(torch.nn.Module):
    """An LSTM with two states, h and c; one score per call (the chunk's last step)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, (h, c) = self.lstm(x, (h, c))
        return self.head(y[:, -1]), h, c


class Stale(Gru):
    """Reads its state but hands it back unchanged: whole and chunked differ."""

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, _ = self.gru(x, state)
        return self.head(y), state * 1.0


class Stateless(Gru):
    """Never reads its state: the exporter drops the input."""

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, new_state = self.gru(x)
        return self.head(y), new_state


EXAMPLE = torch.zeros(2, 5, FEATURES)
GRU_STATES = [StateSpec("state", (2, HIDDEN), batch_axis=1)]
LSTM_STATES = [StateSpec("h", (1, HIDDEN), batch_axis=1), StateSpec("c", (1, HIDDEN), batch_axis=1)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple]]:
    torch.manual_seed(0)
    repository = tmp_path_factory.mktemp("modules")
    gru, lstm = Gru(), Lstm()
    return repository, {
        "gru": (gru, export_module(gru, EXAMPLE, GRU_STATES, repository / "gru" / "1")),
        "lstm": (lstm, export_module(lstm, EXAMPLE, LSTM_STATES, repository / "lstm" / "1",
                                     output_time_axis=None)),
    }  # fmt: skip


def test_the_export_writes_the_graph_and_its_declaration_after_parity(exported: tuple) -> None:
    repository, modules = exported
    for name, (_, result) in modules.items():
        assert isinstance(result, ExportedModule) and result.folder == repository / name / "1"
        assert sorted(p.name for p in result.folder.iterdir()) == ["declaration.json", "model.onnx"]
        assert result.max_abs_diff <= 1e-5 and result.batched and result.batch_note == ""
        assert json.loads((result.folder / "declaration.json").read_text()) == result.declaration
    gru = modules["gru"][1].declaration
    assert [(s["input"], s["output"], s["batch_axis"], s["row_shape"]) for s in gru["states"]] == [
        ("state", "state_out", 1, [2, HIDDEN])
    ]
    assert gru["inputs"][0]["step_shape"] == [FEATURES]
    assert (gru["inputs"][0]["time_axis"], gru["outputs"][0]["time_axis"]) == (1, 1)
    lstm = modules["lstm"][1].declaration
    assert [s["input"] for s in lstm["states"]] == ["h", "c"] and lstm["outputs"][0]["time_axis"] is None


def test_a_served_stream_in_chunks_equals_pytorch_over_the_whole_sequence(exported: tuple) -> None:
    repository, modules = exported
    rng = np.random.default_rng(1)
    x = rng.standard_normal((23, FEATURES)).astype(np.float32)
    chunks = [{"x": part} for part in np.split(x, [4, 5, 13])]
    config = ServerConfig(repository=repository, port=0, metrics_port=-1, grace_s=1.0, max_delay_ms=2)
    with ServerThread(config) as server:
        answers = {name: stream(server.target, name, chunks)["y"] for name in modules}
    with torch.no_grad():
        gru, _ = modules["gru"][0](torch.from_numpy(x)[None], GRU_STATES[0].zeros(1))
        lstm, *_ = modules["lstm"][0](torch.from_numpy(x)[None], *(s.zeros(1) for s in LSTM_STATES))
    np.testing.assert_allclose(answers["gru"], gru[0].numpy(), rtol=0, atol=1e-5)
    # One answer per chunk; the last is PyTorch's answer for the whole sequence.
    assert answers["lstm"].shape == (len(chunks) * CLASSES,)
    np.testing.assert_allclose(answers["lstm"][-CLASSES:], lstm[0].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("module", "words"),
    [
        (Stale, ["differs from PyTorch over the whole sequence by", "tolerance 1e-05", "not written"]),
        (Stateless, ["the exported graph has no input state", "forward never reads that state"]),
    ],
)
def test_a_module_whose_chunks_do_not_equal_the_whole_is_refused_and_nothing_is_written(
    tmp_path: Path, module: type, words: list[str]
) -> None:
    with pytest.raises(ExportError) as refused:
        export_module(module(), EXAMPLE, GRU_STATES, tmp_path / "bad" / "1")
    for word in words:
        assert word in str(refused.value)
    assert not (tmp_path / "bad").exists()


def test_an_existing_version_is_refused_unless_forced(exported: tuple) -> None:
    repository, modules = exported
    gru = modules["gru"][0]
    with pytest.raises(ExportInputError, match="exists; pass force=True"):
        export_module(gru, EXAMPLE, GRU_STATES, repository / "gru" / "1")
    assert export_module(gru, EXAMPLE, GRU_STATES, repository / "gru" / "1", force=True).max_abs_diff <= 1e-5
