import json
from dataclasses import replace
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
from seqserve.training.forecaster import Forecaster, ForecasterConfig, forecast
from seqserve.training.series import taylor


def _random_head(model: Forecaster) -> Forecaster:
    """An untrained head reads only d_1; random weights make every feature and the rnn count. Calibrated
    with scale multipliers that differ per step, and grow past the three measured."""
    with torch.no_grad():
        model.head.weight.normal_(0, 0.3)
    model.config = replace(model.config, scale_by_horizon=(0.6, 0.9, 1.4))
    return model.eval()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_graph_equals_pytorch_in_chunks_batched_and_rolled_out(cell: str) -> None:
    torch.manual_seed(1)
    model = _random_head(
        Forecaster(
            ForecasterConfig(cell=cell, hidden=12, lags=(48,), periods=(48.0, 336.0), season=336, unit=0.015)
        )
    )
    info = forecaster_info(model, "t", 1, 48)
    session = OnnxForecaster(build_forecaster(model, info).SerializeToString(), info)
    values = taylor().values[0]
    parity = check_forecaster_parity(model, session, [values[:700], values[200:460], values[:30]])
    assert parity["passed"], parity
    assert parity["loc_scale"] < 1e-6 and parity["rollout"] < 1e-6


def test_onnx_forecast_equals_the_pytorch_rollout_from_a_calendar_phase() -> None:
    torch.manual_seed(2)
    model = _random_head(Forecaster(ForecasterConfig(hidden=8, lags=(4,), periods=(6.0,), season=6)))
    info = forecaster_info(model, "t", 1, 10)
    session = OnnxForecaster(build_forecaster(model, info).SerializeToString(), info)
    history = (taylor().values[0][:50] / 1000).astype(np.float32)
    loc, scale = session.forecast(history[None], 10, clock=4.0)
    with torch.no_grad():
        want = forecast(model, torch.as_tensor(history[None]), 10, state=model.initial_state(1, clock=4.0))
    np.testing.assert_allclose(loc, want.loc.numpy(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(scale, want.scale.numpy(), rtol=1e-6, atol=1e-5)
    assert not np.allclose(loc, session.forecast(history[None], 10)[0])  # the phase matters
    # A model.json without the multipliers (an older export) forecasts with the model's own scale.
    for key in ("scale_by_horizon", "scale_beyond"):
        del info.forecast[key]
    bare_loc, bare_scale = session.forecast(history[None], 10, clock=4.0)
    np.testing.assert_array_equal(bare_loc, loc)
    multipliers = contract.scale_multipliers(model.config.calibration, 10)
    np.testing.assert_allclose(scale / bare_scale, [multipliers], rtol=1e-6)
    with pytest.raises(ValueError, match="horizon 0"):
        session.forecast(history[None], 0)


def test_graph_refuses_nothing_silently_a_wrong_lag_breaks_parity() -> None:
    torch.manual_seed(1)
    model = _random_head(Forecaster(ForecasterConfig(hidden=8, lags=(2, 4), season=3)))
    other = Forecaster(ForecasterConfig(hidden=8, lags=(3, 4), season=3)).eval()
    assert other.config.memory == model.config.memory
    other.load_state_dict(model.state_dict())
    info = forecaster_info(other, "t", 1, 4)
    session = OnnxForecaster(build_forecaster(other, info).SerializeToString(), info)
    values = taylor().values[0][:100]
    assert not check_forecaster_parity(model, session, [values])["passed"]


def test_export_writes_a_declared_forecaster(tmp_path: Path) -> None:
    run = tmp_path / "taylor-gru"
    train_forecaster(
        ForecastTrainConfig(out=run, dataset="taylor", hidden=8, epochs=1, batches_per_epoch=1, batch_size=2)
    )
    path, info = export_forecaster(run, tmp_path / "repo")
    assert path == tmp_path / "repo" / "taylor-gru" / "1"
    written = json.loads((path / contract.METADATA_FILE).read_text())
    assert written["task"] == "forecast" and written["parity"]["passed"]
    multipliers = written["forecast"].pop("scale_by_horizon")
    assert multipliers == json.loads((run / "metrics.json").read_text())["calibration"]["scale_by_horizon"]
    assert len(multipliers) == 48 and multipliers == sorted(multipliers)
    assert written["forecast"] == {
        "lags": [48],
        "periods": [48.0],
        "season": 336,
        "memory": 384,
        "horizon": 48,
        "distribution": "normal",
        "step_seconds": 1800.0,
        "calendar_origin": "2000-06-05T00:00:00",
        "scale_beyond": "sqrt",
    }
    assert contract.read_model_info(path).forecast["lags"] == [48]
    raw = declaration.read(path)
    assert raw["rendering"] == "forecaster"
    assert [s["input"] for s in raw["states"]] == ["h0", "lags", "count", "clock", "level"]
    assert [s["output"] for s in raw["states"]] == ["hn", "lags_out", "count_out", "clock_out", "level_out"]
    session = OnnxForecaster((path / contract.MODEL_FILE).read_bytes(), info)
    loc, scale, states = session.step(np.full((1, 50), 20000, np.float32), session.initial_states(1, 40.0))
    assert loc.shape == (1, 50) and (scale > 0).all()
    assert states["count"][0, 0] == 50 and states["clock"][0, 0] == (40 + 50) % 48
