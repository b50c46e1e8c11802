"""Forecast accuracy and the seasonal-naive baselines it is judged against (NumPy only).

Every function takes the truth and forecasts of a set of origins as [origins, horizon] arrays:

- MAPE: mean of |y - mean| / |y|, in percent.
- MASE: mean |y - mean| over the mean in-sample |y_t - y_{t-m}| of each origin's history (m the season).
- weighted quantile loss: for each level q, 2 * sum pinball_q(y, forecast_q) / sum |y|; then the mean over
  the levels.
- coverage: the share of truths between two quantile forecasts.
"""

from __future__ import annotations

import numpy as np

QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def mape(truth: np.ndarray, point: np.ndarray) -> float:
    return float(np.mean(np.abs(truth - point) / np.abs(truth)) * 100)


def mae(truth: np.ndarray, point: np.ndarray) -> float:
    return float(np.mean(np.abs(truth - point)))


def naive_scale(history: np.ndarray, season: int) -> float:
    """Mean in-sample |y_t - y_{t-m}|: MASE's denominator for one series' history."""
    if len(history) <= season:
        raise ValueError(f"history of {len(history)} values is too short for season {season}")
    return float(np.mean(np.abs(history[season:] - history[:-season])))


def mase(truth: np.ndarray, point: np.ndarray, scales: np.ndarray) -> float:
    """Mean over origins of each origin's MAE over its own naive scale."""
    return float(np.mean(np.mean(np.abs(truth - point), axis=1) / scales))


def pinball(truth: np.ndarray, forecast: np.ndarray, level: float) -> np.ndarray:
    diff = truth - forecast
    return np.maximum(level * diff, (level - 1) * diff)


def weighted_quantile_loss(truth: np.ndarray, quantiles: np.ndarray, levels: tuple[float, ...]) -> float:
    """quantiles [levels, origins, horizon]."""
    total = np.abs(truth).sum()
    return float(np.mean([2 * pinball(truth, quantiles[i], q).sum() / total for i, q in enumerate(levels)]))


def coverage(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    return float(np.mean((truth >= lower) & (truth <= upper)))


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """y_{n+k} = y_{n+k-m*ceil((k+1)/m)}: the last season repeated."""
    steps = np.arange(horizon)
    return history[len(history) - season + steps % season]


def residual_quantiles(train: np.ndarray, season: int, levels: tuple[float, ...]) -> np.ndarray:
    """Empirical quantiles of the in-sample seasonal-naive residuals y_t - y_{t-m}: the naive's intervals."""
    return np.quantile(train[season:] - train[:-season], levels)


def scores(
    truth: np.ndarray, mean: np.ndarray, quantiles: np.ndarray, levels: tuple[float, ...], scales: np.ndarray
) -> dict[str, float]:
    """MAPE, MAE, MASE, weighted quantile loss and 80 % coverage (levels must include 0.1 and 0.9)."""
    low, high = levels.index(0.1), levels.index(0.9)
    return {
        "mape": mape(truth, mean),
        "mae": mae(truth, mean),
        "mase": mase(truth, mean, scales),
        "weighted_quantile_loss": weighted_quantile_loss(truth, quantiles, levels),
        "coverage_80": coverage(truth, quantiles[low], quantiles[high]),
    }
