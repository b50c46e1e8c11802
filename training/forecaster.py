"""Forecaster: a probabilistic recurrent forecaster over raw observations, and nothing else.

It imports nothing from the training loop. A stream is one series of raw values; at every step the model
reads the value just observed and gives the distribution of the next one. Everything it needs from the
past is state, so a stream carries it and the exported graph takes and returns it (export/forecast_graph.py
computes exactly this forward pass):

    h (, c)  the recurrent state                           [layers, B, hidden]
    lags     the last L raw values, oldest first           [B, L], L = the longest lag (or the season)
    clock    steps observed so far                         [B, 1]
    level    running mean of |value| over those steps      [B, 1]

At step t of a chunk (value y_t, target y_{t+1}):

    s_t       = max((clock * level + sum_{u<=t} |y_u|) / (clock + t + 1), 1e-6)    per-series scale
    features  = [y_t / s_t, y_{t+1-l} / s_t for each lag l > 1,
                 sin, cos of 2 pi ((clock + t + 1) mod p) / p for each calendar period p]
    o_t       = rnn(features, h)
    loc_t     = s_t * (y_{t+1-m} / s_t + head_loc(o_t))        m: the season, so the seasonal naive is
    scale_t   = s_t * (softplus(head_scale(o_t)) + 1e-3)        where an untrained head starts

Before a stream has seen L values the missing lags read 0. The state after a chunk holds the last L values
(of the buffer followed by the chunk), clock + n and the updated running mean. Gaussian head: y_{t+1} ~
N(loc_t, scale_t^2). The period origin is the stream's first step: a stream (and a training series) starts
at phase 0 of every calendar period (for the Taylor data, Monday 00:00).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from seqserve.contract import CELLS
from seqserve.training.model import recurrent_layers

FORECAST = "forecast"  # payload["kind"] of a forecaster's checkpoint.pt
SCALE_FLOOR = 1e-6
SIGMA_FLOOR = 1e-3

ForecastState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ForecasterConfig:
    """Plain values that rebuild the model; stored in the checkpoint beside the state dict."""

    cell: str = "gru"
    hidden: int = 64
    layers: int = 1
    lags: tuple[int, ...] = ()  # extra seasonal lags (steps back from the target), each > 1
    periods: tuple[float, ...] = ()  # calendar periods in steps (sin/cos features)
    season: int = 1  # the skip: loc starts at the value `season` steps before the target
    dropout: float = 0.0
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
        object.__setattr__(self, "lags", tuple(int(lag) for lag in self.lags))
        object.__setattr__(self, "periods", tuple(float(period) for period in self.periods))

    @property
    def memory(self) -> int:
        """L: how many past raw values the state keeps."""
        return max((*self.lags, self.season, 1))

    @property
    def features(self) -> int:
        return 1 + len(self.lags) + 2 * len(self.periods)

    @property
    def directions(self) -> int:
        return 1

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("task", "bidirectional"):
            del data[key]
        data["lags"], data["periods"] = list(self.lags), list(self.periods)
        return data


@dataclass
class Step:
    """The model's answer for every step of a chunk: the next value's distribution, raw units."""

    loc: torch.Tensor  # [B, T]
    scale: torch.Tensor  # [B, T]
    series_scale: torch.Tensor  # [B, T] s_t, what the loss divides by


class Forecaster(nn.Module):
    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = recurrent_layers(
            config.cell, config.features, config.hidden, config.layers, config.dropout
        )
        self.head = nn.Linear(config.hidden, 2)

    def initial_state(self, batch: int) -> ForecastState:
        config = self.config
        zeros = torch.zeros(config.layers, batch, config.hidden)
        state = {"h0": zeros}
        if config.cell == "lstm":
            state["c0"] = zeros.clone()
        state["lags"] = torch.zeros(batch, config.memory)
        state["clock"] = torch.zeros(batch, 1)
        state["level"] = torch.zeros(batch, 1)
        return state

    def forward(
        self, y: torch.Tensor, state: ForecastState, lengths: torch.Tensor | None = None
    ) -> tuple[Step, ForecastState]:
        """y [B, T] raw values, state as `initial_state`; lengths [B] (>= 1) when rows are padded."""
        batch, steps = y.shape
        config = self.config
        memory = config.memory
        full = torch.cat([state["lags"], y], dim=1)  # [B, L + T]
        clock, level = state["clock"], state["level"]
        t1 = torch.arange(1, steps + 1, dtype=y.dtype)  # t + 1
        running = clock * level + torch.cumsum(y.abs(), dim=1)
        series_scale = torch.clamp(running / (clock + t1), min=SCALE_FLOOR)
        columns = [y]
        columns += [full[:, memory + 1 - lag : memory + 1 - lag + steps] for lag in config.lags]
        features = [column / series_scale for column in columns]
        for period in config.periods:
            angle = torch.fmod(clock + t1, period) * (2 * math.pi / period)
            features += [torch.sin(angle), torch.cos(angle)]
        x = torch.stack(features, dim=-1)
        rnn_state = (state["h0"], state["c0"]) if config.cell == "lstm" else state["h0"]
        if lengths is None or bool((lengths == steps).all()):
            out, new_rnn = self.rnn(x, rnn_state)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths.long(), batch_first=True, enforce_sorted=False
            )
            packed_out, new_rnn = self.rnn(packed, rnn_state)
            out, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
        head = self.head(out)
        skip = full[:, memory + 1 - config.season : memory + 1 - config.season + steps]
        loc = skip + series_scale * head[..., 0]
        scale = series_scale * (functional.softplus(head[..., 1]) + SIGMA_FLOOR)
        new_state = self._advance(state, y, full, lengths)
        new_state["h0"] = new_rnn[0] if config.cell == "lstm" else new_rnn
        if config.cell == "lstm":
            new_state["c0"] = new_rnn[1]
        return Step(loc, scale, series_scale), new_state

    def _advance(
        self, state: ForecastState, y: torch.Tensor, full: torch.Tensor, lengths: torch.Tensor | None
    ) -> ForecastState:
        """lags, clock and level after each row's last valid step."""
        batch, steps = y.shape
        n = (
            torch.full((batch, 1), steps, dtype=y.dtype)
            if lengths is None
            else lengths.reshape(-1, 1).to(y.dtype)
        )
        valid = torch.arange(steps).unsqueeze(0) < n
        total = (y.abs() * valid).sum(dim=1, keepdim=True)
        clock = state["clock"] + n
        level = (state["clock"] * state["level"] + total) / clock
        index = n.long() + torch.arange(self.config.memory).unsqueeze(0)
        return {"lags": torch.gather(full, 1, index), "clock": clock, "level": level}


def nll(step: Step, target: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of `target` [B, T] in units of the series scale (per element)."""
    z = (target - step.loc) / step.scale
    return 0.5 * z.square() + torch.log(step.scale / step.series_scale) + 0.5 * math.log(2 * math.pi)


def warm_state(model: Forecaster, history: np.ndarray) -> ForecastState:
    """The state after observing `history` [B, n] from the start of each series, without running the rnn:
    h stays zero, only lags, clock and level (what a training window starts from)."""
    batch, n = history.shape
    memory = model.config.memory
    state = model.initial_state(batch)
    padded = np.concatenate([np.zeros((batch, memory)), history], axis=1)
    state["lags"] = torch.as_tensor(padded[:, -memory:], dtype=torch.float32)
    state["clock"] = torch.full((batch, 1), float(n))
    state["level"] = torch.as_tensor(
        np.abs(history).mean(axis=1, keepdims=True) if n else np.zeros((batch, 1)), dtype=torch.float32
    )
    return state


@torch.no_grad()
def sample_paths(
    model: Forecaster, step: Step, state: ForecastState, horizon: int, samples: int, seed: int
) -> np.ndarray:
    """Sample paths [B, samples, horizon] from the last step's distribution and the state after it: each
    draw is fed back as the next observation. Every series draws from its own numpy Generator(seed),
    `samples` standard normals a step, so a series' paths do not depend on what else is in the batch and a
    server that draws the same way gives the same paths."""
    batch = step.loc.shape[0]
    rngs = [np.random.default_rng(seed) for _ in range(batch)]
    loc = step.loc[:, -1].repeat_interleave(samples)
    scale = step.scale[:, -1].repeat_interleave(samples)
    state = {
        key: value.repeat_interleave(samples, dim=1 if key in ("h0", "c0") else 0)
        for key, value in state.items()
    }
    paths = np.empty((batch * samples, horizon), dtype=np.float32)
    for k in range(horizon):
        noise = torch.as_tensor(
            np.concatenate([rng.standard_normal(samples) for rng in rngs]).astype(np.float32)
        )
        draw = loc + scale * noise
        paths[:, k] = draw.numpy()
        if k + 1 < horizon:
            nxt, state = model(draw.unsqueeze(1), state)
            loc, scale = nxt.loc[:, 0], nxt.scale[:, 0]
    return paths.reshape(batch, samples, horizon)


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
    config = dict(payload["config"])
    config["lags"], config["periods"] = tuple(config["lags"]), tuple(config["periods"])
    model = Forecaster(ForecasterConfig(**config))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model
