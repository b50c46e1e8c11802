"""Forecast figures: history, forecast mean, the 80 % band and the truth where known (files only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NORMAL_Z80 = 1.2815516  # Phi^-1(0.9): an 80 % interval is loc +- this many scales

if TYPE_CHECKING:
    from seqserve.training.forecaster import Forecaster
    from seqserve.training.horizon import HorizonStudy
    from seqserve.training.series import SeriesSet


def plot_forecast(
    history: np.ndarray,
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    path: Path,
    truth: np.ndarray | None = None,
    title: str = "forecast",
) -> None:
    """`history` then the forecast's `mean`, `low` .. `high` band and `truth`, on one step axis."""
    figure, axis = plt.subplots(figsize=(11, 4))
    past = np.arange(-len(history), 0)
    future = np.arange(len(mean))
    axis.plot(past, history, color="0.35", linewidth=1, label="history")
    axis.fill_between(future, low, high, color="tab:blue", alpha=0.25, label="80 % interval")
    axis.plot(future, mean, color="tab:blue", linewidth=1.2, label="forecast mean")
    if truth is not None:
        axis.plot(future, truth, color="black", linewidth=1, linestyle="--", label="truth")
    axis.set(xlabel="step (0 = first forecast step)", ylabel="value", title=title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_test_week(model: Forecaster, data: SeriesSet, path: Path) -> None:
    """The first test week of a single-series set: seven day-ahead rollouts side by side, each from its
    midnight with all history before it."""
    from seqserve.training.forecast_loop import forecast_origins
    from seqserve.training.forecaster import quantiles

    week = data.test[:7]
    predicted = forecast_origins(model, data, week)  # [7, horizon]
    low, high = quantiles(predicted, (0.1, 0.9)).reshape(2, -1).numpy()
    start, end = week[0].start, week[-1].start + data.horizon
    values = data.values[week[0].series]
    plot_forecast(
        values[start - 2 * data.horizon : start],
        predicted.loc.reshape(-1).numpy(),
        low,
        high,
        path,
        values[start:end],
        title=f"{data.source}: first test week, seven forecasts of {data.horizon} steps from each midnight",
    )


def plot_horizon_study(study: HorizonStudy, step_seconds: float, path: Path, title: str) -> None:
    """Error against horizon (the fed-back rollout, the teacher-forced one step, the seasonal naive) and the
    80 % interval's width and coverage against horizon, side by side."""
    horizons = np.arange(1, len(study.rollout_mae) + 1)
    figure, (errors, band) = plt.subplots(1, 2, figsize=(12, 4.2))
    errors.plot(horizons, study.rollout_mae, color="tab:blue", label="fed-back rollout")
    errors.plot(horizons, study.one_step_mae, color="tab:green", label="teacher-forced one step")
    errors.plot(horizons, study.naive_mae, color="0.5", linestyle="--", label="seasonal naive")
    errors.set(xlabel="horizon (steps)", ylabel="mean absolute error", title=f"error, {title}")
    errors.legend(fontsize=8)
    band.plot(horizons, study.width_80, color="tab:blue", label="80 % interval width (calibrated)")
    # A Normal's mean absolute deviation is sigma * sqrt(2 / pi): the width its MAE asks for.
    needed = 2 * NORMAL_Z80 * study.rollout_mae * np.sqrt(np.pi / 2)
    band.plot(horizons, needed, color="tab:orange", linestyle=":", label="width the rollout's MAE asks for")
    band.set(xlabel="horizon (steps)", ylabel="width", title="80 % interval")
    coverage = band.twinx()
    coverage.plot(horizons, study.coverage_80 * 100, color="tab:red", linewidth=0.8, label="coverage (right)")
    coverage.axhline(80, color="tab:red", linestyle="--", linewidth=0.6)
    coverage.set(ylabel="coverage %", ylim=(0, 100))
    lines = band.get_legend_handles_labels()[0] + coverage.get_legend_handles_labels()[0]
    band.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    if step_seconds:
        hours = (lambda k: k * step_seconds / 3600, lambda h: h * 3600 / step_seconds)
        for axis in (errors, band):
            axis.secondary_xaxis("top", functions=hours).set_xlabel("hours")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
