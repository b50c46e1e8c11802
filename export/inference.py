"""Run an exported model in-process with onnxruntime: the export job's parity, accuracy and latency use it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from seqserve import contract
from seqserve.contract import ModelInfo

State = tuple[np.ndarray, ...]  # (h,) or (h, c), each [layers * directions, batch, hidden]


def pad_batch(sequences: list[np.ndarray], pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Stack [T_i, F] float32 sequences (or [T_i] int64 token ids) into x [B, max T, F] (or [B, max T])
    filled with `pad_value`, and lengths int32 [B]."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    first = sequences[0]
    dtype = np.int64 if first.ndim == 1 else np.float32
    x = np.full((len(sequences), int(lengths.max()), *first.shape[1:]), pad_value, dtype=dtype)
    for row, sequence in enumerate(sequences):
        x[row, : len(sequence)] = sequence
    return x, lengths


class OnnxClassifier:
    """One onnxruntime CPU session over a serialized model, fed and read by the contract's tensor names."""

    def __init__(self, model: bytes, info: ModelInfo, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.info = info
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def initial_state(self, batch: int) -> State:
        zeros = np.zeros(self.info.state_shape(batch), dtype=np.float32)
        return tuple(zeros for _ in contract.state_inputs(self.info.cell))

    def run(self, x: np.ndarray, lengths: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        """logits and the state at each row's last valid step; `state` defaults to zeros."""
        state = state if state is not None else self.initial_state(x.shape[0])
        feeds = {contract.sequence_input(self.info.task): x, contract.INPUT_LENGTHS: lengths}
        feeds.update(zip(contract.state_inputs(self.info.cell), state, strict=True))
        logits, *new_state = self.session.run(list(contract.output_names(self.info.cell)), feeds)
        return logits, tuple(new_state)
