"""What the forecasters score: `seqserve train --task forecast` at its default budget on Taylor's demand and
on M1 yearly, each beside the seasonal naive on the same test forecasts (training/forecast_loop.py computes
both; this section trains and reads its metrics.json).

Reported per data set: MAPE, MASE, the weighted quantile loss (q = 0.1 ... 0.9) and 80 % interval coverage
of the model and of the naive, and the training's CPU seconds (getrusage, one thread). `make bench` runs
it (bench/run.py); alone:

    python -m bench.forecast_accuracy [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.report import TextTable, print_and_write

DATASETS = ("taylor", "m1_yearly")
SCORES = ("mape", "mase", "weighted_quantile_loss", "coverage_80")
RESULTS = Path(__file__).parent / "results" / "forecast_accuracy.json"


@dataclass
class AccuracyRow:
    dataset: str
    forecaster: str  # "model" or "seasonal_naive"
    mape: float
    mase: float
    weighted_quantile_loss: float
    coverage_80: float
    train_cpu_s: float


def train_and_score(dataset: str, out: Path, epochs: int | None) -> list[AccuracyRow]:
    from seqserve.training.forecast_loop import ForecastTrainConfig, train_forecaster

    config = ForecastTrainConfig(out=out / dataset, dataset=dataset, threads=1)
    if epochs is not None:
        config.epochs = epochs
    metrics = train_forecaster(config)
    cpu = metrics["train_cpu_seconds"]
    return [
        AccuracyRow(dataset, who, *(round(float(metrics["test"][who][s]), 4) for s in SCORES), cpu)
        for who in ("model", "seasonal_naive")
    ]


@dataclass
class ForecastAccuracy:
    """The section `make bench` reports: rows, and the model over the naive on MASE per data set."""

    rows: list[AccuracyRow]
    key: str = "forecast_accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(row) for row in self.rows], "ratios": self.ratios()}

    def _score(self, dataset: str, who: str, score: str) -> float:
        (row,) = [r for r in self.rows if r.dataset == dataset and r.forecaster == who]
        return float(getattr(row, score))

    def ratios(self) -> dict[str, float]:
        return {
            f"forecast_{dataset}_mase_vs_naive": round(
                self._score(dataset, "model", "mase") / self._score(dataset, "seasonal_naive", "mase"), 3
            )
            for dataset in sorted({r.dataset for r in self.rows})
        }

    def targets(self) -> dict[str, tuple[str, float]]:
        return {}  # the forecasting targets are reported in docs/forecasting.md, on the default budget

    def tables(self) -> list[TextTable]:
        header = ["data", "forecaster", "MAPE %", "MASE", "wQL", "80 % coverage", "train CPU s"]
        body = [
            [r.dataset, r.forecaster, f"{r.mape:.2f}", f"{r.mase:.3f}", f"{r.weighted_quantile_loss:.4f}",
             f"{100 * r.coverage_80:.1f} %", f"{r.train_cpu_s:.0f}" if r.forecaster == "model" else ""]
            for r in self.rows
        ]  # fmt: skip
        title = "Forecasters at the default budget beside the seasonal naive (test forecasts)"
        return [TextTable(title, tuple(header), [tuple(row) for row in body])]


def measure(work: Path, epochs: int | None = None) -> ForecastAccuracy:
    return ForecastAccuracy([row for dataset in DATASETS for row in train_and_score(dataset, work, epochs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="cap the epochs (default: the training's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqserve-forecast-accuracy-") as work:
        section = measure(Path(work), args.epochs)
    print_and_write(section, args.out)


if __name__ == "__main__":
    main()
