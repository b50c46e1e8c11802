"""Model kinds: each module says what a row of its kind is, how a request becomes the graph's inputs and
how the graph's outputs become an answer; the engine (`service/engine/`) batches rows without knowing
which kind it runs (`service/engine/kind.py` is all it asks).

`kind_for` is what the server's wiring hands the repository: a loaded model's kind, from its model.json.
"""

from __future__ import annotations

from seqserve.contract import ModelInfo
from seqserve.service.engine.kind import ModelKind
from seqserve.service.kinds.classifier import Classifier
from seqserve.service.kinds.language_model import LanguageModel


def kind_for(info: ModelInfo) -> ModelKind:
    if info.is_language_model:
        return LanguageModel()
    return Classifier(answers_every_step=info.task == "many_to_many")
