"""A sequence-to-sequence model's two vocabularies: input strings to token ids, output ids to strings
(NumPy only; the trainer, the exporter's decoder and the server share it, so a word is tokenised one way).

Input token 0 pads; output token 0 starts a decode (and pads the decoder's teacher-forced input, whose
padded steps are never scored), output token 1 ends it. model.json carries both lists (`vocabulary` for
the input, `labels` for the output; seqserve/contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, START, END = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class Translation:
    source: str
    output: tuple[str, ...]
    score: float  # sum of log-probabilities, end token included
    finished: bool  # False: stopped at the step limit before the end token


class Tokens:
    """Strings <-> token ids for one model's input (characters) and output (symbols) vocabularies."""

    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        if not inputs or inputs[0] != PAD or outputs[:2] != [START, END]:
            raise ValueError(
                f"expected the input vocabulary to start with {PAD!r} and the output one with {START!r}, "
                f"{END!r}; got {inputs[:1]!r} and {outputs[:2]!r}"
            )
        self.inputs, self.outputs = list(inputs), list(outputs)
        self._input_id = {ch: i for i, ch in enumerate(self.inputs) if i > 0}
        self._output_id = {p: i for i, p in enumerate(self.outputs)}
        self.start, self.end = 0, 1

    def encode_input(self, text: str) -> list[int]:
        if not text:
            raise ValueError("an empty input has nothing to convert")
        ids = []
        for position, ch in enumerate(text):
            if ch not in self._input_id:
                raise ValueError(
                    f"character {ch!r} at position {position} of {text!r} is not in the input vocabulary "
                    f"{''.join(self.inputs[1:])!r}"
                )
            ids.append(self._input_id[ch])
        return ids

    def encode_output(self, symbols: tuple[str, ...]) -> list[int]:
        return [self._output_id[s] for s in symbols]

    def decode_output(self, ids: list[int] | tuple[int, ...] | np.ndarray) -> tuple[str, ...]:
        """Token ids to symbols, stopping at the end token."""
        out = []
        for token in ids:
            if int(token) == self.end:
                break
            out.append(self.outputs[int(token)])
        return tuple(out)

    def input_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 [B, T] token ids padded with 0, and int32 [B] lengths."""
        encoded = [self.encode_input(t) for t in texts]
        lengths = np.array([len(e) for e in encoded], dtype=np.int32)
        batch = np.zeros((len(texts), int(lengths.max())), dtype=np.int64)
        for row, ids in enumerate(encoded):
            batch[row, : len(ids)] = ids
        return batch, lengths
