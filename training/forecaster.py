"""Forecaster: a probabilistic recurrent forecaster over raw observations, and nothing else.

It imports nothing from the training loop. A stream is one series of raw values; at every step the model
reads the value just observed and gives the distribution of the next one. Everything it needs from the
past is state, so a stream carries it and the exported graph takes and returns it (export/forecast_graph.py
computes exactly this forward pass):

    h (, c)  the recurrent state                               [layers, B, hidden]
    lags     the last L raw values, oldest first               [B, L], L = memory
    count    steps observed so far                             [B, 1]
    clock    calendar phase of the next value to observe   [B, 1], in steps, mod the periods' cycle
    level    running mean of |value| over the observed steps   [B, 1]

At step t of a chunk (value y_t, target y_{t+1}; m the season, u the config's `unit`, lag(l) = y_{t+1-l},
the value l steps before the target; seen = count + t + 1, the values observed up to y_t):

    s_t       = max((count * level + sum_{i<=t} |y_i|) / seen, 1e-6)            per-series scale
    d_l       = (lag(l) - lag(l + m)) / (s_t u)  where seen >= l + m, else 0    the seasonal naive's error
    features  = [y_t / s_t, d_1, d_l for each extra lag l,                      (d_1: at the current step)
                 sin, cos of 2 pi ((clock + t + 1) mod p) / p for each calendar period p]  (the target's)
    o_t       = rnn(features, h)
    head      = W [o_t, features] + b                                           (a linear path beside the rnn)
    loc_t     = naive_t + s_t u head_loc,  naive_t = lag(m) where seen >= m, else y_t
    scale_t   = s_t u (softplus(head_scale) + 1e-3)

An untrained model (head_loc = d_1) forecasts the seasonal naive corrected by its current error, and a
scale of one `unit`: the training set's mean |y_t - y_{t-m}| / mean |y|. Rolled out, that is the naive plus
the error at the origin persisted over the horizon (Taylor's test weeks: MAPE 1.12 % against the naive's
2.15 %); training moves it where the data says. The state after a chunk holds the last L values (of the
buffer followed by the chunk), count + n, (clock + n) mod cycle and the updated running mean. Gaussian
head: y_{t+1} ~ N(loc_t, scale_t^2).

The calendar is independent of where a stream starts: `clock` starts at the stream's phase
(`calendar_clock`: steps since `calendar_origin`, a moment at phase 0 of every period, modulo the cycle),
0 for a stream that starts at the origin's phase.

A forecast is a deterministic mean rollout (`rollout`): from the state after the history, each step's loc
is fed back as the next observed value; the answer at step k is N(loc_k, (m_k scale_k)^2) and its quantiles
loc + m_k scale * Phi^-1(q). Training scores the rollout with m_k = 1, so the model's scale_k is the
k-step-ahead uncertainty only as far as the state can tell how far ahead it is (nothing in the state says
a value was fed back). m_k (`contract.scale_multipliers` of the config's `scale_by_horizon`, `scale_beyond`)
is measured after training on held-out data (forecast_loop.calibrate): the calibration of the rollout's
intervals per horizon step, not something the model knows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from seqserve import contract
from seqserve.contract import CELLS
from seqserve.training.model import recurrent_layers

FORECAST = "forecast"  # payload["kind"] of a forecaster's checkpoint.pt
SCALE_FLOOR = 1e-6
SIGMA_FLOOR = 1e-3
# softplus(SPREAD_BIAS) = 1: an untrained head's scale is one `unit` of the series scale.
SPREAD_BIAS = math.log(math.e - 1)

ForecastState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ForecasterConfig:
    """Plain values that rebuild the model; stored in the checkpoint beside the state dict."""

    cell: str = "gru"
    hidden: int = 64
    layers: int = 1
    lags: tuple[int, ...] = ()  # extra lags l >= 2 whose seasonal-naive error d_l is a feature
    periods: tuple[float, ...] = ()  # calendar periods in steps (sin/cos features)
    season: int = 1  # m: loc starts at the value m steps before the target (the seasonal naive)
    unit: float = 1.0  # typical |y_t - y_{t-m}| / mean |y| of the training data: the head's unit
    dropout: float = 0.0
    step_seconds: float = 0.0  # seconds between steps (0: unknown); with calendar_origin, a stream's clock
    calendar_origin: str = ""  # ISO timestamp at phase 0 of every period ("" without periods)
    # m_1 .. m_K, the rollout's scale multipliers per step measured after training (empty: all 1), and the
    # rule past K (contract.scale_multipliers).
    scale_by_horizon: tuple[float, ...] = ()
    scale_beyond: str = contract.SCALE_BEYOND[0]
    # What the exporter and model.json read off any model's config.
    task: str = field(default=FORECAST, init=False)
    bidirectional: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.hidden < 1 or self.layers < 1 or self.season < 1:
            raise ValueError(
                f"need hidden, layers, season >= 1; got {self.hidden}, {self.layers}, {self.season}"
            )
        if any(lag < 2 for lag in self.lags):
            raise ValueError(f"lags {self.lags} must each be >= 2 (lag 1 is the value itself)")
        if any(period <= 0 for period in self.periods):
            raise ValueError(f"periods {self.periods} must each be > 0")
        if not self.unit > 0:
            raise ValueError(f"unit {self.unit} must be > 0")
        object.__setattr__(self, "lags", tuple(int(lag) for lag in self.lags))
        object.__setattr__(self, "periods", tuple(float(period) for period in self.periods))
        object.__setattr__(self, "scale_by_horizon", tuple(float(m) for m in self.scale_by_horizon))
        contract.scale_multipliers(self.calibration, 1)  # raises on a bad multiplier or rule

    @property
    def memory(self) -> int:
        """L: how many past raw values the state keeps (each lag's value and the one a season before it)."""
        return max(lag + self.season for lag in (1, *self.lags))

    @property
    def cycle(self) -> int:
        return contract.calendar_cycle(self.periods)

    @property
    def features(self) -> int:
        return 2 + len(self.lags) + 2 * len(self.periods)

    @property
    def directions(self) -> int:
        return 1

    @property
    def calibration(self) -> dict:
        """The keys of model.json's `forecast` dict that contract.scale_multipliers reads."""
        return {"scale_by_horizon": list(self.scale_by_horizon), "scale_beyond": self.scale_beyond}

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("task", "bidirectional"):
            del data[key]
        data["lags"], data["periods"] = list(self.lags), list(self.periods)
        data["scale_by_horizon"] = list(self.scale_by_horizon)
        return data


@dataclass
class Step:
    """The model's answer for every step of a chunk (or of a rollout): the next value's distribution."""

    loc: torch.Tensor  # [B, T] raw units
    scale: torch.Tensor  # [B, T] raw units
    series_scale: torch.Tensor  # [B, T] s_t, what the loss divides by

    def at(self, index: torch.Tensor) -> Step:
        """The step at `index` [B, 1] of each row ([B, 1] tensors): a padded row's last valid step."""
        return Step(*(torch.gather(t, 1, index) for t in (self.loc, self.scale, self.series_scale)))


def lag_columns(full: torch.Tensor, memory: int, steps: int, lag: int) -> torch.Tensor:
    """lag(l) for every step: full[:, L + 1 - l : L + 1 - l + T] (full = the lags state, then the chunk)."""
    return full[:, memory + 1 - lag : memory + 1 - lag + steps]


class Forecaster(nn.Module):
    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = recurrent_layers(
            config.cell, config.features, config.hidden, config.layers, config.dropout
        )
        self.head = nn.Linear(config.hidden + config.features, 2)
        with torch.no_grad():  # the seasonal naive corrected by its current error, one unit of spread
            self.head.weight.zero_()
            self.head.weight[0, config.hidden + 1] = 1.0  # d_1's weight in head_loc
            self.head.bias.copy_(torch.tensor([0.0, SPREAD_BIAS]))

    def initial_state(self, batch: int, clock: float | torch.Tensor = 0.0) -> ForecastState:
        """The state of `batch` streams that have observed nothing; `clock` is their calendar phase."""
        config = self.config
        zeros = torch.zeros(config.layers, batch, config.hidden)
        state = {"h0": zeros}
        if config.cell == "lstm":
            state["c0"] = zeros.clone()
        state["lags"] = torch.zeros(batch, config.memory)
        state["count"] = torch.zeros(batch, 1)
        state["clock"] = torch.as_tensor(clock, dtype=torch.float32).expand(batch, 1).clone()
        state["level"] = torch.zeros(batch, 1)
        return state

    def forward(
        self, y: torch.Tensor, state: ForecastState, lengths: torch.Tensor | None = None
    ) -> tuple[Step, ForecastState]:
        """y [B, T] raw values, state as `initial_state`; lengths [B] (>= 1) when rows are padded."""
        steps = y.shape[1]
        config = self.config
        memory, season = config.memory, config.season
        full = torch.cat([state["lags"], y], dim=1)  # [B, L + T]
        count, level = state["count"], state["level"]
        t1 = torch.arange(1, steps + 1, dtype=y.dtype)  # t + 1
        seen = count + t1
        series_scale = torch.clamp((count * level + torch.cumsum(y.abs(), dim=1)) / seen, min=SCALE_FLOOR)
        unit = series_scale * config.unit
        lag = lambda back: lag_columns(full, memory, steps, back)  # noqa: E731
        errors = [
            torch.where(seen >= back + season, lag(back) - lag(back + season), torch.zeros_like(y)) / unit
            for back in (1, *config.lags)
        ]
        features = [y / series_scale, *errors]
        for period in config.periods:
            angle = torch.fmod(state["clock"] + t1, period) * (2 * math.pi / period)
            features += [torch.sin(angle), torch.cos(angle)]
        x = torch.stack(features, dim=-1)
        out, new_rnn = self._run_rnn(x, state, lengths)
        head = self.head(torch.cat([out, x], dim=-1))
        naive = torch.where(seen >= season, lag(season), y)
        loc = naive + unit * head[..., 0]
        scale = unit * (functional.softplus(head[..., 1]) + SIGMA_FLOOR)
        new_state = self._advance(state, y, full, lengths)
        new_state["h0"] = new_rnn[0] if config.cell == "lstm" else new_rnn
        if config.cell == "lstm":
            new_state["c0"] = new_rnn[1]
        return Step(loc, scale, series_scale), new_state

    def _run_rnn(
        self, x: torch.Tensor, state: ForecastState, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        steps = x.shape[1]
        rnn_state = (state["h0"], state["c0"]) if self.config.cell == "lstm" else state["h0"]
        if lengths is None or bool((lengths == steps).all()):
            return self.rnn(x, rnn_state)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.long(), batch_first=True, enforce_sorted=False)
        packed_out, new_rnn = self.rnn(packed, rnn_state)
        out, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
        return out, new_rnn

    def _advance(
        self, state: ForecastState, y: torch.Tensor, full: torch.Tensor, lengths: torch.Tensor | None
    ) -> ForecastState:
        """lags, count, clock and level after each row's last valid step."""
        batch, steps = y.shape
        n = (
            torch.full((batch, 1), steps, dtype=y.dtype)
            if lengths is None
            else lengths.reshape(-1, 1).to(y.dtype)
        )
        valid = torch.arange(steps).unsqueeze(0) < n
        total = (y.abs() * valid).sum(dim=1, keepdim=True)
        count = state["count"] + n
        clock = state["clock"] + n
        if self.config.cycle:
            clock = torch.fmod(clock, float(self.config.cycle))
        level = (state["count"] * state["level"] + total) / count
        index = n.long() + torch.arange(self.config.memory).unsqueeze(0)
        return {"lags": torch.gather(full, 1, index), "count": count, "clock": clock, "level": level}


def rollout(
    model: Forecaster, state: ForecastState, first: Step, horizon: int, calibrated: bool = True
) -> Step:
    """The forecast of the next `horizon` values as a deterministic mean rollout.

    `first` is the model's answer at the last observed step ([B, 1] tensors, or [B, T] whose last column is
    taken) and `state` the state after that step. Step k's loc is fed back as the value observed at step k,
    so the answer at step k + 1 follows from the model's own mean forecast; nothing is sampled. Returns
    loc, scale (and the series scale) [B, horizon]: step k's value ~ Normal(loc[:, k], scale[:, k]^2), the
    scale of step k multiplied by the config's m_k (`contract.scale_multipliers`) unless `calibrated` is
    False (the model's own scale: what training scores and calibration measures). Gradients flow through
    the fed-back values; wrap the call in torch.no_grad() to forecast."""
    if horizon < 1:
        raise ValueError(f"horizon {horizon}; expected at least 1 step")
    steps = [Step(first.loc[:, -1:], first.scale[:, -1:], first.series_scale[:, -1:])]
    for _ in range(horizon - 1):
        step, state = model(steps[-1].loc, state)
        steps.append(step)
    loc, scale, series_scale = (
        torch.cat([getattr(s, name) for s in steps], dim=1) for name in ("loc", "scale", "series_scale")
    )
    if calibrated:
        scale = scale * torch.tensor(contract.scale_multipliers(model.config.calibration, horizon))
    return Step(loc, scale, series_scale)


def forecast(
    model: Forecaster,
    history: torch.Tensor,
    horizon: int,
    lengths: torch.Tensor | None = None,
    state: ForecastState | None = None,
    calibrated: bool = True,
) -> Step:
    """Read `history` [B, T] (rows padded to `lengths`) from `state` (default: the streams' start, clock 0)
    teacher-forced, then `rollout` `horizon` steps from each row's last observed value (`calibrated` as
    there)."""
    batch, steps = history.shape
    state = model.initial_state(batch) if state is None else state
    step, after = model(history, state, lengths)
    last = (lengths.long() - 1 if lengths is not None else torch.full((batch,), steps - 1)).unsqueeze(1)
    return rollout(model, after, step.at(last), horizon, calibrated)


def quantiles(step: Step, levels: tuple[float, ...]) -> torch.Tensor:
    """loc + scale * Phi^-1(q) for each level: [levels, B, T]."""
    z = torch.tensor([NormalDist().inv_cdf(q) for q in levels])
    return step.loc.unsqueeze(0) + step.scale.unsqueeze(0) * z.reshape(-1, 1, 1)


def nll(step: Step, target: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of `target` [B, T] in units of the series scale (per element)."""
    z = (target - step.loc) / step.scale
    return 0.5 * z.square() + torch.log(step.scale / step.series_scale) + 0.5 * math.log(2 * math.pi)


def calendar_clock(start_time: datetime | str, forecast_info: dict) -> float:
    """A stream's initial `clock`: the calendar phase, in steps, of its first observation at `start_time`
    (a datetime or an ISO timestamp; naive ones read as UTC, as the origin is):
    ((start_time - calendar_origin) / step_seconds) mod the periods' cycle, with the keys of model.json's
    `forecast` dict. 0 for a model without a calendar. The server's contract.calendar_clock, from a datetime.
    """
    start = datetime.fromisoformat(start_time) if isinstance(start_time, str) else start_time
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return contract.calendar_clock(start.timestamp(), forecast_info)


def warm_state(model: Forecaster, history: np.ndarray, phase: float = 0.0) -> ForecastState:
    """The state after observing `history` [B, n] from the start of each series (whose first value is at
    calendar phase `phase`), without running the rnn: h stays zero, only lags, count, clock and level (what a
    training window starts from)."""
    batch, n = history.shape
    memory = model.config.memory
    state = model.initial_state(batch)
    padded = np.concatenate([np.zeros((batch, memory)), history], axis=1)
    state["lags"] = torch.as_tensor(padded[:, -memory:], dtype=torch.float32)
    state["count"] = torch.full((batch, 1), float(n))
    cycle = model.config.cycle
    state["clock"] = torch.full((batch, 1), float((phase + n) % cycle if cycle else phase + n))
    state["level"] = torch.as_tensor(
        np.abs(history).mean(axis=1, keepdims=True) if n else np.zeros((batch, 1)), dtype=torch.float32
    )
    return state


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_payload(model: Forecaster, extra: dict | None = None) -> dict:
    """What `checkpoint.pt` holds: tensors and plain values only, so `weights_only=True` loads it."""
    return {
        "format": "seqserve.checkpoint/1",
        "kind": FORECAST,
        "config": model.config.to_dict(),
        "labels": [],
        "state_dict": model.state_dict(),
        **(extra or {}),
    }


def from_payload(payload: dict) -> Forecaster:
    model = Forecaster(ForecasterConfig(**payload["config"]))  # lists become tuples in __post_init__
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model
