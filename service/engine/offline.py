"""`seqserve predict`: a repository's model run in this process with onnxruntime, no server.

It loads the version the server would (`repository.py`'s rule: the highest unless one is pinned) through
the same `ModelRuntime`, so its answers are the server's answers; it needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
        logits, _ = runtime.run(x, states, lengths)
        for row, index in enumerate(rows):
            scores = logits[row, : lengths[row]] if logits.ndim == 3 else logits[row][None]
            probabilities = softmax(scores.astype(np.float64))
            target = None if targets is None else np.atleast_1d(targets[index])
            answers[index] = SequencePrediction(index, probabilities.argmax(axis=-1), probabilities, target)
    return [answer for answer in answers if answer is not None]
