"""Time series for forecasting: the shipped sets and a user's CSV, read into series and split by forecast
origin (NumPy and the standard library only).

- `taylor`: half-hourly electricity demand, England and Wales, 2000-06-05 to 2000-08-27 (data/forecast/
  taylor.csv, 4,032 values). Weeks 1-7 train, week 8 validation, weeks 9-12 test: 28 forecasts of 48 steps,
  each from a midnight with all history before it. Season 336 (a week), lag 48 (yesterday's seasonal-naive
  error), the time of day as calendar (period 48, phase 0 at 2000-06-05T00:00), 1,800 s a step. The week
  is the season's: day-of-week sin/cos let a model learn the six training weeks by heart (measured in
  training/README.md).
- `m1_yearly`: the 181 yearly series of the M1 competition (data/forecast/m1_yearly_dataset.tsf), horizon
  6: each series' last 6 values are its test, the 6 before them its validation, the rest trains.
- a CSV (`--data`): `timestamp,value` (one series) or `series,timestamp,value` (many), a header first; the
  same split as M1 with the horizon given. Further columns are allowed and not used. Half-hourly, hourly
  and daily timestamps give a daily and weekly calendar whose phase 0 is the Monday midnight on or before
  the earliest first timestamp; each series' phase is where its first timestamp falls.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from seqserve.training.readers import DataError

FORECAST_DATASETS = ("taylor", "m1_yearly")
TAYLOR_WEEK = 336
TAYLOR_DAY = 48


@dataclass(frozen=True)
class Origin:
    """One forecast: `horizon` values of series `series` from index `start`, all values before it known."""

    series: int
    start: int


@dataclass
class SeriesSet:
    names: list[str]
    values: list[np.ndarray]  # float64, one array per series
    timestamps: list[list[str]]  # as read ([] where the source has none)
    horizon: int
    season: int
    lags: tuple[int, ...] = ()
    periods: tuple[float, ...] = ()
    train_end: list[int] = field(default_factory=list)  # values[:train_end] train each series
    validation: list[Origin] = field(default_factory=list)
    test: list[Origin] = field(default_factory=list)
    source: str = ""
    step_seconds: float = 0.0  # seconds a step (0: no calendar)
    calendar_origin: str = ""  # ISO timestamp at phase 0 of every period ("" without periods)
    phases: list[float] = field(default_factory=list)  # each series' first value's phase (empty: all 0)

    def phase(self, series: int) -> float:
        return self.phases[series] if self.phases else 0.0


def data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "forecast"


def read_series_csv(path: Path | str) -> tuple[list[str], list[list[str]], list[np.ndarray]]:
    """Series names, their timestamps and values, in the file's order of first appearance."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    if not rows:
        raise DataError(f"{path}: empty; expected a header 'timestamp,value' or 'series,timestamp,value'")
    header = [name.strip().lower() for name in rows[0]]
    if header[:2] == ["timestamp", "value"]:
        key, stamp, value = None, 0, 1
    elif header[:3] == ["series", "timestamp", "value"]:
        key, stamp, value = 0, 1, 2
    else:
        raise DataError(
            f"{path}: header {rows[0]!r}; expected 'timestamp,value' or 'series,timestamp,value' first"
        )
    series: dict[str, tuple[list[str], list[float]]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < len(header):
            raise DataError(f"{path}: line {number} has {len(row)} columns; the header has {len(header)}")
        try:
            number_value = float(row[value])
        except ValueError as exc:
            raise DataError(f"{path}: line {number}: value {row[value]!r} is not a number") from exc
        if not np.isfinite(number_value):
            raise DataError(f"{path}: line {number}: value {row[value]!r}; expected a finite number")
        stamps, values = series.setdefault(row[key] if key is not None else "series", ([], []))
        stamps.append(row[stamp])
        values.append(number_value)
    if not series:
        raise DataError(f"{path}: no data rows after the header")
    names = list(series)
    return names, [series[n][0] for n in names], [np.asarray(series[n][1], dtype=np.float64) for n in names]


def read_tsf(path: Path | str) -> tuple[list[str], list[str], list[np.ndarray], int]:
    """A Monash .tsf file: series names, start timestamps, values and the @horizon."""
    path = Path(path)
    names, starts, values, horizon = [], [], [], 0
    in_data = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower().startswith("@horizon"):
                horizon = int(line.split()[1])
            in_data = line.lower() == "@data"
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise DataError(f"{path}: line {number} has {len(parts)} ':'-fields; expected name:start:values")
        names.append(parts[0])
        starts.append(parts[1])
        values.append(np.array([float(v) for v in parts[2].split(",")], dtype=np.float64))
    if not names:
        raise DataError(f"{path}: no series after @data")
    return names, starts, values, horizon


def taylor() -> SeriesSet:
    names, stamps, values = read_series_csv(data_dir() / "taylor.csv")
    week = TAYLOR_WEEK
    return SeriesSet(
        names=["taylor"],
        values=values,
        timestamps=stamps,
        horizon=TAYLOR_DAY,
        season=week,
        lags=(TAYLOR_DAY,),
        periods=(float(TAYLOR_DAY),),
        step_seconds=1800.0,
        calendar_origin=datetime.fromisoformat(stamps[0][0]).isoformat(),
        train_end=[7 * week],
        validation=[Origin(0, 7 * week + TAYLOR_DAY * k) for k in range(7)],
        test=[Origin(0, 8 * week + TAYLOR_DAY * k) for k in range(28)],
        source="taylor",
    )


def held_out_last(
    names: list[str], stamps: list[list[str]], values: list[np.ndarray], horizon: int, source: str, **model
) -> SeriesSet:
    """Each series' last `horizon` values test, the `horizon` before them validate, the rest train."""
    short = [name for name, v in zip(names, values, strict=True) if len(v) < 2 * horizon + 2]
    if short:
        raise DataError(
            f"{source}: series {short[0]!r} is too short for horizon {horizon}; expected at least "
            f"{2 * horizon + 2} values (train, validation and test)"
        )
    return SeriesSet(
        names=names,
        values=values,
        timestamps=stamps,
        horizon=horizon,
        train_end=[len(v) - 2 * horizon for v in values],
        validation=[Origin(i, len(v) - 2 * horizon) for i, v in enumerate(values)],
        test=[Origin(i, len(v) - horizon) for i, v in enumerate(values)],
        source=source,
        **model,
    )


def m1_yearly() -> SeriesSet:
    names, starts, values, horizon = read_tsf(data_dir() / "m1_yearly_dataset.tsf")
    return held_out_last(names, [[s] for s in starts], values, horizon, "m1_yearly", season=1)


def calendar_for(stamps: list[list[str]]) -> dict:
    """Season, lags, periods and the calendar from the spacing of the first series' first two timestamps:
    half-hourly and hourly data get a daily and a weekly cycle, daily data a weekly one; anything else
    none. Phase 0 is the Monday midnight on or before the earliest first timestamp."""
    try:
        first, second = (datetime.fromisoformat(s) for s in stamps[0][:2])
        starts = [datetime.fromisoformat(series[0]) for series in stamps]
    except (ValueError, TypeError, IndexError):
        return {"season": 1}
    step_seconds = int((second - first).total_seconds())
    day = {1800: 48, 3600: 24, 86400: 1}.get(step_seconds)
    if day is None:
        return {"season": 1}
    week = 7 * day
    earliest = min(starts)
    origin = datetime(earliest.year, earliest.month, earliest.day) - timedelta(days=earliest.weekday())
    phases = [((start - origin).total_seconds() / step_seconds) % week for start in starts]
    calendar = {"step_seconds": float(step_seconds), "calendar_origin": origin.isoformat(), "phases": phases}
    if day == 1:
        return {"season": week, "periods": (float(week),), **calendar}
    return {"season": week, "lags": (day,), "periods": (float(day), float(week)), **calendar}


def load_series(
    dataset: str | None = None, data_file: Path | str | None = None, horizon: int = 0
) -> SeriesSet:
    if dataset == "taylor":
        return taylor()
    if dataset == "m1_yearly":
        return m1_yearly()
    if dataset is not None:
        raise DataError(f"forecast dataset {dataset!r} is not one of {', '.join(FORECAST_DATASETS)}")
    if data_file is None:
        raise DataError("give a forecast dataset (taylor, m1_yearly) or a CSV file")
    names, stamps, values = read_series_csv(data_file)
    model = calendar_for(stamps)
    return held_out_last(names, stamps, values, horizon or model["season"], str(data_file), **model)
