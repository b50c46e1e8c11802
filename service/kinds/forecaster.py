"""The forecaster kind: a row is raw observations (float32, one per step), its answer the distribution of
the next value at every step (`loc`, `scale`: named tensors, as a declared graph answers). A forecast rolls
the model forward from a state without changing it.

A forecast of H steps starts from the answer to the last observation (the next value's distribution, so a
stream keeps its latest answer and a checkpoint carries it) and feeds each step's mean back as the next
observation, H - 1 one-step rows through the model's batcher: every forecast in flight, on any stream or
unary request, is one row of the same onnxruntime call per step, as Generate's generations are. The
rollout works on its own copy of the state references, so the stream's next chunk continues as if no
forecast had been asked. Deterministic: no sampling; the quantiles are the Normal's, loc + scale *
Phi^-1(q), where step k's scale is the model's times m_k (`contract.scale_multipliers` of model.json's
`forecast` dict: the calibration measured after training on held-out data, all 1 for a model.json
without it). The answers to a stream's chunks are the model's own one-step loc and scale, uncalibrated.

A one-step graph looped by the server was chosen over a loop inside the graph: the batcher then shares
every forecast step across streams (a graph-side loop would run each forecast as its own call of H steps,
or wait for equal horizons), and a forecast reuses the stream's state, limits, metrics and drain
(bench/README.md, Forecasting, has the measurement).

Knows nothing of gRPC: the front doors translate requests to `ForecastAsk` and `History` and answers back.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from seqserve import contract
from seqserve.service.engine.caller import current_caller
from seqserve.service.engine.errors import Draining, InvalidChunk, LimitExceeded, OutOfOrder, WrongTask
from seqserve.service.engine.inference import InferenceEngine
from seqserve.service.engine.kind import KeptAnswer, States
from seqserve.service.engine.repository import ServedModel
from seqserve.service.engine.runtime import ModelRuntime
from seqserve.service.engine.state import StreamState
from seqserve.service.kinds.tensors import TensorAnswer, Tensors


@dataclass(frozen=True)
class ForecastAsk:
    horizon: int
    quantiles: tuple[float, ...] = ()


@dataclass(frozen=True)
class History:
    """One series' observations, oldest first, and the Unix time of the first (None: the calendar's
    origin phase)."""

    values: np.ndarray  # float32 [n]
    start_unix_s: float | None = None


@dataclass(frozen=True)
class ForecastAnswer:
    from_step: int  # observations the forecast follows
    mean: np.ndarray  # float32 [horizon]
    scale: np.ndarray  # float32 [horizon]
    quantiles: np.ndarray  # float32 [levels, horizon], in the order asked
    levels: tuple[float, ...]


class Forecaster(Tensors):
    """A stream's chunk is answered with `loc` and `scale` per step (the tensors kind's rendering); its
    latest answer is where a forecast starts, so a checkpoint keeps the last step's (loc, scale)."""

    name = "forecaster"
    keeps_answer = True
    kept_size = 2

    def kept_answer(self, answer: TensorAnswer) -> KeptAnswer:
        kept = np.array([_last(answer)], dtype=np.float32).reshape(2)
        return 0, kept, kept

    def restored_answer(self, kept: KeptAnswer, states: States) -> TensorAnswer:
        _, values, _ = kept
        return TensorAnswer({contract.OUTPUT_LOC: values[:1], contract.OUTPUT_SCALE: values[1:2]}, states)


def _last(answer: TensorAnswer) -> tuple[float, float]:
    """The next value's (loc, scale) after the row's last step."""
    return float(answer.tensors[contract.OUTPUT_LOC][-1]), float(answer.tensors[contract.OUTPUT_SCALE][-1])


def check_ask(info: contract.ModelInfo, ask: ForecastAsk, max_steps: int) -> None:
    """Raises what is wrong with a forecast request, and what was expected."""
    if info.task != contract.FORECAST:
        raise WrongTask(
            f"model {info.name}:{info.version} is a {info.task} model; a forecast needs a forecaster "
            "(task forecast)"
        )
    if ask.horizon < 1:
        raise InvalidChunk(f"horizon is {ask.horizon}; expected 1 to {max_steps} steps")
    if ask.horizon > max_steps:
        raise LimitExceeded(
            f"horizon is {ask.horizon} steps, the server's limit is {max_steps} (--max-forecast-steps)"
        )
    for index, level in enumerate(ask.quantiles):
        if not (math.isfinite(level) and 0 < level < 1):
            raise InvalidChunk(f"quantile {index} is {level}; expected a level strictly between 0 and 1")


def check_histories(
    info: contract.ModelInfo, histories: list[History], ask: ForecastAsk, max_steps: int
) -> None:
    """Raises what is wrong with a request to forecast whole histories."""
    check_ask(info, ask, max_steps)
    if not histories:
        raise InvalidChunk("no series; expected at least 1 history to forecast from")
    for index, history in enumerate(histories):
        _check_history(history, index)


def _check_history(history: History, index: int) -> None:
    values = history.values
    if values.size == 0:
        raise InvalidChunk(f"series {index} has no observations; expected at least 1")
    if not np.isfinite(values).all():
        where = int(np.argmax(~np.isfinite(values)))
        raise InvalidChunk(f"series {index} has {values[where]} at step {where}; expected finite values")
    if history.start_unix_s is not None and not math.isfinite(history.start_unix_s):
        raise InvalidChunk(f"series {index} starts at {history.start_unix_s}; expected a finite Unix time")


def check_start(model: ServedModel, start_unix_s: float) -> None:
    """Refuse a start time the model cannot take: a model without a calendar, or a time that is not one."""
    info = model.runtime.info
    if info.task != contract.FORECAST:
        raise InvalidChunk(
            f"start_unix_s given for model {model.key}, a {info.task} model; only a forecaster "
            "(task forecast) has a calendar"
        )
    if not math.isfinite(start_unix_s):
        raise InvalidChunk(f"start_unix_s is {start_unix_s}; expected a finite Unix time")


def start_at(stream: StreamState, start_unix_s: float) -> None:
    """Set a new stream's calendar phase from the Unix time of its first observation."""
    check_start(stream.model, start_unix_s)
    stream.states = clocked(stream.model.runtime, stream.states, start_unix_s)


def clocked(runtime: ModelRuntime, states: States, start_unix_s: float | None) -> States:
    """A state row with its calendar clock at the phase of `start_unix_s` (None: as it was); the time was
    checked finite where it came in (`check_start`, `check_histories`)."""
    if start_unix_s is None:
        return states
    names = list(runtime.state_names)
    if contract.INPUT_CLOCK not in names:
        return states
    clock = contract.calendar_clock(start_unix_s, runtime.info.forecast)
    index = names.index(contract.INPUT_CLOCK)
    changed = list(states)
    changed[index] = np.full_like(states[index], clock)
    return tuple(changed)


async def _roll_out(
    model: ServedModel, first: TensorAnswer, states: States, key: tuple, horizon: int, stream: object
) -> tuple[np.ndarray, np.ndarray]:
    """loc and the model's scale of the next `horizon` values (`answer_of` calibrates it): the first from the
    answer to the last observation, each later one from a one-step row whose observation is the previous
    mean."""
    loc = np.empty(horizon, dtype=np.float32)
    scale = np.empty(horizon, dtype=np.float32)
    loc[0], scale[0] = _last(first)
    for step in range(1, horizon):
        answer = await model.batcher.infer(loc[step - 1 : step], states, stream, key)
        states = answer.states
        loc[step], scale[step] = _last(answer)
        # A lone row's call runs inline and returns without suspending: yield, so other requests (and a
        # cancel) get their turn during a long horizon.
        await asyncio.sleep(0)
    model.metrics.forecast_steps.inc(horizon)
    return loc, scale


def answer_of(
    info: contract.ModelInfo, from_step: int, loc: np.ndarray, scale: np.ndarray, levels: tuple[float, ...]
) -> ForecastAnswer:
    """The forecast of a rollout's loc and the model's scale [horizon]: step k's scale times m_k, and the
    Normal's quantiles at `levels`."""
    scale = scale * np.asarray(contract.scale_multipliers(info.forecast, len(scale)), np.float32)
    z = np.array([NormalDist().inv_cdf(level) for level in levels], dtype=np.float32)
    quantiles = loc[np.newaxis] + z[:, np.newaxis] * scale[np.newaxis]
    return ForecastAnswer(from_step, loc, scale, quantiles.astype(np.float32), levels)


async def forecast_stream(engine: InferenceEngine, stream: StreamState, ask: ForecastAsk) -> ForecastAnswer:
    """The next `ask.horizon` values of an open stream, from its state as it stands, which stays as it was."""
    check_ask(stream.model.runtime.info, ask, engine.config.max_forecast_steps)
    if stream.last is None:
        raise OutOfOrder(f"stream {stream.id} has no observation yet; send a chunk before asking a forecast")
    loc, scale = await _roll_out(stream.model, stream.last, stream.states, stream.key, ask.horizon, stream)
    return answer_of(stream.model.runtime.info, stream.steps, loc, scale, ask.quantiles)


async def forecast_after(model: ServedModel, answer: TensorAnswer, ask: ForecastAsk) -> ForecastAnswer:
    """The next `ask.horizon` values after a row's answer (a sequence request's chunk), from its state."""
    key = model.runtime.declaration.constant_key({})
    loc, scale = await _roll_out(model, answer, answer.states, key, ask.horizon, None)
    return answer_of(model.runtime.info, 0, loc, scale, ask.quantiles)


async def forecast_histories(
    engine: InferenceEngine, model: ServedModel, histories: list[History], ask: ForecastAsk
) -> list[ForecastAnswer]:
    """Each history run from the model's initial state, then rolled forward: one stream of the state store
    each while it runs (so the stream limit, metrics and drain apply), all rows of the same calls."""
    check_histories(model.runtime.info, histories, ask, engine.config.max_forecast_steps)
    if engine.store.draining:
        raise Draining("server is shutting down and takes no new requests; retry on another replica")
    idle_timeout_s, caller = engine.idle_timeout_s(0), current_caller()
    key = model.runtime.declaration.constant_key({})

    async def one(history: History) -> ForecastAnswer:
        stream = engine.store.open(model, idle_timeout_s, caller)
        reason = "error"
        try:
            states = clocked(model.runtime, model.runtime.zero_state, history.start_unix_s)
            model.metrics.steps.inc(history.values.shape[0])
            first = await model.batcher.infer(history.values, states, stream, key)
            loc, scale = await _roll_out(model, first, first.states, key, ask.horizon, stream)
            reason = "completed"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            engine.store.close(stream, reason)
        return answer_of(model.runtime.info, history.values.shape[0], loc, scale, ask.quantiles)

    return list(await asyncio.gather(*(one(history) for history in histories)))
