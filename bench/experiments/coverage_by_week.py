"""How wide each Taylor week wants a forecaster's 80 % intervals, and what calibrating on more weeks gives.

For a trained Taylor forecaster (a run folder's checkpoint.pt), the uncalibrated rollout from every origin
of each week (every half hour, 48 steps ahead, the history before it read from the start) and the ratio
r = |truth - loc| / scale at every step. A week's multiplier is the 80 % quantile of its ratios over
Phi^-1(0.9): the m that makes loc +- Phi^-1(0.9) m scale cover 80 % of that week's values. Then the test
coverage (the 28 midnight forecasts of weeks 9-12, as training/forecast_loop.py scores them) under
multipliers measured three ways on data before the test: week 8 alone per step (what training does),
weeks 2-8 per step, and weeks 2-8 pooled over the steps.

    seqserve train --task forecast --dataset taylor --out runs/taylor-gru
    python -m bench.experiments.coverage_by_week runs/taylor-gru [--json results/coverage_by_week.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from seqserve.training.forecast_loop import forecast_origins, non_decreasing
from seqserve.training.forecaster import from_payload
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.series import TAYLOR_DAY, TAYLOR_WEEK, Origin, SeriesSet, load_series

LEVEL = 0.8
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)


def ratios(model: torch.nn.Module, data: SeriesSet, origins: list[Origin]) -> np.ndarray:
    """|truth - loc| / scale of the uncalibrated rollout, [origins, horizon]."""
    with torch.no_grad():
        predicted = forecast_origins(model, data, origins, calibrated=False)
    truth = np.stack([data.values[o.series][o.start : o.start + data.horizon] for o in origins])
    return np.abs(truth - predicted.loc.numpy()) / predicted.scale.numpy()


def week_origins(week: int) -> list[Origin]:
    """Every origin of week `week` (1-based) whose 48 steps stay inside it."""
    first = (week - 1) * TAYLOR_WEEK
    return [Origin(0, o) for o in range(first, first + TAYLOR_WEEK - TAYLOR_DAY + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a Taylor forecaster's run folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = from_payload(torch.load(args.run / CHECKPOINT_FILE, weights_only=True))
    data = load_series("taylor")
    by_week = {week: ratios(model, data, week_origins(week)) for week in range(2, 13)}
    test = ratios(model, data, data.test)

    def covered(multipliers: np.ndarray | float) -> float:
        return float((test <= Z * multipliers).mean())

    def per_step(r: np.ndarray) -> np.ndarray:
        measured = np.quantile(r, LEVEL, axis=0) / Z
        return non_decreasing(measured, np.ones_like(measured))

    before_test = np.concatenate([by_week[week] for week in range(2, 9)])
    result = {
        "week_multiplier": {week: round(float(np.quantile(r, LEVEL) / Z), 3) for week, r in by_week.items()},
        "test_coverage": {
            "uncalibrated": covered(1.0),
            "week 8, per step": covered(per_step(by_week[8])),
            "weeks 2-8, per step": covered(per_step(before_test)),
            "weeks 2-8, pooled": covered(float(np.quantile(before_test, LEVEL) / Z)),
        },
    }
    print("multiplier each week wants (80 % of its values inside loc +- 1.28 m scale):")
    print("  " + "  ".join(f"week {w}: {m:.2f}" for w, m in result["week_multiplier"].items()))
    print("coverage of the 28 midnight test forecasts (weeks 9-12), multipliers measured on:")
    for name, value in result["test_coverage"].items():
        print(f"  {name:22s} {100 * value:5.1f} %")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
