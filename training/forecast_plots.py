"""Forecast figures: history, forecast mean, the 80 % band and the truth where known (files only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from seqserve.training.forecaster import Forecaster
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
