"""Forecast files, the same for `seqserve forecast` (a server) and `seqserve predict` (offline): a history
CSV in (`timestamp,value`, or `series,timestamp,value` for many series; training/series.py reads it), a
CSV out with `series,timestamp,mean` and one `q<level>` column per quantile, and a picture of each series'
recent history, forecast mean and band.

A history's timestamps are ISO 8601 (UTC when they carry no zone); the forecast's continue them at the
spacing of the last two. The first timestamp sets the stream's calendar phase (`start_unix_s`).
"""

from __future__ import annotations

import csv
import datetime
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SeriesForecast:
    name: str
    history_stamps: list[str]
    history: np.ndarray  # float [steps]
    stamps: list[str]  # the forecast's, [horizon]
    mean: np.ndarray  # float32 [horizon]
    quantiles: dict[float, np.ndarray]  # level -> float32 [horizon], in the order asked


def parse_levels(text: str) -> tuple[float, ...]:
    """ "0.1,0.5,0.9" -> (0.1, 0.5, 0.9); the server checks each is inside (0, 1)."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(
            f"quantiles {text!r}: expected numbers separated by commas, e.g. 0.1,0.5,0.9"
        ) from exc


def _instant(stamp: str) -> datetime.datetime | None:
    try:
        at = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=datetime.UTC)


def start_unix_s(stamps: list[str]) -> float | None:
    """The first observation's Unix time, or None when the timestamps are not ISO 8601."""
    first = _instant(stamps[0]) if stamps else None
    return None if first is None else first.timestamp()


def future_stamps(stamps: list[str], horizon: int) -> list[str]:
    """The next `horizon` timestamps at the spacing of the last two (step numbers when not ISO 8601)."""
    before, last = (_instant(s) for s in ([""] + stamps)[-2:])
    if before is None or last is None:
        return [str(len(stamps) + k) for k in range(horizon)]
    step = last - before
    zoned = datetime.datetime.fromisoformat(stamps[-1]).tzinfo is not None
    future = (last + step * k for k in range(1, horizon + 1))
    return [(t if zoned else t.replace(tzinfo=None)).isoformat() for t in future]


def read_histories(path: Path) -> tuple[list[str], list[list[str]], list[np.ndarray]]:
    """Series names, timestamps and values of a history CSV (training/series.py's reader)."""
    from seqserve.training.series import read_series_csv

    return read_series_csv(path)


def finish(
    output: Path | None,
    plot: Path | None,
    histories: tuple[list[str], list[list[str]], list[np.ndarray]],
    answers: list[tuple[np.ndarray, dict[float, np.ndarray]]],
) -> str:
    """Write the forecasts (and the picture); a line that says what was written where."""
    names, stamps, values = histories
    forecasts = [
        SeriesForecast(name, stamp, value, future_stamps(stamp, len(mean)), mean, quantiles)
        for name, stamp, value, (mean, quantiles) in zip(names, stamps, values, answers, strict=True)
    ]
    rows = write_forecasts(output, forecasts)
    if plot is not None:
        plot_forecasts(plot, forecasts)
    where = output if output is not None else "stdout"
    pictured = f", picture {plot}" if plot is not None else ""
    return f"{len(forecasts)} series, {rows} forecast rows -> {where}{pictured}"


def write_forecasts(output: Path | None, forecasts: list[SeriesForecast]) -> int:
    """One row per series and step; returns the rows written (to stdout when `output` is None)."""
    levels = list(forecasts[0].quantiles) if forecasts else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["series", "timestamp", "mean", *(f"q{level:g}" for level in levels)])
    rows = 0
    for forecast in forecasts:
        for step, stamp in enumerate(forecast.stamps):
            quantiles = [f"{float(forecast.quantiles[level][step]):.6g}" for level in levels]
            writer.writerow([forecast.name, stamp, f"{float(forecast.mean[step]):.6g}", *quantiles])
            rows += 1
    if output is not None:
        Path(output).write_text(buffer.getvalue())
    else:
        sys.stdout.write(buffer.getvalue())
    return rows


def plot_forecasts(path: Path, forecasts: list[SeriesForecast], context: int = 0) -> None:
    """Each series (up to 4) in its own panel: the last `context` observed values (0: twice the horizon),
    the forecast mean and the band between the lowest and highest quantile asked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = forecasts[:4]
    figure, axes = plt.subplots(len(shown), 1, figsize=(10, 3 * len(shown)), squeeze=False)
    for axis, forecast in zip(axes[:, 0], shown, strict=True):
        horizon = len(forecast.mean)
        keep = context or 2 * horizon
        past = forecast.history[-keep:]
        x_past = np.arange(-len(past), 0)
        x_future = np.arange(horizon)
        axis.plot(x_past, past, color="black", linewidth=1, label="history")
        axis.plot(x_future, forecast.mean, color="tab:blue", label="forecast mean")
        if len(forecast.quantiles) >= 2:
            low, high = min(forecast.quantiles), max(forecast.quantiles)
            axis.fill_between(
                x_future, forecast.quantiles[low], forecast.quantiles[high], color="tab:blue", alpha=0.25,
                label=f"q{low:g} to q{high:g}",
            )  # fmt: skip
        axis.set_title(f"{forecast.name}: forecast from {forecast.stamps[0] if forecast.stamps else ''}")
        axis.set_xlabel("steps from the forecast's start")
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
