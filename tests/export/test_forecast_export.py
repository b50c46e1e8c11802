import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqserve import contract, declaration
from seqserve.export.forecast_graph import build_forecaster
from seqserve.export.forecast_job import (
    OnnxForecaster,
    check_forecaster_parity,
    export_forecaster,
    forecaster_info,
)
from seqserve.training.forecast_loop import ForecastTrainConfig, train_forecaster
from seqserve.training.forecaster import Forecaster, ForecasterConfig
from seqserve.training.series import taylor


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_graph_equals_pytorch_in_chunks_and_batched(cell: str) -> None:
    torch.manual_seed(1)
    model = Forecaster(
        ForecasterConfig(cell=cell, hidden=12, lags=(48, 336), periods=(48.0, 336.0), season=336)
    )
    model.eval()
    info = forecaster_info(model, "t", 1, 48)
    session = OnnxForecaster(build_forecaster(model, info).SerializeToString(), info)
    values = taylor().values[0]
    parity = check_forecaster_parity(model, session, [values[:700], values[200:460], values[:30]])
    assert parity["passed"], parity
    assert parity["loc_scale"] < 1e-6


def test_graph_refuses_nothing_silently_a_wrong_lag_breaks_parity() -> None:
    torch.manual_seed(1)
    model = Forecaster(ForecasterConfig(hidden=8, lags=(3,), season=3)).eval()
    other = Forecaster(ForecasterConfig(hidden=8, lags=(2,), season=3)).eval()
    other.load_state_dict(model.state_dict())
    info = forecaster_info(other, "t", 1, 4)
    info.forecast["memory"] = 3
    session = OnnxForecaster(build_forecaster(other, info).SerializeToString(), info)
    values = taylor().values[0][:100]
    assert not check_forecaster_parity(model, session, [values])["passed"]


def test_export_writes_a_declared_forecaster(tmp_path: Path) -> None:
    run = tmp_path / "taylor-gru"
    train_forecaster(
        ForecastTrainConfig(
            out=run, dataset="taylor", hidden=8, epochs=1, batches_per_epoch=1, batch_size=2, samples=10
        )
    )
    path, info = export_forecaster(run, tmp_path / "repo")
    assert path == tmp_path / "repo" / "taylor-gru" / "1"
    written = json.loads((path / contract.METADATA_FILE).read_text())
    assert (
        written["task"] == "forecast" and written["forecast"]["memory"] == 336 and written["parity"]["passed"]
    )
    assert contract.read_model_info(path).forecast["lags"] == [48, 336]
    raw = declaration.read(path)
    assert raw["rendering"] == "forecaster"
    assert [s["input"] for s in raw["states"]] == ["h0", "lags", "clock", "level"]
    session = OnnxForecaster((path / contract.MODEL_FILE).read_bytes(), info)
    loc, scale, states = session.step(np.full((1, 5), 20000, np.float32), session.initial_states(1))
    assert loc.shape == (1, 5) and (scale > 0).all() and states["clock"][0, 0] == 5
