"""The horizon study: how a fed-back forecast degrades with the horizon, and whether its intervals say so.

From every step of a single series' test part that leaves `max_horizon` values of truth after it (for
Taylor: 1,009 origins, every half hour from the first test midnight), the model reads the history
teacher-forced and rolls out `max_horizon` steps (`forecaster.rollout`, calibrated: step k's scale times
the m_k measured on the validation part after training, m_K * sqrt(k / K) past the training horizon K;
the test origins here only report, they fit nothing). At each horizon k it scores the rollout's mean (MAE,
MAPE), its 80 % interval (mean width, the share of truths inside) and, beside them,
the teacher-forced one-step forecast of the same target values (the model's answer when the value before
each target is observed, not its own forecast) and the seasonal naive's. Outputs: horizon.json and
horizon.png in the study folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from seqserve import contract
from seqserve.training.forecaster import Forecaster, ForecastState, Step, from_payload, rollout
from seqserve.training.loop import CHECKPOINT_FILE
from seqserve.training.series import SeriesSet, load_series

logger = logging.getLogger(__name__)
RESULTS_FILE = "horizon.json"
PLOT_FILE = "horizon.png"
Z80 = NormalDist().inv_cdf(0.9)


@dataclass
class HorizonStudy:
    """Per horizon k = 1 .. max_horizon (index k - 1), over `origins` forecasts."""

    origins: int
    rollout_mae: np.ndarray
    rollout_mape: np.ndarray
    one_step_mae: np.ndarray  # teacher-forced, the same targets
    naive_mae: np.ndarray
    width_80: np.ndarray  # mean width of the 80 % interval
    coverage_80: np.ndarray
    scale_multiplier: np.ndarray  # m_k, the calibration the width includes

    def to_json(self) -> dict:
        return {"origins": self.origins} | {
            key: [round(float(v), 6) for v in getattr(self, key)]
            for key in (
                "rollout_mae",
                "rollout_mape",
                "one_step_mae",
                "naive_mae",
                "width_80",
                "coverage_80",
                "scale_multiplier",
            )
        }


def _single_series(data: SeriesSet) -> np.ndarray:
    if len(data.values) != 1:
        raise ValueError(
            f"{data.source} has {len(data.values)} series; the horizon study needs one long series "
            "(taylor, or a CSV of one series)"
        )
    return data.values[0]


@torch.no_grad()
def _states_at(
    model: Forecaster, values: np.ndarray, first: int, last: int, phase: float
) -> tuple[ForecastState, Step]:
    """The state after values[:o] and the answer at step o - 1, for every origin o in [first, last], stacked
    along the batch: the history read once up to `first`, then one observed value a step."""
    y = torch.as_tensor(values, dtype=torch.float32).unsqueeze(0)
    step, state = model(y[:, :first], model.initial_state(1, phase))
    states, answers = [state], [Step(step.loc[:, -1:], step.scale[:, -1:], step.series_scale[:, -1:])]
    for o in range(first, last):
        step, state = model(y[:, o : o + 1], state)
        states.append(state)
        answers.append(step)
    stacked = {key: torch.cat([s[key] for s in states], dim=1 if key in ("h0", "c0") else 0) for key in state}
    first_step = Step(
        *(torch.cat([getattr(a, k) for a in answers]) for k in ("loc", "scale", "series_scale"))
    )
    return stacked, first_step


def horizon_study(model: Forecaster, data: SeriesSet, max_horizon: int) -> HorizonStudy:
    values = _single_series(data)
    first, last = data.test[0].start, len(values) - max_horizon
    if last < first or first <= data.season:
        raise ValueError(
            f"{data.source}: a horizon of {max_horizon} steps leaves no test origin with its truth "
            f"({len(values) - first} test values)"
        )
    model.eval()
    # Every step from `first` on is an origin of the one-step answers; those leaving room are rolled out.
    states, answers = _states_at(model, values, first, last + max_horizon - 1, data.phase(0))
    origins = np.arange(first, last + 1)
    rows = slice(0, len(origins))
    with torch.no_grad():
        predicted = rollout(
            model,
            {key: s[:, rows] if key in ("h0", "c0") else s[rows] for key, s in states.items()},
            Step(answers.loc[rows], answers.scale[rows], answers.series_scale[rows]),
            max_horizon,
        )
    index = origins[:, None] + np.arange(max_horizon)[None, :]
    truth = values[index]
    loc, scale = predicted.loc.numpy(), predicted.scale.numpy()
    error = np.abs(truth - loc)
    # The teacher-forced one-step answer for target o + k is the answer at the step before it.
    one_step_error = np.abs(values[first:] - answers.loc[:, 0].numpy())[index - first]
    naive = values[index - data.season * (1 + np.arange(max_horizon) // data.season)[None, :]]
    return HorizonStudy(
        origins=len(origins),
        rollout_mae=error.mean(axis=0),
        rollout_mape=(error / np.abs(truth)).mean(axis=0) * 100,
        one_step_mae=one_step_error.mean(axis=0),
        naive_mae=np.abs(truth - naive).mean(axis=0),
        width_80=(2 * Z80 * scale).mean(axis=0),
        coverage_80=(np.abs(truth - loc) <= Z80 * scale).mean(axis=0),
        scale_multiplier=np.array(contract.scale_multipliers(model.config.calibration, max_horizon)),
    )


def run_horizon_study(run_dir: Path, out: Path, max_horizon: int = 336) -> HorizonStudy:
    """The study of the forecaster in `run_dir` on its own data; writes horizon.json and horizon.png."""
    payload = torch.load(Path(run_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model = from_payload(payload)
    reference = payload["data"]
    data = load_series(reference["dataset"], reference["data_file"], reference.get("horizon", 0))
    study = horizon_study(model, data, max_horizon)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(run_dir),
        "dataset": data.source,
        "max_horizon": max_horizon,
        "step_seconds": data.step_seconds,
        **study.to_json(),
    }
    (out / RESULTS_FILE).write_text(json.dumps(result, indent=2))
    from seqserve.training.forecast_plots import plot_horizon_study

    plot_horizon_study(
        study, data.step_seconds, out / PLOT_FILE, title=f"{data.source}, {study.origins} origins"
    )
    return study
