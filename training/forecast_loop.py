"""Training a forecaster and writing its run folder.

Training windows: a window starts at a random step s of a series' training part (s >= the model's memory
where the series allows, so the lags are real values), its state warmed from the values before s (lags,
clock, level; h zero). The model reads `burn_in + window` values teacher-forced; the loss is the Gaussian
negative log-likelihood of the next value on the steps after the burn-in, in units of the series scale.
AdamW, gradient clipping, early stopping on the validation loss (the same likelihood on every validation
origin's horizon, the series read from its start), the best epoch's weights kept.

Evaluation: every origin's history is run from the start of its series; `samples` paths are then drawn
(`forecaster.sample_paths`, seeded), the forecast mean is their mean and the quantiles their empirical
quantiles. The seasonal naive (the last season repeated, intervals from its in-sample residual quantiles)
is scored on the same origins. CPU time is measured with resource.getrusage beside wall time.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from seqserve.training import forecast_metrics as fm
from seqserve.training.forecaster import (
    Forecaster,
    ForecasterConfig,
    checkpoint_payload,
    nll,
    parameter_count,
    sample_paths,
    warm_state,
)
from seqserve.training.loop import CHECKPOINT_FILE, METRICS_FILE
from seqserve.training.series import Origin, SeriesSet, load_series

logger = logging.getLogger(__name__)
WEIGHT_DECAY = 1e-4


@dataclass
class ForecastTrainConfig:
    """Everything `seqserve train --task forecast` takes; the defaults are the budget README figures use."""

    out: Path
    dataset: str | None = None
    data: Path | None = None
    horizon: int = 0  # a CSV's horizon (0: its season); the shipped sets fix their own
    cell: str = "gru"
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    burn_in: int = 48  # teacher-forced steps before the loss counts
    window: int = 96  # steps whose next value the loss scores
    batch_size: int = 32
    batches_per_epoch: int = 16
    epochs: int = 60
    patience: int = 10
    lr: float = 3e-3
    clip: float = 1.0
    samples: int = 200
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_model(config: ForecastTrainConfig, data: SeriesSet) -> Forecaster:
    return Forecaster(
        ForecasterConfig(
            cell=config.cell,
            hidden=config.hidden,
            layers=config.layers,
            lags=data.lags,
            periods=data.periods,
            season=data.season,
            dropout=config.dropout,
        )
    )


def _window_batch(
    model: Forecaster, data: SeriesSet, config: ForecastTrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """y [B, W], next values [B, W], loss mask [B, W] and the warmed state of `batch_size` random windows."""
    span = config.burn_in + config.window
    memory = model.config.memory
    ends = np.asarray(data.train_end)
    lows = np.minimum(memory, np.maximum(ends - span - 1, 0))
    highs = np.maximum(ends - span - 1, lows)
    series = rng.choice(len(ends), size=config.batch_size, p=(highs - lows + 1) / (highs - lows + 1).sum())
    starts = [int(rng.integers(lows[i], highs[i] + 1)) for i in series]
    y = np.zeros((config.batch_size, span))
    nxt = np.zeros((config.batch_size, span))
    mask = np.zeros((config.batch_size, span), dtype=bool)
    histories = []
    for row, (i, s) in enumerate(zip(series, starts, strict=True)):
        values = data.values[i]
        steps = min(span, ends[i] - 1 - s)
        y[row, :steps] = values[s : s + steps]
        nxt[row, :steps] = values[s + 1 : s + 1 + steps]
        mask[row, min(config.burn_in, steps - 1) : steps] = True
        histories.append(values[max(0, s - memory) : s])
    state = _warm_rows(model, [data.values[i][:s] for i, s in zip(series, starts, strict=True)])
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return as_tensor(y), as_tensor(nxt), torch.as_tensor(mask), state


def _warm_rows(model: Forecaster, histories: list[np.ndarray]) -> dict:
    rows = [warm_state(model, h[None, :]) for h in histories]
    return {key: torch.cat([r[key] for r in rows], dim=1 if key in ("h0", "c0") else 0) for key in rows[0]}


def _padded(histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(h) for h in histories)
    y = np.zeros((len(histories), longest), dtype=np.float32)
    for row, h in enumerate(histories):
        y[row, : len(h)] = h
    return torch.as_tensor(y), torch.as_tensor([len(h) for h in histories])


@torch.no_grad()
def validation_loss(model: Forecaster, data: SeriesSet, origins: list[Origin]) -> float:
    """Teacher-forced NLL of every origin's horizon values, each series read from its start."""
    model.eval()
    ends = [o.start + data.horizon for o in origins]
    y, lengths = _padded([data.values[o.series][: end - 1] for o, end in zip(origins, ends, strict=True)])
    step, _ = model(y, model.initial_state(len(origins)), lengths)
    losses = []
    for row, (o, end) in enumerate(zip(origins, ends, strict=True)):
        target = torch.as_tensor(data.values[o.series][o.start : end], dtype=torch.float32)
        cut = slice(o.start - 1, end - 1)
        part = type(step)(step.loc[row, cut], step.scale[row, cut], step.series_scale[row, cut])
        losses.append(nll(part, target).mean())
    return float(torch.stack(losses).mean())


@torch.no_grad()
def forecast_origins(
    model: Forecaster, data: SeriesSet, origins: list[Origin], samples: int, seed: int
) -> np.ndarray:
    """Sample paths [origins, samples, horizon], each from its whole history."""
    model.eval()
    histories = [data.values[o.series][: o.start] for o in origins]
    y, lengths = _padded(histories)
    step, state = model(y, model.initial_state(len(origins)), lengths)
    last = (lengths - 1).unsqueeze(1)
    final = type(step)(*(torch.gather(t, 1, last) for t in (step.loc, step.scale, step.series_scale)))
    return sample_paths(model, final, state, data.horizon, samples, seed)


def fit(model: Forecaster, data: SeriesSet, config: ForecastTrainConfig) -> dict:
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(config.seed)
    max_norm = config.clip if config.clip > 0 else math.inf
    history, best, best_state, best_epoch = [], math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses, norms = [], []
        for _ in range(config.batches_per_epoch):
            y, nxt, mask, state = _window_batch(model, data, config, rng)
            step, _ = model(y, state)
            loss = nll(step, nxt)[mask].mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            optimiser.step()
            losses.append(loss.item())
        val = validation_loss(model, data, data.validation)
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "validation_loss": val,
                "grad_norm_mean": float(np.mean(norms)),
            }
        )
        logger.info("epoch %d: train %.4f validation %.4f", epoch, history[-1]["train_loss"], val)
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "best_epoch": best_epoch, "epochs": len(history)}


def evaluate(model: Forecaster, data: SeriesSet, origins: list[Origin], samples: int, seed: int) -> dict:
    """The model's and the seasonal naive's scores on `origins`."""
    levels = fm.QUANTILE_LEVELS
    truth = np.stack([data.values[o.series][o.start : o.start + data.horizon] for o in origins])
    scales = np.array([fm.naive_scale(data.values[o.series][: o.start], data.season) for o in origins])
    paths = forecast_origins(model, data, origins, samples, seed)
    model_scores = fm.scores(truth, paths.mean(axis=1), np.quantile(paths, levels, axis=1), levels, scales)
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
    """Train, test and write the run folder (checkpoint.pt, metrics.json, forecast.png)."""
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
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    test = evaluate(model, data, data.test, config.samples, config.seed)
    metrics = {
        "dataset": data.source,
        "task": "forecast",
        "horizon": data.horizon,
        "season": data.season,
        "series": len(data.values),
        "test_origins": len(data.test),
        "test": test,
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

        plot_test_week(model, data, config.samples, config.seed, run_dir / "forecast.png")
    return metrics
