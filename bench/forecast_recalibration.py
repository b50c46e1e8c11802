"""Nightly recalibration of a Taylor forecaster's intervals (`seqserve recalibrate`), replayed: at each
midnight, the job's factor is measured on the history up to it (every origin in its last WINDOW
half-hours) and the day-ahead forecast from that midnight is scored with it.

The window is chosen before the test: each window from one to seven days is replayed over the midnights of
weeks 4 to 8, and the one whose 80 % intervals cover nearest 80 % there is the one reported on the 28
test midnights (weeks 9 to 12, the forecasts training scores). The intervals fixed after training (the
version as exported, calibrated on week 8) are scored beside it. The mean forecast is the same in every
row; only the intervals change.

`make bench` runs it on the run the forecast-accuracy section trained; alone, on a trained run:

    python -m bench.forecast_recalibration runs/taylor-gru
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from bench.report import TextTable, print_and_write

DAY = 48
WINDOW_DAYS = (1, 2, 3, 4, 5, 6, 7)
CHOOSING_DAYS = range(21, 56)  # the midnights of weeks 4-8, every one with a week of history before it
TEST_DAYS = range(56, 84)  # weeks 9-12: training/series.py's Taylor test origins
TARGET = 0.8
Z80 = NormalDist().inv_cdf(0.9)
PICTURE = Path(__file__).parents[1] / "docs" / "img" / "forecast_taylor_recalibrated.png"
RESULTS = Path(__file__).parent / "results" / "forecast_recalibration.json"


@dataclass
class WindowRow:
    window: int  # half-hours
    choosing_coverage_80: float  # weeks 4-8
    test_coverage_80: float
    test_weighted_quantile_loss: float
    test_coverage_80_by_quarter: list[float]  # steps 1-12, 13-24, 25-36, 37-48


def _day_scores(
    truth: np.ndarray, loc: np.ndarray, scale: np.ndarray, factors: np.ndarray
) -> dict[str, float]:
    from seqserve.training import forecast_metrics as fm

    levels = fm.QUANTILE_LEVELS
    z = np.array([NormalDist().inv_cdf(level) for level in levels])
    quantiles = loc[None] + z[:, None, None] * (factors[:, None] * scale)[None]
    low, high = levels.index(0.1), levels.index(0.9)
    inside = (quantiles[low] <= truth) & (truth <= quantiles[high])
    return {
        "coverage_80": fm.coverage(truth, quantiles[low], quantiles[high]),
        "coverage_80_by_quarter": [float(q.mean()) for q in np.array_split(inside, 4, axis=1)],
        "weighted_quantile_loss": fm.weighted_quantile_loss(truth, quantiles, levels),
        "mape": fm.mape(truth, loc),
    }


@dataclass
class ForecastRecalibration:
    """The section `make bench` reports: the fixed intervals, every window, and the chosen window's test."""

    fixed: dict[str, float]  # the exported version's intervals on the test midnights
    rows: list[WindowRow]
    # The first test week with the chosen window's intervals, for the picture (not in the JSON):
    # history (two days), then loc, the 80 % band and the truth of the seven day-ahead forecasts.
    first_week: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    key: str = "forecast_recalibration"

    @property
    def chosen(self) -> WindowRow:
        return min(self.rows, key=lambda row: abs(row.choosing_coverage_80 - TARGET))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixed": self.fixed,
            "rows": [asdict(row) for row in self.rows],
            "chosen_window": self.chosen.window,
            "ratios": self.ratios(),
        }

    def ratios(self) -> dict[str, float]:
        return {
            "forecast_taylor_coverage_fixed": round(self.fixed["coverage_80"], 4),
            "forecast_taylor_coverage_recalibrated": round(self.chosen.test_coverage_80, 4),
        }

    def targets(self) -> dict[str, tuple[str, float]]:
        return {}  # the coverage target is reported in docs/forecasting.md

    def tables(self) -> list[TextTable]:
        def quarters(coverages: list[float]) -> str:
            return " / ".join(f"{100 * c:.0f}" for c in coverages)

        fixed = self.fixed
        body = [(
            "fixed after training (week 8)", "", f"{100 * fixed['coverage_80']:.1f} %",
            quarters(fixed["coverage_80_by_quarter"]), f"{fixed['weighted_quantile_loss']:.4f}",
        )]  # fmt: skip
        for row in self.rows:
            mark = " (chosen)" if row is self.chosen else ""
            body.append((
                f"nightly, last {row.window // DAY} day(s){mark}", f"{100 * row.choosing_coverage_80:.1f} %",
                f"{100 * row.test_coverage_80:.1f} %", quarters(row.test_coverage_80_by_quarter),
                f"{row.test_weighted_quantile_loss:.4f}",
            ))  # fmt: skip
        header = ("intervals", "80 % coverage, weeks 4-8", "80 % coverage, test",
                  "test, by 6-hour quarter (%)", "test wQL")  # fmt: skip
        title = "Taylor's 80 % intervals: fixed after training, or recalibrated each midnight"
        return [TextTable(title, header, body)]


def measure(run_dir: Path, work: Path) -> ForecastRecalibration:
    from seqserve.export.forecast_job import export_forecaster
    from seqserve.export.recalibration import measure as factor_of
    from seqserve.export.recalibration import origin_forecasts
    from seqserve.service.offline import open_model
    from seqserve.training.series import load_series

    export_forecaster(run_dir, work / "repository", name="taylor")
    runtime = open_model(work / "repository", "taylor")
    values = load_series("taylor").values[0].astype(np.float32)
    # The series starts at the model's calendar origin (phase 0), which a start time of None gives.
    days = sorted({*CHOOSING_DAYS, *TEST_DAYS})
    forecasts = {d: origin_forecasts(runtime, values, None, range(d * DAY, d * DAY + 1), DAY) for d in days}
    truth = {d: values[d * DAY : (d + 1) * DAY][None] for d in days}

    def scored(chosen_days: range, factors: dict[int, float]) -> dict[str, float]:
        loc, scale = (np.concatenate([forecasts[d][part] for d in chosen_days]) for part in (0, 1))
        truths = np.concatenate([truth[d] for d in chosen_days])
        return _day_scores(truths, loc, scale, np.array([factors[d] for d in chosen_days]))

    rows, factors_by_window = [], {}
    for window_days in WINDOW_DAYS:
        window = window_days * DAY
        factors = {d: factor_of(runtime, [(values[: d * DAY], None)], window).factor for d in days}
        factors_by_window[window] = factors
        test = scored(TEST_DAYS, factors)
        rows.append(WindowRow(
            window, round(scored(CHOOSING_DAYS, factors)["coverage_80"], 4), round(test["coverage_80"], 4),
            round(test["weighted_quantile_loss"], 5), [round(q, 4) for q in test["coverage_80_by_quarter"]],
        ))  # fmt: skip
    fixed = scored(TEST_DAYS, dict.fromkeys(days, 1.0))
    fixed = {k: [round(q, 4) for q in v] if isinstance(v, list) else round(v, 5) for k, v in fixed.items()}
    section = ForecastRecalibration(fixed, rows)
    week = TEST_DAYS[:7]
    factors = factors_by_window[section.chosen.window]
    loc = np.concatenate([forecasts[d][0][0] for d in week])
    half = np.concatenate([Z80 * factors[d] * forecasts[d][1][0] for d in week])
    section.first_week = {
        "history": values[(week[0] - 2) * DAY : week[0] * DAY],
        "loc": loc,
        "low": loc - half,
        "high": loc + half,
        "truth": np.concatenate([truth[d][0] for d in week]),
    }
    return section


def plot_first_week(section: ForecastRecalibration, path: Path) -> None:
    from seqserve.training.forecast_plots import plot_forecast

    week = section.first_week
    days = section.chosen.window // DAY
    plot_forecast(
        week["history"], week["loc"], week["low"], week["high"], path, week["truth"],
        title=f"taylor: first test week, a day-ahead forecast from each midnight, 80 % band recalibrated "
        f"each midnight on the last {days} days",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run", type=Path, help="a Taylor forecaster's run folder (seqserve train --task forecast)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PICTURE, help="the first test week's picture (.png)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqserve-recalibration-") as work:
        section = measure(args.run, Path(work))
    print_and_write(section, args.out)
    plot_first_week(section, args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
