"""Training a forecaster and writing its run folder.

Training windows: a forecast origin o is drawn from a series' training part (o > the model's memory where
the series allows, so the seasonal lags are real values); its state is warmed from the values before
o - context (lags, count, clock, level; h zero), the `context` values before o are read teacher-forced,
and the loss is the Gaussian negative log-likelihood, in units of the series scale, of the `horizon`
values from o under the fed-back mean rollout (`forecaster.rollout`): the same forecast that evaluation,
the export and the server make. Targets past the training part are masked. AdamW with a linear warm-up and
a cosine decay, gradient clipping, early stopping on the validation loss (the same rollout likelihood on
every validation origin's horizon, each series read from its start), the best epoch's weights kept, the
untrained ones (epoch 0) included.

Calibration, after training: on the validation part of every series (from its first validation origin to
its first test value; Taylor: week 8), the uncalibrated rollout from every origin there, and at each step k
of the horizon the ratio |truth - loc| / scale over the origins whose k steps of truth lie inside the part.
m_k = the ratio's 80 % quantile / Phi^-1(0.9), so that loc +- Phi^-1(0.9) * m_k * scale covers 80 % of the
validation errors at step k; the m_k are then fitted non-decreasing in k (pool-adjacent-violators, each
step weighted by its origins) and stored in the config (`scale_by_horizon`; past the horizon
`scale_beyond` "sqrt": m_K * sqrt(k / K)), so the checkpoint, the export and every forecast carry them.

Evaluation: every origin's history is read from the start of its series, then rolled out; the forecast mean
is the rollout's loc, its quantiles loc + m_k * scale * Phi^-1(q). The seasonal naive (the last season
repeated, intervals from its in-sample residual quantiles) is scored on the same origins. CPU time is
measured with resource.getrusage beside wall time.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from seqserve.training import forecast_metrics as fm
from seqserve.training.forecaster import (
    Forecaster,
    ForecasterConfig,
    Step,
    checkpoint_payload,
    forecast,
    nll,
    parameter_count,
    quantiles,
    rollout,
    warm_state,
)
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE
from seqserve.training.series import Origin, SeriesSet, load_series

logger = logging.getLogger(__name__)
CALIBRATION_LEVEL = 0.8  # the central interval whose validation coverage the scale multipliers set
CALIBRATION_BATCH = 512  # origins rolled out at once while calibrating


@dataclass
class ForecastTrainConfig:
    """Everything `seqserve train --task forecast` takes; the defaults are the budget README figures use."""

    out: Path
    dataset: str | None = None
    data: Path | None = None
    horizon: int = 0  # a CSV's horizon (0: its season); the shipped sets fix their own
    cell: str = "gru"
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
    context: int = 96  # teacher-forced steps before each training window's origin
    batch_size: int = 32
    batches_per_epoch: int = 50
    epochs: int = 30
    patience: int = 10
    lr: float = 1e-3
    warmup: float = 0.05  # share of all optimiser steps spent warming the learning rate up
    weight_decay: float = 1e-4
    clip: float = 1.0
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def naive_unit(data: SeriesSet) -> float:
    """Mean over series of the training part's mean |y_t - y_{t-m}| / mean |y|: the model's `unit`."""
    ratios = []
    for values, end in zip(data.values, data.train_end, strict=True):
        train = values[:end]
        if len(train) > data.season and np.abs(train).mean() > 0:
            ratios.append(np.abs(train[data.season :] - train[: -data.season]).mean() / np.abs(train).mean())
    unit = float(np.mean(ratios)) if ratios else 1.0
    return unit if unit > 0 else 1.0


def build_model(config: ForecastTrainConfig, data: SeriesSet) -> Forecaster:
    return Forecaster(
        ForecasterConfig(
            cell=config.cell,
            hidden=config.hidden,
            layers=config.layers,
            lags=data.lags,
            periods=data.periods,
            season=data.season,
            unit=naive_unit(data),
            dropout=config.dropout,
            step_seconds=data.step_seconds,
            calendar_origin=data.calendar_origin,
        )
    )


@dataclass
class Windows:
    """A batch of training windows: context values (right-padded), their lengths, the warmed state before
    them, and the horizon's targets with the mask of those inside the training part."""

    context: torch.Tensor  # [B, C]
    lengths: torch.Tensor  # [B]
    state: dict
    target: torch.Tensor  # [B, H]
    mask: torch.Tensor  # [B, H] bool


def _window_batch(
    model: Forecaster, data: SeriesSet, config: ForecastTrainConfig, rng: np.random.Generator
) -> Windows:
    """`batch_size` random windows, origins drawn uniformly over every series' training part."""
    ends = np.asarray(data.train_end)
    lows = np.clip(model.config.memory + 1, 1, np.maximum(ends - 1, 1))
    counts = np.maximum(ends - lows, 1)
    series = rng.choice(len(ends), size=config.batch_size, p=counts / counts.sum())
    origins = [int(rng.integers(lows[i], max(ends[i], lows[i] + 1))) for i in series]
    horizon = data.horizon
    context = np.zeros((config.batch_size, config.context))
    target = np.zeros((config.batch_size, horizon))
    mask = np.zeros((config.batch_size, horizon), dtype=bool)
    lengths, states = [], []
    for row, (i, o) in enumerate(zip(series, origins, strict=True)):
        values = data.values[i]
        start = max(0, o - config.context)
        context[row, : o - start] = values[start:o]
        lengths.append(o - start)
        inside = values[o : min(o + horizon, ends[i])]
        target[row, : len(inside)] = inside
        mask[row, : len(inside)] = True
        states.append(warm_state(model, values[None, :start], data.phase(i)))
    state = {
        key: torch.cat([s[key] for s in states], dim=1 if key in ("h0", "c0") else 0) for key in states[0]
    }
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Windows(
        as_tensor(context), torch.as_tensor(lengths), state, as_tensor(target), torch.as_tensor(mask)
    )


def window_loss(model: Forecaster, windows: Windows, horizon: int) -> torch.Tensor:
    """Teacher forcing over the context, then the rollout likelihood of the horizon's targets."""
    step, state = model(windows.context, windows.state, windows.lengths)
    predicted = rollout(model, state, step.at((windows.lengths - 1).unsqueeze(1)), horizon, calibrated=False)
    return nll(predicted, windows.target)[windows.mask].mean()


def _padded(histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(h) for h in histories)
    y = np.zeros((len(histories), longest), dtype=np.float32)
    for row, h in enumerate(histories):
        y[row, : len(h)] = h
    return torch.as_tensor(y), torch.as_tensor([len(h) for h in histories])


@torch.no_grad()
def forecast_origins(
    model: Forecaster, data: SeriesSet, origins: list[Origin], calibrated: bool = True
) -> Step:
    """The rollout [origins, horizon] of every origin, each from its whole history (`calibrated`: the
    scale multiplied by the model's m_k, as `forecaster.rollout`)."""
    model.eval()
    y, lengths = _padded([data.values[o.series][: o.start] for o in origins])
    phases = torch.tensor([[data.phase(o.series)] for o in origins], dtype=torch.float32)
    return forecast(model, y, data.horizon, lengths, model.initial_state(len(origins), phases), calibrated)


def _truth(data: SeriesSet, origins: list[Origin]) -> np.ndarray:
    return np.stack([data.values[o.series][o.start : o.start + data.horizon] for o in origins])


@torch.no_grad()
def validation_loss(model: Forecaster, data: SeriesSet, origins: list[Origin]) -> float:
    """The rollout's NLL of every origin's horizon values, each series read from its start."""
    predicted = forecast_origins(model, data, origins, calibrated=False)
    return float(nll(predicted, torch.as_tensor(_truth(data, origins), dtype=torch.float32)).mean())


def validation_spans(data: SeriesSet) -> list[tuple[int, int, int]]:
    """(series, first, end) of every series' validation part: from its first validation origin up to its
    first test origin (or its last value)."""
    spans = []
    for series in sorted({o.series for o in data.validation}):
        first = min(o.start for o in data.validation if o.series == series)
        tests = [o.start for o in data.test if o.series == series]
        spans.append((series, first, min(tests, default=len(data.values[series]))))
    return spans


def non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of `values` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (mean2, weight2, length2), (mean1, weight1, length1) = blocks.pop(), blocks.pop()
            total = weight1 + weight2
            blocks.append([(mean1 * weight1 + mean2 * weight2) / total, total, length1 + length2])
    return np.array([mean for mean, _, length in blocks for _ in range(int(length))])


def calibrate(model: Forecaster, data: SeriesSet) -> dict:
    """The rollout's scale multipliers m_1 .. m_horizon measured on the validation part (module docstring):
    {'scale_by_horizon', 'measured' (before the non-decreasing fit), 'origins' (per step)}; empty lists
    where the validation part holds no origin."""
    spans = validation_spans(data)
    origins = [Origin(series, o) for series, first, end in spans for o in range(first, end)]
    if not origins:
        return {"scale_by_horizon": [], "measured": [], "origins": []}
    ends = np.array([end for _, first, end in spans for _ in range(first, end)])[:, None]
    index = np.array([o.start for o in origins])[:, None] + np.arange(data.horizon)[None, :]
    seen = index < ends  # step k's truth lies inside the validation part
    truth = np.stack(
        [data.values[o.series][row] for o, row in zip(origins, np.minimum(index, ends - 1), strict=True)]
    )
    ratio = np.empty(index.shape)
    for at in range(0, len(origins), CALIBRATION_BATCH):
        rows = slice(at, at + CALIBRATION_BATCH)
        predicted = forecast_origins(model, data, origins[rows], calibrated=False)
        ratio[rows] = np.abs(truth[rows] - predicted.loc.numpy()) / predicted.scale.numpy()
    counts = seen.sum(axis=0)
    steps = int(np.flatnonzero(counts)[-1]) + 1
    z = NormalDist().inv_cdf(0.5 + CALIBRATION_LEVEL / 2)
    measured = np.array([np.quantile(ratio[seen[:, k], k], CALIBRATION_LEVEL) / z for k in range(steps)])
    return {
        "scale_by_horizon": [round(float(m), 6) for m in non_decreasing(measured, counts[:steps])],
        "measured": [round(float(m), 6) for m in measured],
        "origins": counts[:steps].tolist(),
    }


def _learning_rate(config: ForecastTrainConfig, step: int, total: int) -> float:
    """Linear warm-up over `warmup` of the steps, then a cosine decay to a tenth of `lr`."""
    warm = max(1, int(config.warmup * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(model: Forecaster, data: SeriesSet, config: ForecastTrainConfig) -> dict:
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    max_norm = config.clip if config.clip > 0 else math.inf
    total = config.epochs * config.batches_per_epoch
    # Epoch 0, the untrained model (the seasonal naive corrected by its current error), is a candidate too.
    best, best_epoch, step = validation_loss(model, data, data.validation), 0, 0
    history = [{"epoch": 0, "validation_loss": best}]
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses, norms = [], []
        for _ in range(config.batches_per_epoch):
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(config, step, total)
            loss = window_loss(model, _window_batch(model, data, config, rng), data.horizon)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            optimiser.step()
            losses.append(loss.item())
            step += 1
        val = validation_loss(model, data, data.validation)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "validation_loss": val,
                "grad_norm_mean": float(np.mean(norms)),
                "grad_norm_max": float(np.max(norms)),
            }
        )
        logger.info(
            "epoch %d: train %.4f validation %.4f grad norm %.2f",
            epoch,
            history[-1]["train_loss"],
            val,
            history[-1]["grad_norm_mean"],
        )
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return {"history": history, "best_epoch": best_epoch, "epochs": epoch, "validation_loss": best}


def evaluate(model: Forecaster, data: SeriesSet, origins: list[Origin]) -> dict:
    """The model's and the seasonal naive's scores on `origins`."""
    levels = fm.QUANTILE_LEVELS
    truth = _truth(data, origins)
    scales = np.array([fm.naive_scale(data.values[o.series][: o.start], data.season) for o in origins])
    predicted = forecast_origins(model, data, origins)
    model_q = quantiles(predicted, levels).numpy()
    model_scores = fm.scores(truth, predicted.loc.numpy(), model_q, levels, scales)
    naive = np.stack(
        [fm.seasonal_naive(data.values[o.series][: o.start], data.horizon, data.season) for o in origins]
    )
    residuals = [
        fm.residual_quantiles(data.values[o.series][: data.train_end[o.series]], data.season, levels)
        for o in origins
    ]
    naive_q = naive[None] + np.stack(residuals).T[:, :, None]
    result = {"model": model_scores, "seasonal_naive": fm.scores(truth, naive, naive_q, levels, scales)}
    if data.source == "taylor":
        daily = np.stack([fm.seasonal_naive(data.values[0][: o.start], data.horizon, 48) for o in origins])
        result["daily_naive_mape"] = fm.mape(truth, daily)
    return result


def train_forecaster(config: ForecastTrainConfig) -> dict:
    """Train, calibrate, test and write the run folder (checkpoint.pt, metrics.json, forecast.png)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data = load_series(config.dataset, config.data, config.horizon)
    model = build_model(config, data)
    logger.info(
        "training a %s forecaster on %s: %d series, %d parameters",
        config.cell,
        data.source,
        len(data.values),
        parameter_count(model),
    )
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    fitted = fit(model, data, config)
    calibration = calibrate(model, data)
    model.config = replace(model.config, scale_by_horizon=tuple(calibration["scale_by_horizon"]))
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    metrics = {
        "dataset": data.source,
        "task": "forecast",
        "horizon": data.horizon,
        "season": data.season,
        "series": len(data.values),
        "test_origins": len(data.test),
        "test": evaluate(model, data, data.test),
        "validation": evaluate(model, data, data.validation)["model"],
        "calibration": calibration | {"scale_beyond": model.config.scale_beyond},
        "train_cpu_seconds": round(cpu, 2),
        "train_wall_seconds": round(wall, 2),
        "parameters": parameter_count(model),
        "config": config.to_dict(),
        **fitted,
    }
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    reference = {
        "dataset": config.dataset,
        "data_file": str(Path(config.data).resolve()) if config.data else None,
        "horizon": config.horizon,
    }
    training = {k: v for k, v in metrics.items() if k != "history"}
    torch.save(
        checkpoint_payload(model, {"data": reference, "training": training}), run_dir / CHECKPOINT_FILE
    )
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if data.source == "taylor":
        from seqserve.training.forecast_plots import plot_test_week

        plot_test_week(model, data, run_dir / "forecast.png")
    return metrics
