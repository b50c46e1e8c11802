"""Exporting a forecaster run: build its graph, prove parity with PyTorch, write the version.

Parity: the Taylor history (or each series of the run's data) is run through PyTorch whole and through
onnxruntime in random chunks, state carried, and rows of different lengths batched together, then rolled
out over the model's horizon from random calendar phases (`OnnxForecaster.forecast` against
`training.forecaster.forecast`, both calibrated: step k's scale times the m_k that model.json's `forecast`
dict holds, `contract.scale_multipliers`); loc and scale are compared in units of the series scale (a raw
float32 loc near 30,000 MW has a spacing of 0.002, so an absolute 1e-5 would measure float32 itself), the
states h/c, count and clock as they are, lags and level in units of the series scale. Tolerance
`contract.PARITY_TOLERANCE`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export import repository as repo
from seqserve.export.forecast_graph import FORECAST_STATES, build_forecaster
from seqserve.export.runs import checked_parity, checkpoint_kind, claim_version, read_metrics
from seqserve.training.forecaster import Forecaster, forecast, from_payload
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.series import load_series

log = logging.getLogger(__name__)
PARITY_SERIES = 8
PARITY_STEPS = 800


class OnnxForecaster:
    """One onnxruntime session of a forecaster graph: chunks in, loc/scale and the new states out; and the
    forecast, the same deterministic mean rollout as `training.forecaster.rollout`, calibrated by
    model.json's scale multipliers."""

    def __init__(self, model_bytes: bytes, info: ModelInfo) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.info = info
        self.state_names = [*contract.state_inputs(info.cell), *(name for name, _ in FORECAST_STATES)]
        self.state_outputs = [*contract.state_outputs(info.cell), *(output for _, output in FORECAST_STATES)]

    def initial_states(self, batch: int, clock: float | np.ndarray = 0.0) -> dict[str, np.ndarray]:
        """`batch` streams that have observed nothing, their calendar clocks at `clock` (a scalar or [B])."""
        states = {
            name: np.zeros(self.info.state_shape(batch), np.float32)
            for name in contract.state_inputs(self.info.cell)
        }
        states[contract.INPUT_LAGS] = np.zeros((batch, self.info.forecast["memory"]), np.float32)
        states[contract.INPUT_COUNT] = np.zeros((batch, 1), np.float32)
        states[contract.INPUT_CLOCK] = np.broadcast_to(
            np.asarray(clock, np.float32).reshape(-1, 1), (batch, 1)
        ).copy()
        states[contract.INPUT_LEVEL] = np.zeros((batch, 1), np.float32)
        return states

    def step(
        self, y: np.ndarray, states: dict[str, np.ndarray], lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """y [B, T]; returns loc, scale [B, T] and the states after each row's last valid step."""
        if lengths is None:
            lengths = np.full(y.shape[0], y.shape[1], np.int32)
        feeds = {
            contract.INPUT_Y: y.astype(np.float32),
            contract.INPUT_LENGTHS: lengths.astype(np.int32),
            **states,
        }
        outputs = self.session.run([contract.OUTPUT_LOC, contract.OUTPUT_SCALE, *self.state_outputs], feeds)
        return outputs[0], outputs[1], dict(zip(self.state_names, outputs[2:], strict=True))

    def rollout(
        self, first_loc: np.ndarray, first_scale: np.ndarray, states: dict[str, np.ndarray], horizon: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """loc, scale [B, horizon] of the next values: step 0 is `first_*` [B] (the answer at the last
        observed step), each later step the graph's answer to the previous loc fed back as a one-step chunk
        from `states` (the states after the last observed step); step k's scale times m_k
        (`contract.scale_multipliers` of model.json's `forecast` dict)."""
        if horizon < 1:
            raise ValueError(f"horizon {horizon}; expected at least 1 step")
        locs, scales = [np.asarray(first_loc, np.float32)], [np.asarray(first_scale, np.float32)]
        for _ in range(horizon - 1):
            loc, scale, states = self.step(locs[-1][:, None], states)
            locs.append(loc[:, 0])
            scales.append(scale[:, 0])
        multipliers = np.asarray(contract.scale_multipliers(self.info.forecast, horizon), np.float32)
        return np.stack(locs, axis=1), np.stack(scales, axis=1) * multipliers

    def forecast(
        self,
        history: np.ndarray,
        horizon: int,
        lengths: np.ndarray | None = None,
        clock: float | np.ndarray = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """loc, scale [B, horizon] after `history` [B, T] (rows padded to `lengths`), each read from a
        stream's start at calendar phase `clock`: `training.forecaster.forecast` over onnxruntime."""
        batch, steps = history.shape
        lengths = np.full(batch, steps, np.int32) if lengths is None else np.asarray(lengths, np.int32)
        loc, scale, states = self.step(history, self.initial_states(batch, clock), lengths)
        rows = np.arange(batch)
        return self.rollout(loc[rows, lengths - 1], scale[rows, lengths - 1], states, horizon)


def _torch_run(model: Forecaster, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    with torch.no_grad():
        step, state = model(torch.as_tensor(y, dtype=torch.float32), model.initial_state(y.shape[0]))
    return (
        step.loc.numpy(),
        step.scale.numpy(),
        step.series_scale.numpy(),
        {k: v.numpy() for k, v in state.items()},
    )


def check_forecaster_parity(
    model: Forecaster, session: OnnxForecaster, series: list[np.ndarray], seed: int = 0
) -> dict:
    """Max differences between PyTorch (whole) and onnxruntime (random chunks; all rows batched with
    different lengths; and the forecast rollout after each row). Returns {'max_abs_diff', 'tolerance',
    'passed', ...}."""
    rng = np.random.default_rng(seed)
    worst = {"loc_scale": 0.0, "states": 0.0, "batched": 0.0}
    for values in series:
        y = values[None, :].astype(np.float32)
        loc, scale, unit, want = _torch_run(model, y)
        states, got_loc, got_scale, start = session.initial_states(1), [], [], 0
        while start < y.shape[1]:
            end = min(y.shape[1], start + int(rng.integers(1, 97)))
            chunk_loc, chunk_scale, states = session.step(y[:, start:end], states)
            got_loc.append(chunk_loc)
            got_scale.append(chunk_scale)
            start = end
        for got, ref in ((np.concatenate(got_loc, 1), loc), (np.concatenate(got_scale, 1), scale)):
            worst["loc_scale"] = max(worst["loc_scale"], float(np.max(np.abs(got - ref) / unit)))
        for name in session.state_names:
            # h and c are bounded by 1: absolute; raw values (lags, level) in units of the series scale.
            unit_of = unit[:, -1:] if name in (contract.INPUT_LAGS, contract.INPUT_LEVEL) else 1.0
            worst["states"] = max(worst["states"], float(np.max(np.abs(states[name] - want[name]) / unit_of)))
    lengths = np.array([len(v) for v in series], np.int32)
    padded = np.zeros((len(series), lengths.max()), np.float32)
    for row, values in enumerate(series):
        padded[row, : len(values)] = values
    loc, _, states = session.step(padded, session.initial_states(len(series)), lengths)
    for row, values in enumerate(series):
        alone_loc, _, alone = session.step(values[None, :].astype(np.float32), session.initial_states(1))
        worst["batched"] = max(
            worst["batched"],
            float(np.max(np.abs(loc[row, : len(values)] - alone_loc[0]) / np.abs(alone_loc[0]).max())),
        )
        for name in session.state_names:
            row_state = (
                states[name][:, row]
                if name in contract.state_inputs(session.info.cell)
                else states[name][row]
            )
            alone_state = (
                alone[name][:, 0] if name in contract.state_inputs(session.info.cell) else alone[name][0]
            )
            worst["batched"] = max(
                worst["batched"],
                float(np.max(np.abs(row_state - alone_state) / np.maximum(np.abs(alone_state), 1))),
            )
    worst["rollout"] = _rollout_difference(model, session, padded, lengths, rng)
    max_diff = max(worst.values())
    return {
        "max_abs_diff": max_diff,
        "tolerance": contract.PARITY_TOLERANCE,
        "passed": max_diff <= contract.PARITY_TOLERANCE,
        "relative_to": "series scale",
        **worst,
    }


def _rollout_difference(
    model: Forecaster,
    session: OnnxForecaster,
    padded: np.ndarray,
    lengths: np.ndarray,
    rng: np.random.Generator,
) -> float:
    """Max difference, in units of the series scale, between the PyTorch and onnxruntime forecasts of every
    row (batched, different lengths, random calendar phases) over the model's horizon (at least 8 steps)."""
    horizon = max(8, int(session.info.forecast.get("horizon") or 0))
    cycle = model.config.cycle
    clocks = rng.integers(0, cycle, size=len(lengths)).astype(np.float32) if cycle else np.zeros(len(lengths))
    with torch.no_grad():
        want = forecast(
            model,
            torch.as_tensor(padded),
            horizon,
            torch.as_tensor(lengths),
            model.initial_state(len(lengths), torch.as_tensor(clocks).reshape(-1, 1)),
        )
    loc, scale = session.forecast(padded, horizon, lengths, clocks)
    unit = want.series_scale.numpy()
    return max(
        float(np.max(np.abs(got - ref.numpy()) / unit)) for got, ref in ((loc, want.loc), (scale, want.scale))
    )


def forecaster_info(model: Forecaster, name: str, version: int, horizon: int) -> ModelInfo:
    config = model.config
    return ModelInfo(
        name=name,
        version=version,
        task=contract.FORECAST,
        cell=config.cell,
        layers=config.layers,
        hidden=config.hidden,
        bidirectional=False,
        features=1,
        labels=[],
        forecast={
            "lags": list(config.lags),
            "periods": list(config.periods),
            "season": config.season,
            "memory": config.memory,
            "horizon": horizon,
            "distribution": "normal",
            "step_seconds": config.step_seconds,
            "calendar_origin": config.calendar_origin,
            **config.calibration,
        },
    )


def parity_series(payload: dict) -> list[np.ndarray]:
    data = load_series(
        payload["data"]["dataset"], payload["data"]["data_file"], payload["data"].get("horizon", 0)
    )
    chosen = data.values[:: max(1, len(data.values) // PARITY_SERIES)][:PARITY_SERIES]
    return [v[:PARITY_STEPS] for v in chosen]


def is_forecaster_run(run_dir: Path) -> bool:
    return checkpoint_kind(run_dir) == contract.FORECAST


def export_forecaster(
    run_dir: Path, repository: Path, name: str | None = None, version: int | None = None, force: bool = False
) -> tuple[Path, ModelInfo]:
    """Build, check and write one forecaster run as a version of `repository`."""
    run_dir = Path(run_dir)
    repository, name, version = claim_version(run_dir, repository, name, version, force)
    payload = torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model = from_payload(payload)
    metrics = read_metrics(run_dir)
    info = forecaster_info(model, name, version, int(metrics.get("horizon", 0)))
    onnx_model = build_forecaster(model, info)
    session = OnnxForecaster(onnx_model.SerializeToString(), info)
    info.parity = checked_parity(
        run_dir,
        name,
        lambda: parity_series(payload),
        lambda series: check_forecaster_parity(model, session, series),
    )
    info.test_metrics = metrics.get("test", {})
    from seqserve.export.graph import set_metadata

    set_metadata(onnx_model, info)
    return repo.write_versions(repository, [repo.VersionFiles(onnx_model, info)], force=force)[0]
