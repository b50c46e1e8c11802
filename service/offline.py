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
from seqserve.service.engine.errors import ModelNotFound
from seqserve.service.engine.runtime import ModelRuntime


def open_model(repository: Path, model: str, version: int = 0, device: str = "cpu") -> ModelRuntime:
    """The pinned version of `model`, or its default (highest) when `version` is 0."""
    versions = contract.list_versions(repository, model)
    if not versions:
        served = ", ".join(contract.list_models(repository)) or "none"
        raise ModelNotFound(f"model {model!r} is not in {repository}; it holds: {served}")
    if version and version not in versions:
        raise ModelNotFound(f"model {model} has no version {version}; it has {versions}")
    path = contract.version_dir(repository, model, version or versions[-1])
    return ModelRuntime(contract.read_model_info(path), path / contract.MODEL_FILE, device, threads=1)


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
        data_labels, sequences, targets = load_split(dataset, data, split, seed)
        answers = predict(runtime, sequences, in_model_order(targets, data_labels, runtime.info.labels))
    except (ModelNotFound, ContractError, DataError, ValueError, OSError) as exc:
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
