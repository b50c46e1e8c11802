"""Recalibrating a forecaster's intervals on recent observations: `seqserve recalibrate` writes a new
version of the model, the same graph, whose model.json multiplies every per-step scale multiplier m_k by
one factor.

Why one factor: training measures how a fed-back forecast's error grows with the horizon (m_1 .. m_K on
held-out data, `training/forecast_loop.calibrate`), and that shape holds; the level does not. On Taylor's
demand the multiplier a week wants ranges from 0.9 to 1.67 from one week to the next
(`bench/experiments/coverage_by_week.py`), so intervals fixed after training cover 92 % of the calmer
test weeks where 80 % was asked. Run on the newest data (nightly, say), the job measures the factor that
makes the version's own intervals cover `level` of what followed each recent origin, and the servers pick
the new version up (`--poll-repository-s`): new streams and whole-history forecasts use it, streams open
on the old version keep theirs.

The recent origins are every step in the last `window` observations of each series whose whole horizon
(the K steps training measured) was observed. Each origin's forecast is the server's, through the same
`ModelRuntime` and rollout as `seqserve predict`: the history up to the window in one call, then one step
at a time keeping the state at each origin, then every origin rolled out together. The factor is the
`level` quantile of |truth - loc| / scale (scale as the version calibrates it) over every origin and
step, over the Normal's z for `level`; applying it again to the new version gives 1.

The default window is two of the model's longest calendar cycle or two horizons, whichever is longer (96
half-hours for Taylor). Chosen before the test: re-run at each midnight of Taylor's weeks 4 to 8, windows
of one to seven days gave 80 % intervals covering 75.9 % to 86.8 % of the next day, and two days came
nearest 80 % (79.8 %; `bench/forecast_recalibration.py` measures it, with the test weeks beside).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.export.errors import ExportInputError
from seqserve.service.engine import layout
from seqserve.service.engine.runtime import ModelRuntime
from seqserve.service.kinds.forecaster import clocked
from seqserve.service.offline import open_model, roll_out

DEFAULT_LEVEL = 0.8


@dataclass(frozen=True)
class Recalibration:
    factor: float  # what every m_k is multiplied by
    origins: int  # forecasts measured (over every series)
    horizon: int  # steps of each
    window: int
    level: float
    coverage_before: float  # of the `level` intervals, over every origin and step
    coverage_after: float

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


def measured_horizon(info: ModelInfo) -> int:
    """K: the steps whose multipliers training measured (the trained horizon when it measured none)."""
    forecast = info.forecast or {}
    return max(1, len(forecast.get("scale_by_horizon") or ()) or int(forecast.get("horizon") or 1))


def default_window(info: ModelInfo) -> int:
    periods = [float(p) for p in (info.forecast or {}).get("periods") or ()]
    return 2 * max(int(max(periods, default=0)), measured_horizon(info))


def origin_forecasts(
    runtime: ModelRuntime, values: np.ndarray, start_unix_s: float | None, origins: range, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """loc and calibrated scale [origins, horizon] of the forecast after `values[:o]` for each origin o
    (consecutive, the first at least 1), as the server answers it."""
    axes = tuple(state.batch_axis for state in runtime.declaration.states)
    states = layout.stack_states([clocked(runtime, runtime.zero_state, start_unix_s)], axes)
    first_loc, first_scale, rows = [], [], []
    for stop in origins:
        start = stop - 1 if rows else 0
        chunk = values[np.newaxis, start:stop].astype(np.float32)
        outputs, states = runtime.run((chunk,), states, np.array([stop - start], np.int32))
        first_loc.append(outputs[contract.OUTPUT_LOC][0, -1])
        first_scale.append(outputs[contract.OUTPUT_SCALE][0, -1])
        rows.append(tuple(s.copy() for s in layout.row_states(states, axes, 0)))
    loc, scale = roll_out(
        runtime, np.array(first_loc), np.array(first_scale), layout.stack_states(rows, axes), horizon
    )
    return loc, scale * np.asarray(contract.scale_multipliers(runtime.info.forecast, horizon), np.float32)


def measure(
    runtime: ModelRuntime,
    histories: list[tuple[np.ndarray, float | None]],
    window: int | None = None,
    level: float = DEFAULT_LEVEL,
) -> Recalibration:
    """The factor for `runtime`'s version from the recent origins of each (values, start_unix_s)."""
    info = runtime.info
    if info.task != contract.FORECAST:
        raise ExportInputError(f"model {info.name} is a {info.task} model; only forecasters are recalibrated")
    if not 0 < level < 1:
        raise ExportInputError(f"level {level}: expected an interval level inside (0, 1), e.g. 0.8")
    horizon, window = measured_horizon(info), window or default_window(info)
    if window < horizon:
        raise ExportInputError(
            f"window {window}: expected at least the {horizon} steps each recent forecast is scored over"
        )
    ratios = []
    for values, start_unix_s in histories:
        if not np.isfinite(values).all():
            raise ExportInputError("the history holds NaN or Inf values; expected finite observations")
        origins = range(max(1, len(values) - window), len(values) - horizon + 1)
        if len(origins) == 0:
            continue
        loc, scale = origin_forecasts(runtime, values, start_unix_s, origins, horizon)
        truth = np.stack([values[o : o + horizon] for o in origins])
        ratios.append(np.abs(truth - loc) / scale)
    if not ratios:
        raise ExportInputError(
            f"no series has more than {horizon} observations: each recent forecast needs its {horizon} "
            "steps observed"
        )
    ratio = np.concatenate(ratios)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    factor = float(np.quantile(ratio, level) / z)
    return Recalibration(
        factor=factor,
        origins=len(ratio),
        horizon=horizon,
        window=window,
        level=level,
        coverage_before=float((ratio <= z).mean()),
        coverage_after=float((ratio <= z * factor).mean()),
    )


def recalibrated_info(info: ModelInfo, recalibration: Recalibration, version: int, data: str) -> ModelInfo:
    """`info` as the next version: every m_k (all 1 when none were measured) times the factor."""
    forecast = dict(info.forecast or {})
    horizon = measured_horizon(info)
    multipliers = contract.scale_multipliers(forecast, horizon)
    forecast["scale_by_horizon"] = [round(m * recalibration.factor, 6) for m in multipliers]
    forecast["recalibration"] = {**recalibration.to_dict(), "from_version": info.version, "data": data}
    return dataclasses.replace(info, version=version, forecast=forecast, sha256="")


def recalibrate_version(
    repository: Path,
    model: str,
    data: Path,
    window: int | None = None,
    level: float = DEFAULT_LEVEL,
    version: int = 0,
) -> tuple[Path, ModelInfo, Recalibration]:
    """Measure the factor for `model`'s default (or pinned) version on the history CSV `data` and write
    the next version."""
    import onnx

    from seqserve import forecasts
    from seqserve.export import repository as repo
    from seqserve.export.graph import set_metadata

    runtime = open_model(repository, model, version)
    _, stamps, values = forecasts.read_histories(data)
    histories = [
        (v.astype(np.float32), forecasts.start_unix_s(s)) for v, s in zip(values, stamps, strict=True)
    ]
    recalibration = measure(runtime, histories, window, level)
    source = contract.version_dir(repository, model, runtime.info.version)
    info = recalibrated_info(runtime.info, recalibration, repo.next_version(repository, model), data.name)
    graph = onnx.load(str(source / contract.MODEL_FILE))
    set_metadata(graph, info)
    path, written = repo.write_versions(repository, [repo.VersionFiles(graph, info)])[0]
    return path, written, recalibration


def recalibrate_command(
    repository: Path, model: str, data: Path, window: int | None, level: float, version: int
) -> None:
    from seqserve.console import fail, make_console
    from seqserve.service.engine.errors import ServiceError
    from seqserve.training.datasets import DataError

    try:
        path, info, result = recalibrate_version(repository, model, data, window, level, version)
    except (ServiceError, contract.ContractError, DataError, ValueError, OSError) as exc:
        fail(str(exc))
    source = info.forecast["recalibration"]["from_version"]
    make_console().print(
        f"{model} v{source}: {result.origins} forecasts of {result.horizon} steps from the last "
        f"{result.window} observations; its {100 * level:g} % intervals covered "
        f"{100 * result.coverage_before:.1f} %, times {result.factor:.3f} they cover "
        f"{100 * result.coverage_after:.1f} %\nwrote version {info.version} to {path}"
    )
