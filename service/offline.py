"""`seqserve predict`: a repository's model run in this process with onnxruntime, no server, no batcher.

It loads the version the server would (`repository.py`'s rule: the highest unless one is pinned) through
the same `ModelRuntime`, so its answers are the server's answers; it needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.predictions import SequencePrediction, softmax
from seqserve.service.engine import layout
from seqserve.service.engine.errors import ModelNotFound, ServiceError, WrongTask
from seqserve.service.engine.runtime import ModelRuntime
from seqserve.service.kinds.forecaster import (
    ForecastAnswer,
    ForecastAsk,
    History,
    answer_of,
    check_histories,
    clocked,
)


def open_model(repository: Path, model: str, version: int = 0, device: str = "cpu") -> ModelRuntime:
    """The pinned version of `model`, or its default (highest) when `version` is 0."""
    versions = contract.list_versions(repository, model)
    if not versions:
        served = ", ".join(contract.list_models(repository)) or "none"
        raise ModelNotFound(f"model {model!r} is not in {repository}; it holds: {served}")
    if version and version not in versions:
        raise ModelNotFound(f"model {model} has no version {version}; it has {versions}")
    path = contract.version_dir(repository, model, version or versions[-1])
    info = contract.read_model_info(path)
    if info.task == contract.SEQ2SEQ:
        raise WrongTask(
            f"model {model} v{info.version} is a seq2seq model (an encoder and a decoder step); expected a "
            "model of one graph: a classifier, a language model, a forecaster or a declared graph"
        )
    return ModelRuntime(info, path / contract.MODEL_FILE, device, threads=1)


def _check_features(info: ModelInfo, sequences: list[np.ndarray]) -> None:
    for index, sequence in enumerate(sequences):
        if sequence.ndim != 2 or sequence.shape[1] != info.features:
            raise ValueError(
                f"sequence {index} has {sequence.shape[-1]} features, model {info.name} expects "
                f"{info.features}"
            )


def predict(
    runtime: ModelRuntime,
    sequences: list[np.ndarray],
    targets: list[np.ndarray] | None = None,
    batch: int = 64,
) -> list[SequencePrediction]:
    """Labels and probabilities per sequence (many-to-one) or per valid step (many-to-many), in input
    order; `targets` must already index the model's labels."""
    info = runtime.info
    _check_features(info, sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding per batch
    answers: list[SequencePrediction | None] = [None] * len(sequences)
    for first in range(0, len(order), batch):
        rows = order[first : first + batch]
        lengths = np.array([len(sequences[i]) for i in rows], dtype=np.int32)
        x = np.zeros((len(rows), int(lengths.max()), info.features), dtype=np.float32)
        for row, index in enumerate(rows):
            x[row, : lengths[row]] = sequences[index]
        states = tuple(np.repeat(zero[:, None, :], len(rows), axis=1) for zero in runtime.zero_state)
        outputs, _ = runtime.run((x,), states, lengths)
        logits = outputs[contract.OUTPUT_LOGITS]
        for row, index in enumerate(rows):
            scores = logits[row, : lengths[row]] if logits.ndim == 3 else logits[row][None]
            probabilities = softmax(scores.astype(np.float64))
            target = None if targets is None else np.atleast_1d(targets[index])
            answers[index] = SequencePrediction(index, probabilities.argmax(axis=-1), probabilities, target)
    return [answer for answer in answers if answer is not None]


def forecast(runtime: ModelRuntime, histories: list[History], ask: ForecastAsk) -> list[ForecastAnswer]:
    """A forecaster's rollout over every history at once, as the server computes it: the histories in one
    call from the initial state (each at its calendar phase), then one call per further step with each
    row's mean fed back; the scales calibrated by `answer_of`."""
    check_histories(runtime.info, histories, ask, max_steps=ask.horizon)
    axes = tuple(state.batch_axis for state in runtime.declaration.states)
    rows = [clocked(runtime, runtime.zero_state, history.start_unix_s) for history in histories]
    states = layout.stack_states(rows, axes)
    lengths = np.array([len(h.values) for h in histories], dtype=np.int32)
    y = np.zeros((len(histories), int(lengths.max())), dtype=np.float32)
    for row, history in enumerate(histories):
        y[row, : lengths[row]] = history.values
    outputs, states = runtime.run((y,), states, lengths)
    last = np.arange(len(histories)), lengths - 1
    loc, scale = roll_out(
        runtime, outputs[contract.OUTPUT_LOC][last], outputs[contract.OUTPUT_SCALE][last], states, ask.horizon
    )
    return [
        answer_of(runtime.info, int(lengths[row]), loc[row], scale[row], ask.quantiles)
        for row in range(len(histories))
    ]


def roll_out(
    runtime: ModelRuntime, first_loc: np.ndarray, first_scale: np.ndarray, states: tuple, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """loc and the model's (uncalibrated) scale [B, horizon]: step 0 is the answer to each row's last
    observation (`first_*` [B]), each later step one call of every row with its previous mean fed back
    from `states` (the rows' states after that observation)."""
    loc = np.empty((len(first_loc), horizon), dtype=np.float32)
    scale = np.empty_like(loc)
    loc[:, 0], scale[:, 0] = first_loc, first_scale
    one_step = np.ones(len(first_loc), dtype=np.int32)
    for step in range(1, horizon):
        outputs, states = runtime.run((np.ascontiguousarray(loc[:, step - 1 : step]),), states, one_step)
        loc[:, step], scale[:, step] = (
            outputs[contract.OUTPUT_LOC][:, 0],
            outputs[contract.OUTPUT_SCALE][:, 0],
        )
    return loc, scale


def _forecast_file(
    runtime: ModelRuntime,
    data: Path | None,
    horizon: int,
    quantiles: str,
    output: Path | None,
    plot: Path | None,
) -> str:
    from seqserve import forecasts

    if data is None:
        raise ValueError(f"model {runtime.info.name} is a forecaster: give its history CSV with --data")
    histories = forecasts.read_histories(data)
    names, stamps, values = histories
    ask = ForecastAsk(horizon, forecasts.parse_levels(quantiles))
    answers = forecast(
        runtime,
        [
            History(v.astype(np.float32), forecasts.start_unix_s(s))
            for v, s in zip(values, stamps, strict=True)
        ],
        ask,
    )
    return forecasts.finish(
        output, plot, histories, [(a.mean, dict(zip(a.levels, a.quantiles, strict=True))) for a in answers]
    )


def predict_command(
    repository: Path,
    model: str,
    version: int,
    dataset: str | None,
    data: Path | None,
    split: str,
    seed: int,
    output: Path | None,
    force: bool,
    horizon: int = 48,
    quantiles: str = "0.1,0.5,0.9",
    plot: Path | None = None,
) -> None:
    """Offline: the model in this process, predictions to a file (or JSON Lines on stdout)."""
    from seqserve.console import fail
    from seqserve.contract import ContractError
    from seqserve.predictions import in_model_order, write_predictions
    from seqserve.service.client.commands import checked_output
    from seqserve.service.client.load import load_split
    from seqserve.training.datasets import DataError

    output = checked_output(output, force)
    try:
        runtime = open_model(repository, model, version)
        if runtime.info.task == contract.FORECAST:
            typer.echo(_forecast_file(runtime, data, horizon, quantiles, output, plot), err=output is None)
            return
        data_labels, sequences, targets = load_split(dataset, data, split, seed)
        answers = predict(runtime, sequences, in_model_order(targets, data_labels, runtime.info.labels))
    except (ServiceError, ContractError, DataError, ValueError, OSError) as exc:
        fail(str(exc))
    info = runtime.info
    per_step = info.task == "many_to_many"
    count = write_predictions(output, answers, info.labels, per_step)
    correct = sum(int((a.labels == a.targets).sum()) for a in answers if a.targets is not None)
    total = sum(len(a.labels) for a in answers)
    unit = "steps" if per_step else "sequences"
    where = output if output is not None else "stdout"
    typer.echo(
        f"{info.name}:{info.version} ({info.precision}) predicted {len(answers)} sequences, {count} records "
        f"({unit}) -> {where}; accuracy against the data's labels {correct / total:.4f}",
        err=output is None,
    )
