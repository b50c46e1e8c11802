"""Offline decoding over a seq2seq version's two ONNX graphs with onnxruntime (no PyTorch).

`OnnxSeq2Seq` runs the encoder once per batch of inputs and the decoder step once per step for every live
row of every input and beam (seqserve/beam_search.py, the search the trainer uses too). It is the
reference a server's decode is tested against, and what an offline `seqserve predict` runs:

    decoder = OnnxSeq2Seq.from_version(Path("model_repository/g2p-gru/1"))
    decoder.translate(["phoneme"])                                   # greedy
    decoder.translate(words, SearchOptions(beam=4, nbest=2, max_steps=40, length_penalty=0.6))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqserve import contract
from seqserve.beam_search import RowsOf, SearchOptions, State, StepFunction, translate
from seqserve.contract import ModelInfo
from seqserve.vocabularies import Tokens, Translation


def _session(model: bytes | Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxSeq2Seq:
    """The encoder and decoder-step sessions of one seq2seq version, and its vocabularies."""

    def __init__(
        self, encoder: bytes | Path, decoder: bytes | Path, info: ModelInfo, threads: int = 1
    ) -> None:
        if info.task != contract.SEQ2SEQ:
            raise contract.ContractError(f"{info.name}: task {info.task!r}, expected {contract.SEQ2SEQ!r}")
        self.info = info
        self.encoder = _session(encoder, threads)
        self.decoder = _session(decoder, threads)
        self.tokens = Tokens(info.vocabulary, info.labels)
        self.state_inputs = contract.state_inputs(info.cell)
        self.state_outputs = contract.state_outputs(info.cell)

    @classmethod
    def from_version(cls, version_path: Path, threads: int = 1) -> OnnxSeq2Seq:
        version_path = Path(version_path)
        info = contract.read_model_info(version_path)
        return cls(version_path / contract.ENCODER_FILE, version_path / contract.DECODER_FILE, info, threads)

    def encode(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, State]:
        """tokens int64 [B, T], lengths int32 [B] -> memory [B, T, M] and the first state(s) [1, B, H]."""
        feeds = {
            contract.INPUT_TOKENS: tokens.astype(np.int64),
            contract.INPUT_LENGTHS: lengths.astype(np.int32),
        }
        memory, *state = self.encoder.run([contract.OUTPUT_MEMORY, *self.state_outputs], feeds)
        return memory, tuple(state)

    def step(
        self, previous: np.ndarray, state: State, memory: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, State, np.ndarray]:
        """One decoder call: previous [R], state(s) [1, R, H], memory [R, T, M], lengths [R] ->
        log-probabilities [R, V], new state(s), attention [R, T]."""
        feeds = {
            contract.INPUT_PREVIOUS: previous.astype(np.int64),
            contract.INPUT_MEMORY: memory,
            contract.INPUT_LENGTHS: lengths.astype(np.int32),
            **dict(zip(self.state_inputs, state, strict=True)),
        }
        names = [contract.OUTPUT_LOG_PROBS, *self.state_outputs, contract.OUTPUT_ATTENTION]
        log_probs, *rest = self.decoder.run(names, feeds)
        return log_probs, tuple(rest[:-1]), rest[-1]

    def step_function(self, memory: np.ndarray, lengths: np.ndarray) -> StepFunction:
        """The decoder step over live rows, each reading its own input's memory: one call per step."""
        rows_of = RowsOf(lambda owner: (memory[owner], lengths[owner]))

        def step(previous: np.ndarray, state: State, owner: np.ndarray) -> tuple[np.ndarray, State]:
            row_memory, row_lengths = rows_of(owner)
            log_probs, new, _ = self.step(previous, state, row_memory, row_lengths)
            return log_probs, new

        return step

    def _encoder(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[StepFunction, State]:
        memory, state = self.encode(tokens, lengths)
        return self.step_function(memory, lengths), state

    def translate(
        self, texts: list[str], options: SearchOptions | None = None, batch_size: int = 64
    ) -> list[list[Translation]]:
        """Each text's n-best outputs, best first: greedy when `options` is None, else beam search. A
        character outside the input vocabulary raises ValueError naming it and its position."""
        return translate(self._encoder, self.tokens, texts, options, batch_size)
