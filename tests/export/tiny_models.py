"""Small random-init models with their ModelInfo, for graph and parity tests that need no training."""

from __future__ import annotations

import itertools

import torch

from seqserve import contract
from seqserve.contract import ModelInfo
from seqserve.training.language_model import CharLanguageModel, LanguageModelConfig
from seqserve.training.model import ModelConfig, SequenceClassifier

FEATURES, CLASSES, HIDDEN = 5, 3, 6
CASES = list(itertools.product(contract.CELLS, (1, 2), contract.TASKS))


def make_model(
    cell: str, layers: int, task: str, bidirectional: bool = False, layer_norm: bool = False, seed: int = 0
) -> tuple[SequenceClassifier, ModelInfo]:
    """A model with non-trivial standardisation, and the ModelInfo that describes it."""
    torch.manual_seed(seed)
    config = ModelConfig(
        cell=cell,
        features=FEATURES,
        classes=CLASSES,
        task=task,
        hidden=HIDDEN,
        layers=layers,
        bidirectional=bidirectional,
        layer_norm=layer_norm,
    )
    model = SequenceClassifier(config).eval()
    model.set_standardisation(torch.randn(FEATURES), torch.rand(FEATURES) + 0.5)
    info = ModelInfo(
        name=f"t-{cell}",
        version=1,
        task=task,
        cell=cell,
        layers=layers,
        hidden=HIDDEN,
        bidirectional=bidirectional,
        features=FEATURES,
        labels=["a", "b", "c"],
    )
    return model, info


VOCABULARY = list("\n abcdefghij.,:")


def make_language_model(
    cell: str, layers: int = 1, hidden: int = HIDDEN, seed: int = 0, layer_norm: bool = False
) -> tuple[CharLanguageModel, ModelInfo]:
    """A random-init character language model over VOCABULARY, and the ModelInfo that describes it."""
    torch.manual_seed(seed)
    config = LanguageModelConfig(
        cell=cell,
        vocabulary=len(VOCABULARY),
        embedding=4,
        hidden=hidden,
        layers=layers,
        layer_norm=layer_norm,
    )
    model = CharLanguageModel(config).eval()
    info = ModelInfo(
        name=f"lm-{cell}",
        version=1,
        task=contract.LANGUAGE_MODEL,
        cell=cell,
        layers=layers,
        hidden=hidden,
        bidirectional=False,
        features=1,
        labels=list(VOCABULARY),
        vocabulary=list(VOCABULARY),
    )
    return model, info
