import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from seqserve import contract
from seqserve.training import forecast_metrics as fm
from seqserve.training.forecast_loop import (
    ForecastTrainConfig,
    calibrate,
    forecast_origins,
    non_decreasing,
    train_forecaster,
)
from seqserve.training.forecaster import (
    Forecaster,
    ForecasterConfig,
    calendar_clock,
    forecast,
    from_payload,
    quantiles,
    rollout,
)
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE
from seqserve.training.readers import DataError
from seqserve.training.series import load_series, m1_yearly, read_series_csv, taylor


def test_taylor_is_the_vendored_half_hourly_demand_split_by_week() -> None:
    data = taylor()
    values = data.values[0]
    assert len(values) == 4032 and values[0] == 22262 and values[1] == 21756
    assert data.timestamps[0][0] == "2000-06-05T00:00" and data.timestamps[0][-1] == "2000-08-27T23:30"
    assert data.train_end == [7 * 336] and len(data.validation) == 7 and len(data.test) == 28
    assert data.test[0].start == 8 * 336 and data.test[-1].start + data.horizon == 4032


def test_seasonal_naive_on_the_taylor_test_weeks_is_measured_from_the_data() -> None:
    data = taylor()
    values = data.values[0]
    truth = np.stack([values[o.start : o.start + 48] for o in data.test])
    weekly = np.stack([fm.seasonal_naive(values[: o.start], 48, 336) for o in data.test])
    np.testing.assert_array_equal(weekly[0], values[8 * 336 - 336 : 8 * 336 - 336 + 48])
    assert 2.0 < fm.mape(truth, weekly) < 2.3
    daily = np.stack([fm.seasonal_naive(values[: o.start], 48, 48) for o in data.test])
    assert fm.mape(truth, daily) > 5


def test_m1_yearly_holds_181_series_with_the_last_six_as_test() -> None:
    data = m1_yearly()
    assert len(data.values) == 181 and data.horizon == 6 and data.season == 1
    assert all(o.start == len(data.values[o.series]) - 6 for o in data.test)


def test_csv_of_many_series_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    rows = [f"{s},2020-01-{d + 1:02d},{d * (2 if s == 'b' else 1)}" for s in "ab" for d in range(20)]
    path.write_text("series,timestamp,value\n" + "\n".join(rows) + "\n")
    names, stamps, values = read_series_csv(path)
    assert names == ["a", "b"] and values[1][3] == 6.0 and stamps[0][0] == "2020-01-01"
    data = load_series(data_file=path, horizon=3)
    assert data.season == 7 and data.periods == (7.0,) and data.test[1].start == 17
    # 2020-01-01 was a Wednesday: the calendar's phase 0 is Monday 2019-12-30, two days before.
    assert data.calendar_origin == "2019-12-30T00:00:00" and data.step_seconds == 86400
    assert data.phases == [2.0, 2.0]
    path.write_text("timestamp,value\n2020-01-01,nan\n")
    with pytest.raises(DataError, match="line 2.*finite"):
        read_series_csv(path)
    path.write_text("time,y\n")
    with pytest.raises(DataError, match="header"):
        read_series_csv(path)


def test_metrics_on_known_values() -> None:
    truth = np.array([[100.0, 200.0]])
    assert fm.mape(truth, np.array([[110.0, 180.0]])) == pytest.approx(10.0)
    assert fm.coverage(truth, np.array([[90.0, 210.0]]), np.array([[120.0, 230.0]])) == 0.5
    q = np.stack([truth - 10, truth, truth + 10])
    assert fm.weighted_quantile_loss(truth, q, (0.1, 0.5, 0.9)) == pytest.approx(
        2 * 0.1 * 10 * 2 / 300 * 2 / 3
    )


def test_chunked_forward_equals_whole_and_keeps_the_last_values() -> None:
    torch.manual_seed(0)
    model = Forecaster(ForecasterConfig(cell="lstm", hidden=8, lags=(3,), periods=(4.0,), season=5)).eval()
    assert model.config.memory == 8  # lag 3 and the value a season before it
    y = torch.rand(2, 12) * 10 + 1
    whole, state = model(y, model.initial_state(2))
    first, mid = model(y[:, :7], model.initial_state(2))
    second, end = model(y[:, 7:], mid)
    torch.testing.assert_close(torch.cat([first.loc, second.loc], 1), whole.loc, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(end["lags"], y[:, -8:])
    assert float(end["count"][0]) == 12 and float(end["clock"][0]) == 12 % 4
    assert float(end["level"][1]) == pytest.approx(float(y[1].abs().mean()))
    lengths = torch.tensor([12, 7])
    _, padded = model(y, model.initial_state(2), lengths)
    torch.testing.assert_close(padded["lags"][1], torch.cat([torch.zeros(1), y[1, :7]]))
    torch.testing.assert_close(padded["h0"][:, 1], mid["h0"][:, 1], rtol=1e-5, atol=1e-6)
    assert float(padded["count"][1]) == 7 and float(padded["clock"][1]) == 7 % 4


def test_untrained_model_rolls_out_the_seasonal_naive_plus_its_current_error() -> None:
    model = Forecaster(ForecasterConfig(hidden=4, season=3)).eval()
    history = torch.tensor([[10.0, 20.0, 30.0, 12.0, 21.0, 33.0]])  # the last error (33 - 30) is 3
    with torch.no_grad():
        predicted = forecast(model, history, 5)
    torch.testing.assert_close(
        predicted.loc, torch.tensor([[15.0, 24.0, 36.0, 18.0, 27.0]]), rtol=0, atol=1e-4
    )
    assert predicted.scale.shape == (1, 5) and bool((predicted.scale > 0).all())


def test_rollout_feeds_each_mean_back_and_quantiles_are_the_normals() -> None:
    torch.manual_seed(2)
    model = Forecaster(ForecasterConfig(hidden=6, lags=(4,), periods=(6.0,), season=6)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        history = torch.rand(3, 40) * 5 + 10
        step, state = model(history, model.initial_state(3))
        predicted = rollout(model, state, step, 7)
        loc, scale = [step.loc[:, -1]], [step.scale[:, -1]]
        for _ in range(6):
            nxt, state = model(loc[-1].unsqueeze(1), state)
            loc.append(nxt.loc[:, 0])
            scale.append(nxt.scale[:, 0])
    torch.testing.assert_close(predicted.loc, torch.stack(loc, 1))
    torch.testing.assert_close(predicted.scale, torch.stack(scale, 1))
    q = quantiles(predicted, (0.1, 0.5, 0.9))
    torch.testing.assert_close(q[1], predicted.loc)
    torch.testing.assert_close(q[2] - predicted.loc, 1.2815516 * predicted.scale, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="horizon 0"):
        rollout(model, state, step, 0)


def test_scale_multipliers_are_the_measured_ones_then_the_rule_and_1_without_them() -> None:
    measured = {"scale_by_horizon": [0.5, 1.0, 2.0], "scale_beyond": "sqrt"}
    got = contract.scale_multipliers(measured, 12)
    assert got[:3] == [0.5, 1.0, 2.0] and got[-1] == pytest.approx(2 * math.sqrt(12 / 3))
    assert got[3] == pytest.approx(2 * math.sqrt(4 / 3))
    assert contract.scale_multipliers(measured, 2) == [0.5, 1.0]
    assert contract.scale_multipliers(measured | {"scale_beyond": "last"}, 5) == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert contract.scale_multipliers({"scale_by_horizon": [0.5, 1.0, 2.0]}, 4)[3] == got[3]  # sqrt: default
    assert contract.scale_multipliers({"memory": 384}, 3) == [1.0, 1.0, 1.0]  # an old model.json
    assert contract.scale_multipliers({"scale_by_horizon": []}, 2) == [1.0, 1.0]
    info = {"name": "f", "version": 1, "task": "forecast", "cell": "gru", "layers": 1, "hidden": 4}
    info |= {"bidirectional": False, "features": 1, "labels": []}
    for bad in ({"scale_by_horizon": [1.0, -0.5]}, {"scale_by_horizon": [1.0], "scale_beyond": "linear"}):
        with pytest.raises(contract.ContractError, match="scale_by_horizon"):
            contract.scale_multipliers(bad, 3)
        with pytest.raises(contract.ContractError, match="scale_by_horizon"):
            contract.ModelInfo(**info, forecast={"memory": 4, **bad})
        with pytest.raises(ValueError, match="scale_by_horizon"):
            ForecasterConfig(**bad)
    # 3, 2 pool to 2.5; then 4 and 1 (weight 3) to 1.75, below it: all four pool to 2.
    fitted = non_decreasing(np.array([1.0, 3, 2, 4, 1]), np.array([1, 1, 1, 1, 3]))
    np.testing.assert_allclose(fitted, [1, 2, 2, 2, 2])


def test_calibration_on_the_validation_week_widens_the_intervals_with_the_horizon() -> None:
    data = taylor()
    model = Forecaster(ForecasterConfig(hidden=4, lags=(48,), periods=(48.0,), season=336, unit=0.015)).eval()
    calibration = calibrate(model, data)
    multipliers = np.array(calibration["scale_by_horizon"])
    # Every half-hour origin of week 8 whose k steps of truth lie inside week 8: 336 at k = 1, 289 at 48.
    assert calibration["origins"][0] == 336 and calibration["origins"][-1] == 289
    assert len(multipliers) == 48 and (np.diff(multipliers) >= 0).all()
    assert multipliers[0] == calibration["measured"][0] < 1 < multipliers[-1]
    raw = forecast_origins(model, data, data.test[:3])  # no multipliers yet: the model's own scale
    model.config = replace(model.config, scale_by_horizon=tuple(multipliers))
    calibrated = forecast_origins(model, data, data.test[:3])
    assert torch.equal(calibrated.loc, raw.loc)
    torch.testing.assert_close(calibrated.scale, raw.scale * torch.tensor(multipliers, dtype=torch.float32))
    low, high = quantiles(calibrated, (0.1, 0.9))
    width = (high - low).mean(0)
    assert bool((width[1:] > width[:1]).all()) and float(width[-1]) > 2 * float(width[0])
    with torch.no_grad():
        history = torch.as_tensor(data.values[0][None, : data.test[0].start], dtype=torch.float32)
        far = forecast(model, history, 192)
        bare = forecast(model, history, 192, calibrated=False)
    ratio = (far.scale / bare.scale)[0]
    assert float(ratio[191]) == pytest.approx(multipliers[-1] * 2, rel=1e-5)  # sqrt(192 / 48)
    assert float(ratio[95]) == pytest.approx(multipliers[-1] * math.sqrt(2), rel=1e-5)


def test_calendar_clock_is_the_phase_of_the_start_time_and_drives_the_features() -> None:
    info = {"periods": [48.0, 336.0], "step_seconds": 1800.0, "calendar_origin": "2000-06-05T00:00:00"}
    assert calendar_clock("2000-06-05T00:00:00", info) == 0
    assert calendar_clock("2000-06-06T01:30:00", info) == 48 + 3  # Tuesday 01:30
    assert calendar_clock("2000-06-19T01:30:00", info) == 3  # two weeks later: the same phase
    assert calendar_clock("2000-06-04T23:30:00", info) == 335  # before the origin
    assert calendar_clock("2024-01-01T00:00:00", {"periods": [], "step_seconds": 0}) == 0
    torch.manual_seed(0)
    model = Forecaster(ForecasterConfig(hidden=4, periods=(48.0,), season=48)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        y = torch.rand(1, 60) + 1
        at_zero, _ = model(y, model.initial_state(1))
        at_ten, after = model(y, model.initial_state(1, clock=10.0))
    assert not torch.allclose(at_zero.loc, at_ten.loc)
    assert float(after["clock"][0]) == (10 + 60) % 48 and float(after["count"][0]) == 60


def test_tiny_taylor_run_writes_metrics_beside_the_naive(tmp_path: Path) -> None:
    config = ForecastTrainConfig(
        out=tmp_path / "run",
        dataset="taylor",
        hidden=8,
        epochs=2,
        batches_per_epoch=2,
        batch_size=4,
    )
    metrics = train_forecaster(config)
    written = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert written["test"]["seasonal_naive"]["mape"] == pytest.approx(
        metrics["test"]["seasonal_naive"]["mape"]
    )
    assert 2.0 < written["test"]["seasonal_naive"]["mape"] < 2.3
    assert 0 <= written["test"]["model"]["coverage_80"] <= 1 and written["train_cpu_seconds"] > 0
    assert (tmp_path / "run" / "forecast.png").stat().st_size > 1000
    model = from_payload(torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True))
    assert model.config.lags == (48,) and model.config.memory == 48 + 336
    assert model.config.calendar_origin == "2000-06-05T00:00:00" and model.config.step_seconds == 1800
    assert list(model.config.scale_by_horizon) == written["calibration"]["scale_by_horizon"]
    assert len(model.config.scale_by_horizon) == 48 and written["calibration"]["scale_beyond"] == "sqrt"
    payload = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    del payload["config"]["scale_by_horizon"], payload["config"]["scale_beyond"]
    assert from_payload(payload).config.calibration == {"scale_by_horizon": [], "scale_beyond": "sqrt"}
    assert [h["epoch"] for h in written["history"]][:2] == [0, 1]


def test_seqserve_train_task_forecast(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from seqserve.cli import app

    out = str(tmp_path / "run")
    args = [
        "train",
        "--task",
        "forecast",
        "--dataset",
        "taylor",
        "--out",
        out,
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "seasonal naive 2.15 %" in result.output and (tmp_path / "run" / METRICS_FILE).is_file()
    refused = CliRunner().invoke(app, [*args[:-4], "--bidirectional", "--force"])
    assert refused.exit_code == 2 and "--bidirectional do not apply to a forecaster" in refused.output


def test_horizon_study_of_the_untrained_model_is_the_naive_plus_its_persisted_error() -> None:
    from seqserve.training.horizon import horizon_study

    data = taylor()
    model = Forecaster(ForecasterConfig(hidden=4, lags=(48,), periods=(48.0,), season=336, unit=0.015))
    study = horizon_study(model, data, 8)
    values = data.values[0]
    origins = np.arange(data.test[0].start, len(values) - 8 + 1)
    error = values[origins - 1] - values[origins - 1 - 336]
    k = np.arange(8)
    persisted = values[origins[:, None] + k - 336] + error[:, None]
    truth = values[origins[:, None] + k]
    assert study.origins == len(origins) == 1337
    np.testing.assert_allclose(study.rollout_mae, np.abs(truth - persisted).mean(0), rtol=1e-4)
    np.testing.assert_allclose(study.naive_mae, np.abs(truth - values[origins[:, None] + k - 336]).mean(0))
    assert study.one_step_mae[0] == pytest.approx(study.rollout_mae[0], rel=1e-6)
    assert (
        study.rollout_mae[7] > 2 * study.rollout_mae[0]
        and ((0 <= study.coverage_80) & (study.coverage_80 <= 1)).all()
    )


def test_seqserve_experiment_horizon(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from seqserve.cli import app

    run = tmp_path / "run"
    train_forecaster(
        ForecastTrainConfig(out=run, dataset="taylor", hidden=4, epochs=1, batches_per_epoch=1, batch_size=2)
    )
    out = tmp_path / "study"
    args = ["experiment", "horizon", "--run", str(run), "--out", str(out), "--max-horizon", "12"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "horizon.json").read_text())
    assert written["max_horizon"] == 12 and len(written["rollout_mae"]) == 12 and written["origins"] == 1333
    assert (out / "horizon.png").stat().st_size > 1000
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "already holds" in refused.output
