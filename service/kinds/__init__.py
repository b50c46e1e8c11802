"""Model kinds: each module says what a row of its kind is, how a request becomes the graph's inputs and
how the graph's outputs become an answer; the engine (`service/engine/`) batches rows without knowing
which kind it runs (`service/engine/kind.py` is all it asks).

`kind_for` is what the server's wiring hands the repository: a loaded graph's kind, from its declaration's
rendering (seqserve's own classifiers, language models, forecasters and seq2seq decoders; named tensors
for any other graph).
"""

from __future__ import annotations

from seqserve.declaration import Declaration
from seqserve.service.engine.kind import ModelKind
from seqserve.service.kinds.classifier import Classifier
from seqserve.service.kinds.forecaster import Forecaster
from seqserve.service.kinds.language_model import LanguageModel
from seqserve.service.kinds.seq2seq import Seq2Seq
from seqserve.service.kinds.tensors import Tensors


def kind_for(declaration: Declaration) -> ModelKind:
    if declaration.rendering == "language_model":
        return LanguageModel.of(declaration)
    if declaration.rendering == "classifier":
        return Classifier.of(declaration)
    if declaration.rendering == "forecaster":
        return Forecaster(declaration)
    if declaration.rendering == "seq2seq":  # a seq2seq's decoder step (its encoder answers tensors)
        return Seq2Seq(declaration)
    return Tensors(declaration)
