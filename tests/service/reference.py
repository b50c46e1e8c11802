"""The offline reference streamed results must equal, and which data set each test model was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqserve.contract import INPUT_LENGTHS, INPUT_X, MODEL_FILE, read_model_info, state_inputs, version_dir

MODEL_DATA = {
    "jv-gru": "japanese_vowels",
    "jv-lstm": "japanese_vowels",
    "jv-bigru": "japanese_vowels",
    "bms-gru": "basic_motions_stream",
    "bms-lstm": "basic_motions_stream",
}


class Offline:
    """The reference: softmax scores of one onnxruntime call over each whole sequence."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._sessions: dict[str, tuple] = {}

    def scores(self, model: str, x: np.ndarray) -> np.ndarray:
        """[steps, classes] (many-to-many) or [1, classes] (many-to-one)."""
        if model not in self._sessions:
            path = version_dir(self.repository, model, 1)
            self._sessions[model] = (ort.InferenceSession(str(path / MODEL_FILE)), read_model_info(path))
        session, info = self._sessions[model]
        feeds = {INPUT_X: x[None], INPUT_LENGTHS: np.array([len(x)], dtype=np.int32)}
        for name in state_inputs(info.cell):
            feeds[name] = np.zeros(info.state_shape(1), dtype=np.float32)
        logits = session.run(None, feeds)[0][0]
        logits = logits if logits.ndim == 2 else logits[None]
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)
