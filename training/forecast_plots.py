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


def plot_test_week(model: Forecaster, data: SeriesSet, samples: int, seed: int, path: Path) -> None:
    """The first test week of a single-series set: seven day-ahead forecasts side by side."""
    from seqserve.training.forecast_loop import forecast_origins

    week = data.test[:7]
    paths = forecast_origins(model, data, week, samples, seed)  # [7, samples, horizon]
    joined = paths.transpose(1, 0, 2).reshape(samples, -1)
    start, end = week[0].start, week[-1].start + data.horizon
    values = data.values[week[0].series]
    plot_forecast(
        values[start - 2 * data.horizon : start],
        joined.mean(axis=0),
        np.quantile(joined, 0.1, axis=0),
        np.quantile(joined, 0.9, axis=0),
        path,
        values[start:end],
        title=f"{data.source}: first test week, seven forecasts of {data.horizon} steps from each midnight",
    )
